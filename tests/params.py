"""The shipped params.yaml as a plain dict, with changes, for tests that build settings in memory."""

from __future__ import annotations

import copy
import datetime as dt
from functools import lru_cache
from pathlib import Path

import yaml

from dailyrec.core import settings

ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def _shipped() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def project_params(run_date: dt.date | str | None = None, **changes) -> dict:
    """params.yaml with run.date set and changes as {"history.days": 3, ...} (dotted keys)."""
    result = copy.deepcopy(_shipped())
    if run_date is not None:
        result["run"]["date"] = str(run_date)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = result
        for key in parents:
            node = node[key]
        node[leaf] = value
    return result


def of(raw: dict) -> settings.Params:
    return settings.of(raw)


def read(path: Path | str = "params.yaml") -> dict:
    """A params file as a plain dict (to change and write back)."""
    return yaml.safe_load(Path(path).read_text())


def write(path: Path | str, raw: dict) -> None:
    Path(path).write_text(yaml.safe_dump(raw, sort_keys=False))
