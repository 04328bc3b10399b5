"""params.yaml: the settings that shape results, read through one accessor.

Every default lives in params.yaml and nowhere else: a key that is missing is an error naming it,
never a silent value from code. Each section has one checker (the modules of this package), built
on the typed readers of `Params`, which name the key in every error:

    params = settings.load()                    # params.yaml, or $DAILYREC_PARAMS
    day = settings.run_date(params)             # run.date
    train = settings.model.train(params)        # the train section, checked, as a dataclass

`Params` remembers every key it was asked for. With DAILYREC_PARAMS_TRACE set, each process
appends those keys to that file when it exits: tests/test_dvc_yaml.py runs the real stages that way
and checks each stage's `params:` in dvc.yaml against what it read.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

from dailyrec.core import env
from dailyrec.core.errors import ConfigError
from dailyrec.core.files import parse_yaml

__all__ = ["ConfigError", "Params", "load", "run_date", "day_window", "set_run_date"]

_MISSING = object()
_TRACE: set[str] = set()
_TRACE_REGISTERED = False


def _write_trace() -> None:
    path = os.environ.get(env.PARAMS_TRACE_FILE)
    if not path or not _TRACE:
        return
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    record = {"module": spec.name if spec else os.path.basename(sys.argv[0]),
              "argv": sys.argv[1:], "keys": sorted(_TRACE)}
    with open(path, "a") as fh:  # one short line per process: O_APPEND keeps lines whole
        fh.write(json.dumps(record) + "\n")


class Params:
    """A parsed params.yaml. Read values through get() or the typed readers, never the raw dict."""

    def __init__(self, raw: dict[str, Any], source: str = "params.yaml", traced: bool = True):
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of sections at the top level")
        self._raw = raw
        self.source = source
        self.traced = traced  # False: settings kept elsewhere (a model's meta.json), not params
        global _TRACE_REGISTERED
        if not _TRACE_REGISTERED and os.environ.get(env.PARAMS_TRACE_FILE):
            atexit.register(_write_trace)
            _TRACE_REGISTERED = True

    # --- reading ------------------------------------------------------------------------------

    def _node(self, key: str) -> Any:
        node: Any = self._raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def has(self, key: str) -> bool:
        return self._node(key) is not _MISSING

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value at a dotted key. Without a default, a missing key is an error naming it."""
        if self.traced:
            _TRACE.add(key)
        value = self._node(key)
        if value is _MISSING:
            if default is _MISSING:
                raise ConfigError(f"{self.source}: {key} is missing (every setting has its "
                                  "default in params.yaml)")
            return default
        return value

    def keys(self, key: str) -> list[str]:
        """The keys under a mapping (to refuse unknown ones); reading them records nothing."""
        value = self._node(key)
        if value is _MISSING:
            raise ConfigError(f"{self.source}: section '{key}' is missing")
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: {key} must be a mapping, got {value!r}")
        return [str(k) for k in value]

    def known(self, key: str, allowed: Iterable[str]) -> None:
        """Refuse keys under `key` that are not in allowed (a typo must not be ignored)."""
        allowed = list(allowed)
        unknown = sorted(set(self.keys(key)) - set(allowed))
        if unknown:
            raise ConfigError(f"{self.source}: {key}: unknown keys {unknown} (known: "
                              f"{sorted(allowed)})")

    # --- typed readers: each names the key in its error ---------------------------------------

    def fail(self, key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.source}: {key} must be {expected}, got {value!r}")

    def integer(self, key: str, low: int | None = None, high: int | None = None,
                default: Any = _MISSING) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or \
                (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(key, _range("an integer", low, high), value)
        return value

    def number(self, key: str, low: float | None = None, strict: bool = False,
               high: float | None = None, default: Any = _MISSING) -> float:
        value = self.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value)
        if ok and low is not None:
            ok = value > low if strict else value >= low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            bound = "a number" if low is None else f"a number {'>' if strict else '>='} {low:g}"
            raise self.fail(key, bound + (f" and <= {high:g}" if high is not None else ""), value)
        return float(value)

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def choice(self, key: str, options: Iterable[Any], default: Any = _MISSING) -> Any:
        options = list(options)
        value = self.get(key, default)
        if value not in options:
            raise self.fail(key, f"one of {options}", value)
        return value

    def text(self, key: str, pattern: str | None = None, what: str = "a name",
             default: Any = _MISSING) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or (pattern and not re.fullmatch(pattern, value)):
            raise self.fail(key, what, value)
        return value

    def mapping(self, key: str, default: Any = _MISSING) -> dict:
        value = self.get(key, default)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "a mapping", value)
        return value

    def items(self, key: str, default: Any = _MISSING) -> list:
        value = self.get(key, default)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, "a list", value)
        return value

    def day(self, key: str) -> dt.date:
        value = self.get(key)
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            raise self.fail(key, "a day, YYYY-MM-DD", value) from None


