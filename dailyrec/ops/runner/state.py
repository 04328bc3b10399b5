"""What the runner remembers between nights: its own state file ($DAILYREC_STATE_DIR/daily.json:
the last day that ran to its end, the commits whose data the DVC remote has not received yet)
and what DVC recorded in dvc.lock; and from these, the days a run must make up (catch-up)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import yaml

from dailyrec.core import env, paths
from dailyrec.core.files import parse_yaml, write_json


def _state_file() -> Path:
    return env.state_dir() / "daily.json"


def load_state() -> dict:
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def save_state(**changes) -> None:
    write_json(_state_file(), {**load_state(), **changes})


def lock_entry(stage: str) -> dict | None:
    """The stage's entry in dvc.lock (what DVC recorded for its last successful run)."""
    try:
        lock = parse_yaml(paths.DVC_LOCK.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return (lock.get("stages") or {}).get(stage)


def recorded_outputs(stage: str) -> set[str]:
    """The outputs of a stage that dvc.lock records a hash for (what a checkout can restore)."""
    entry = lock_entry(stage) or {}
    return {o.get("path") for o in entry.get("outs") or [] if o.get("md5") or o.get("hash")}


def recorded_hash(stage: str, path: str) -> str | None:
    """The hash dvc.lock records for one output of a stage."""
    for out in (lock_entry(stage) or {}).get("outs") or []:
        if out.get("path") == path:
            return out.get("md5") or out.get("hash")
    return None


def last_completed() -> dt.date | None:
    """The last run.date that ran to its end (published, kept back by the gate, or rejected by
    validate): from the runner's state, or else the run.date evaluate last completed for, in
    dvc.lock."""
    raw = load_state().get("last_completed")
    if raw is None:
        entry = lock_entry("evaluate") or {}
        raw = ((entry.get("params") or {}).get("params.yaml") or {}).get("run.date")
    try:
        return dt.date.fromisoformat(str(raw)) if raw else None
    except ValueError:
        return None


def catch_up(day: dt.date) -> list[dt.date]:
    """The days a run for `day` must run: every day since the last one that ran to its end, then
    `day` (a failed or missed night is made up by the next one, so no day's events are lost)."""
    last = last_completed()
    if last is None or last >= day - dt.timedelta(days=1):
        return [day]
    missed = [last + dt.timedelta(days=k) for k in range(1, (day - last).days + 1)]
    print(f"daily: catching up {len(missed) - 1} missed or failed day(s) since {last}: "
          f"{missed[0]}..{missed[-1]}", flush=True)
    return missed
