"""Jinja2 templates (dailyrec/templates/): the HTML and text of the reports, from the same data.

    render.render("validation.html.j2", **context) -> str

HTML templates autoescape; text templates (.txt.j2) do not. Filters: fmt (numbers with thousands
separators, None as "none"), count ("n/a" for None), signed (+0.0123), pct (+12.3%).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES_DIR = Path(__file__).parent.parent / "templates"


def fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def count(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "n/a"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{int(number):,}" if math.isfinite(number) else "n/a"


def signed(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                            default_for_string=False, default=False),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined)
    env.filters.update(fmt=fmt, count=count, signed=signed, number=number, repr=repr)
    return env


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)
