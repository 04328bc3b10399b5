"""A throwaway workspace for the train/evaluate/tune tests: params.yaml + data/clean, small and fast."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from pathlib import Path

import yaml

from tests.clean_events import human_events, write_clean

ROOT = Path(__file__).resolve().parents[1]
FIRST_DAY = dt.date(2026, 11, 1)


def make_params(path: Path, run_date: dt.date, **sections) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["run"]["date"] = run_date.isoformat()
    params["train"].update(factors=8, iterations=4, regularization=0.05, alpha=10.0,
                           confidence="log")
    params["eval"].update(min_test_users=20, min_lift=0.05)
    for name, values in sections.items():
        params.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def make_workspace(root: Path, days: int = 14, run_date: dt.date | None = None, **sections
                   ) -> Path:
    """Clean events from FIRST_DAY for `days` days; run.date defaults to the day after them."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_clean(root, _events(days))
    make_params(root / "params.yaml", run_date or FIRST_DAY + dt.timedelta(days=days), **sections)
    return root


@functools.lru_cache(maxsize=4)
def _events(days: int):
    return human_events(FIRST_DAY, days, users=300, items=120, events_per_day=2000)


def set_run_date(root: Path, day: dt.date) -> None:
    path = Path(root) / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["run"]["date"] = day.isoformat()
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def digests(directory: Path) -> dict[str, str]:
    """SHA-256 of each file in a folder (models/): byte-identical folders have equal digests."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir())}
