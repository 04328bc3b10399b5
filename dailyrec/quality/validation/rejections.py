"""The rejection ledger: which history days are kept out of training, and who let them back in.

    data/rejections.json    {"days": {"YYYY-MM-DD": {"status": "rejected" | "admitted", ...}}}

When validate finds a failing expectation on the day's delta, the event day it covers (run.date - 1)
is written here as rejected. filter_noise (and validate's window suite) leave rejected days out of
the training window, so a bad day never reaches a model, today or on any later run. A person who has
looked at the report re-admits it:

    python -m stages.validate admit 2026-11-20 --by alice --note "feed outage, data complete"

Why a git-tracked file and not an ordinary DVC output: DVC records a stage's outputs in dvc.lock
only when the stage succeeds, and deletes ordinary outputs before the next run. A rejection is
written precisely when validate fails, so the ledger is declared `persist: true` (DVC never deletes
it) and `cache: false` (a small text file committed to git beside dvc.lock, like the metrics). The
failing run leaves it in the workspace; the next successful run records it in dvc.lock; the commit
that follows keeps the decision, with its history, for good.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from dailyrec.core import paths
from dailyrec.core.errors import ConfigError
from dailyrec.core.files import write_json

LEDGER_FILE = paths.REJECTIONS
STATUSES = ("rejected", "admitted")


def load(path: Path | str = LEDGER_FILE) -> dict[str, Any]:
    """The ledger, or an empty one when the file does not exist yet."""
    path = Path(path)
    if not path.exists():
        return {"days": {}}
    try:
        ledger = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); fix it by hand or restore it from "
                            "git") from None
    days = ledger.get("days") if isinstance(ledger, dict) else None
    if not isinstance(days, dict):
        raise ConfigError(f"{path}: expected an object with a 'days' mapping")
    for day, entry in days.items():
        _parse_day(day, f"{path}: key")
        if not isinstance(entry, dict) or entry.get("status") not in STATUSES:
            raise ConfigError(f"{path}: day {day} needs a status, one of {STATUSES}")
    return ledger


def save(ledger: dict[str, Any], path: Path | str = LEDGER_FILE) -> None:
    ledger["days"] = dict(sorted(ledger["days"].items()))
    write_json(path, ledger)


def rejected_days(ledger: dict[str, Any]) -> set[dt.date]:
    """Days to leave out of training: rejected and not (yet) admitted."""
    return {dt.date.fromisoformat(d) for d, e in ledger["days"].items()
            if e["status"] == "rejected"}


def is_admitted(ledger: dict[str, Any], day: dt.date) -> bool:
    entry = ledger["days"].get(day.isoformat())
    return bool(entry) and entry["status"] == "admitted"


def record_rejection(ledger: dict[str, Any], day: dt.date, run_date: dt.date,
                     failures: list[str], report: str) -> None:
    """validate found failing expectations on the delta of `day`."""
    entry = ledger["days"].setdefault(day.isoformat(), {"history": []})
    manual = entry.get("status") == "rejected" and entry.get("origin") == "manual"
    entry.update(status="rejected", origin="manual" if manual else "validate",
                 run_date=run_date.isoformat(), failures=failures, report=report)
    entry["history"].append({"action": "rejected", "by": "validate", "at": _now(),
                             "run_date": run_date.isoformat()})


def clear_validation_rejection(ledger: dict[str, Any], day: dt.date, run_date: dt.date) -> bool:
    """The same run date was validated again and now passes (say, the source was fixed and
    `dvc repro` re-run): lift a rejection validate itself made. A person's rejection stays."""
    entry = ledger["days"].get(day.isoformat())
    if not entry or entry["status"] != "rejected" or entry.get("origin") != "validate" \
            or entry.get("run_date") != run_date.isoformat():
        return False
    del ledger["days"][day.isoformat()]
    return True


def admit(ledger: dict[str, Any], day: dt.date, by: str, note: str) -> None:
    entry = ledger["days"].get(day.isoformat())
    if not entry or entry["status"] != "rejected":
        known = sorted(d for d, e in ledger["days"].items() if e["status"] == "rejected")
        raise ConfigError(f"day {day} is not rejected (rejected days: {known or 'none'})")
    entry.update(status="admitted", admitted_by=by, note=note)
    entry.setdefault("history", []).append({"action": "admitted", "by": by, "at": _now(),
                                            "note": note})


def reject(ledger: dict[str, Any], day: dt.date, by: str, note: str) -> None:
    """A person keeps a day out of training (say, a bot storm found after the fact)."""
    entry = ledger["days"].setdefault(day.isoformat(), {"history": []})
    entry.update(status="rejected", origin="manual", rejected_by=by, note=note)
    entry["history"].append({"action": "rejected", "by": by, "at": _now(), "note": note})


def _parse_day(text: str, where: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(text))
    except ValueError:
        raise ConfigError(f"{where} {text!r} is not a day (YYYY-MM-DD)") from None


def parse_day(text: str) -> dt.date:
    return _parse_day(text, "day")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