def _range(what: str, low: Any, high: Any) -> str:
    if low is not None and high is not None:
        return f"{what} in {low}..{high}"
    if low is not None:
        return f"{what} >= {low}"
    if high is not None:
        return f"{what} <= {high}"
    return what


def load(path: Path | str | None = None) -> Params:
    """params.yaml (or $DAILYREC_PARAMS) as Params."""
    path = Path(path or env.params_file())
    if not path.exists():
        raise ConfigError(f"{path}: parameters file not found (run from the project root)")
    try:
        with path.open() as fh:
            raw = parse_yaml(fh) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return Params(raw, source=str(path))


def of(raw: dict[str, Any], source: str = "params", traced: bool = True) -> Params:
    """Params from a dict already in memory (tools and tests; traced=False for settings kept
    elsewhere, such as a model's meta.json, which are no params.yaml reads)."""
    return Params(raw, source=source, traced=traced)


# How far ahead of today (UTC) run.date may be: tomorrow, for a scheduler whose clock or time
# zone runs a little ahead. Anything later has no data yet and would age the whole history out.
FUTURE_DAYS_ALLOWED = 1


def run_date(params: Params) -> dt.date:
    """run.date: the day the scheduler runs for; the data window is the 24 hours before it.
    A day after tomorrow (UTC) is refused: merge_history would drop every history day older than
    it less history.days."""
    day = params.day("run.date")
    check_not_future(day, "run.date")
    return day


def check_not_future(day: dt.date, what: str) -> None:
    latest = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=FUTURE_DAYS_ALLOWED)
    if day > latest:
        raise ConfigError(f"{what} {day.isoformat()} is in the future (the latest allowed is "
                          f"{latest.isoformat()}, tomorrow in UTC): its events have not happened, "
                          "and running it would age the history out. Nothing was changed.")


def day_window(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC of the 24 hours before `day`."""
    end = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    return end - dt.timedelta(days=1), end


def window_end(params: Params) -> dt.datetime:
    """The end of the data window (run.date 00:00 UTC): recency is measured from here."""
    return day_window(run_date(params))[1]


def set_run_date(day: dt.date, path: Path | str | None = None) -> None:
    """Set run.date in params.yaml, changing that one line and nothing else (comments, layout and
    every other byte stay), so the scheduler's daily commit shows a one-line diff."""
    from dailyrec.core.files import write_text

    path = Path(path or env.params_file())
    text = path.read_text()
    # The `date:` key indented under the top-level `run:` section (comment lines may sit between).
    pattern = re.compile(r"^(run:[ \t]*(?:#.*)?\n(?:(?:[ \t]+#.*|[ \t]*)\n|[ \t]+\S.*\n)*?"
                         r"[ \t]+date:[ \t]*)(\S+?)([ \t]*(?:#.*)?)$", re.M)
    new, count = pattern.subn(lambda m: f"{m.group(1)}'{day.isoformat()}'{m.group(3)}", text,
                              count=1)
    if count != 1:
        raise ConfigError(f"{path}: no run.date line to set (expected `run:` with `date:` under it)")
    write_text(path, new)
