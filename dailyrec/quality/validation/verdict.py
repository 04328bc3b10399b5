"""validate's verdict on a run: the day's delta and quarantine read, the suites of
dailyrec.quality.validation.expectations run (answered from counts where they can be, Great
Expectations otherwise), the rejection ledger updated, and the payload of metrics/validation.json.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dailyrec.core import privacy
from dailyrec.core.errors import ConfigError, DataError
from dailyrec.ingest.history import day_rows, partition_path, select_window
from dailyrec.quality.validation import rejections as R
from dailyrec.quality.validation import window_facts as F
from dailyrec.quality.settings import ValidateSettings

from dailyrec.quality.validation.expectations import (Outcome, answered, delta_suites,
                                                      run_suites, shorten, window_from_facts,
                                                      window_suites)


def read_delta(path: Path) -> pd.DataFrame:
    """The delta as written, NOT conformed: the suite checks its columns and types itself."""
    if not path.exists():
        raise ConfigError(f"{path} not found: run fetch_delta first")
    try:
        return pq.read_table(path).to_pandas().reset_index(drop=True)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read the delta ({shorten(str(err))})") from None


def read_quarantine_reasons(path: Path) -> pd.Series:
    if not path.exists():
        raise ConfigError(f"{path} not found: run fetch_delta first")
    try:
        return pq.read_table(path, columns=["reason"]).column("reason").to_pandas()
    except (pa.ArrowException, OSError, KeyError) as err:
        raise DataError(f"{path}: cannot read the quarantine ({shorten(str(err))})") from None


def trailing_volumes(cfg: ValidateSettings, history: Path, excluded: set[dt.date]) -> list[int]:
    """Row counts of the trusted days before the delta's day (Parquet metadata only)."""
    chosen = select_window(history, cfg.day, cfg.checks["volume"]["trailing_days"], excluded)
    # A rejected day is left out whole: what other runs wrote into it is not a day's volume.
    # So is a day no run fetched as its own (only late arrivals: the day before the history
    # began): a sliver, not a day.
    fetched = {d for d in chosen.days if partition_path(history, d).exists()}
    return [n for d, n in day_rows(chosen.files).items() if d not in excluded and d in fetched]


def read_window(files: list[Path]) -> pd.DataFrame:
    """The key columns of the trusted window's files (what training uses), canonical types."""
    tables = [F.read_key_columns(path) for path in files]  # files, not rows
    return (pa.concat_tables(tables) if tables else F.KEY_SCHEMA.empty_table()).to_pandas()


@dataclass
class Verdict:
    status: str  # passed, warned, admitted, failed
    outcomes: list[Outcome]
    rejected_now: bool = False
    cleared: bool = False
    window_failed: bool = False
    excluded_days: list[str] = field(default_factory=list)
    window_days: list[str] = field(default_factory=list)
    delta_events: int = 0
    window_events: int = 0
    seconds: float = 0.0
    window_checked_by: str = ""  # how the window suite ran (printed; not in the metrics)
    window_skipped: str = ""  # why the window suite did not run (printed)
    delta_checked_by: str = ""  # how the delta suites ran (printed; not in the metrics)


def validate(cfg: ValidateSettings, delta_path: Path, quarantine_path: Path, history: Path,
             ledger_path: Path, report_name: str, facts_dir: Path | None = None) -> Verdict:
    """Run the suites, update the ledger, and return the verdict (the caller writes the outputs).
    report_name: where the run's HTML report goes, for the ledger's entry of a rejected day.
    facts_dir: where per-file facts of the window are kept (None: Great Expectations reads the
    whole window)."""
    started = time.perf_counter()
    ledger = R.load(ledger_path)
    delta = read_delta(delta_path)
    reasons = read_quarantine_reasons(quarantine_path)
    trailing = trailing_volumes(cfg, history, R.rejected_days(ledger))
    suites = delta_suites(cfg, delta, reasons, trailing)
    outcomes = answered(suites, cfg)
    delta_checked_by = "counts (Great Expectations' rules)"
    if outcomes is None:
        outcomes = run_suites(suites, cfg)
        delta_checked_by = "Great Expectations"

    delta_failed = [o for o in outcomes if o.failed]
    rejected_now = cleared = False
    if delta_failed and not R.is_admitted(ledger, cfg.day):
        R.record_rejection(ledger, cfg.day, cfg.run_date, [o.line() for o in delta_failed],
                           report_name)
        rejected_now = True
    elif not delta_failed:
        cleared = R.clear_validation_rejection(ledger, cfg.day, cfg.run_date)
    # Saved first: the rejection must outlive whatever happens next (quality/rejections.py).
    R.save(ledger, ledger_path)

    excluded = R.rejected_days(ledger)
    first = cfg.run_date - dt.timedelta(days=cfg.window_days)
    chosen = select_window(history, cfg.run_date, cfg.window_days, excluded)
    trusted = chosen.days
    window_events, checked_by = 0, ""
    # A first day that is rejected leaves no trusted day in the window: "window.events: observed
    # 0" would be the same failure told twice, and read as a second, independent one.
    skipped = "it holds no trusted day besides the rejected one" \
        if rejected_now and not chosen.files else ""
    if not skipped and cfg.checks["window"]["enabled"]:
        window_outcomes = None
        if facts_dir is not None:
            window_outcomes, window_events, facts = window_from_facts(cfg, chosen.files, first,
                                                                      facts_dir)
            checked_by = (f"per-file facts ({facts['files']} files: {facts['computed']} read, "
                          f"{facts['reused']} reused)")
        if window_outcomes is None:
            window = read_window(chosen.files)
            window_events = len(window)
            window_outcomes = run_suites(window_suites(cfg, window, first), cfg)
            checked_by = ("Great Expectations on the whole window"
                          + (f", after {checked_by}" if checked_by else ""))
            del window
        outcomes += window_outcomes
    window_failed = any(o.failed for o in outcomes if o.suite.startswith("window"))

    if rejected_now or window_failed:
        status = "failed"
    elif delta_failed:
        status = "admitted"
    elif any(o.warned for o in outcomes):
        status = "warned"
    else:
        status = "passed"
    verdict = Verdict(status=status, outcomes=outcomes, rejected_now=rejected_now, cleared=cleared,
                      window_failed=window_failed,
                      excluded_days=sorted(d.isoformat() for d in excluded),
                      window_days=[d.isoformat() for d in trusted], delta_events=len(delta),
                      window_events=window_events, window_checked_by=checked_by,
                      window_skipped=skipped,
                      delta_checked_by=delta_checked_by)
    verdict.seconds = round(time.perf_counter() - started, 3)
    return verdict


def payload(cfg: ValidateSettings, v: Verdict) -> dict:
    """metrics/validation.json (its shape: dailyrec.core.metrics.VALIDATION). No durations: filter_noise
    depends on this file. Committed to git: example rows name people by salted hashes only."""
    return {
        "run_date": cfg.run_date.isoformat(),
        "day": cfg.day.isoformat(),
        "status": v.status,
        "passed": v.status != "failed",
        "failed": sum(o.failed for o in v.outcomes),
        "warned": sum(o.warned for o in v.outcomes),
        "day_rejected": v.rejected_now,
        "rejected_days": v.excluded_days,
        "delta_events": v.delta_events,
        "window_days": len(v.window_days),
        "window_events": v.window_events,
        "expectations": {o.name: {
            "success": o.success, "severity": o.severity, "observed": o.observed,
            "expected": o.expected,
            **({"unexpected_count": o.unexpected_count, "unexpected_percent": o.unexpected_percent}
               if o.unexpected_count is not None else {}),
            **({"note": o.note} if o.note else {}),
            **({"examples": privacy.pseudonymise(o.examples)} if o.examples else {}),
        } for o in v.outcomes},
    }
