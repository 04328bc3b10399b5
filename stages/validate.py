"""validate: Great Expectations suites on the day's delta and on the training window.

    python -m stages.validate                      the DVC stage (reads params.yaml)
    python -m stages.validate admit DAY --by NAME --note TEXT    re-admit a rejected day
    python -m stages.validate reject DAY --by NAME --note TEXT   keep a day out of training by hand
    python -m stages.validate status               list rejected and admitted days

Outputs
    metrics/validation.json            every expectation: pass/fail, severity, observed, expected
    reports/validation/DATE.html       the run's report (self-contained, no CDN); index.html: latest
    data/rejections.json               the rejection ledger (see stages/rejections.py)

Suites (written in code below, thresholds and severities from params.yaml `validate:`):
    delta        the delta's rows: canonical columns and types, no NULL keys, event types in the
                 vocabulary, timestamps inside the fetch window, id formats, event_id unique,
                 freshness (newest event close to run.date)
    delta_day    the delta's events of the day window: volume within a band of the trailing mean
    fetch        every fetched row, kept or quarantined: quarantined share below a threshold
    window       the training window (filter.window_days days, rejected days left out): no NULL
                 keys, event types, timestamps inside the window, event_id unique, not empty
    window_ids   the window's distinct user and item ids: id format

A failing expectation of severity `fail` on the delta rejects the day (run.date - 1) in the ledger
and the stage exits 1 with a short summary, so `dvc repro` stops here: nothing downstream runs and
yesterday's published lists stay served. A failing `fail` expectation on the window also exits 1
(the history itself is damaged; no day is rejected automatically). `warn` failures are only
reported.

Great Expectations takes seconds to import, so it is imported inside run_suites() only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import html
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages import params as P
from stages import rejections as R
from stages import schema as S
from stages.fetch_delta import EVENTS_FILE, QUARANTINE_FILE
from stages.merge_history import HISTORY_DIR, partition_days, partition_files, partition_rows

METRICS_FILE = Path("metrics/validation.json")
REPORT_DIR = Path("reports/validation")
SEVERITIES = ("warn", "fail")

# params.yaml validate.<check>: the keys each check accepts, with their defaults.
CHECKS: dict[str, dict[str, Any]] = {
    "columns": {"severity": "fail"},
    "types": {"severity": "fail"},
    "not_null": {"severity": "fail"},
    "event_types": {"severity": "fail"},
    "id_format": {"severity": "fail"},
    "event_id_unique": {"severity": "fail"},
    "ts_in_window": {"severity": "fail", "max_late_days": 3},
    "freshness": {"severity": "fail", "max_age_minutes": 120},
    "volume": {"severity": "fail", "trailing_days": 7, "min_history_days": 3, "low": 0.5,
               "high": 2.0, "min_events": 1},
    "quarantine_share": {"severity": "fail", "max": 0.05},
    "window": {"severity": "fail", "enabled": True, "min_events": 1},
}
TOP_LEVEL = {"examples": 5, "report_days": 90}
# GX's pandas type names: dtype.type of a pandas 3 string column is `str`, of a tz-aware timestamp
# column `Timestamp` (a tz-naive one is datetime64 and fails, as it should).
GX_TYPES = {pa.string(): "str", pa.timestamp("us", tz="UTC"): "Timestamp"}
EXAMPLE_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "ts", "source"]


@dataclass(frozen=True)
class Settings:
    run_date: dt.date
    checks: dict[str, dict[str, Any]]
    examples: int
    report_days: int
    window_days: int
    skew: dt.timedelta

    @property
    def day(self) -> dt.date:
        """The event day the delta covers: its rejection key."""
        return self.run_date - dt.timedelta(days=1)

    def severity(self, check: str) -> str:
        return self.checks[check]["severity"]


def settings(params: dict) -> Settings:
    raw = params.get("validate") or {}
    if not isinstance(raw, dict):
        raise P.ConfigError("params.yaml: section 'validate' must be a mapping")
    unknown = set(raw) - set(CHECKS) - set(TOP_LEVEL)
    if unknown:
        raise P.ConfigError(f"params.yaml validate: unknown keys {sorted(unknown)} (known: "
                            f"{sorted([*CHECKS, *TOP_LEVEL])})")
    checks = {}
    for name, defaults in CHECKS.items():
        given = raw.get(name) or {}
        where = f"params.yaml validate.{name}"
        if not isinstance(given, dict):
            raise P.ConfigError(f"{where}: expected a mapping like {defaults}")
        bad = set(given) - set(defaults)
        if bad:
            raise P.ConfigError(f"{where}: unknown keys {sorted(bad)} (known: {sorted(defaults)})")
        merged = {**defaults, **given}
        if merged["severity"] not in SEVERITIES:
            raise P.ConfigError(f"{where}.severity: {merged['severity']!r} is not one of "
                                f"{SEVERITIES}")
        for key, value in merged.items():
            default = defaults[key]
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, (int, float)):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            else:
                ok = True
            if not ok:
                raise P.ConfigError(f"{where}.{key}: expected a {type(default).__name__} >= 0, "
                                    f"got {value!r}")
        checks[name] = merged
    if checks["volume"]["low"] > checks["volume"]["high"]:
        raise P.ConfigError("params.yaml validate.volume: low must not exceed high")
    for key, default in TOP_LEVEL.items():
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise P.ConfigError(f"params.yaml validate.{key}: expected a whole number >= 0, got "
                                f"{value!r}")
    window_days = (params.get("filter") or {}).get("window_days", 60)
    if not isinstance(window_days, int) or window_days < 1:
        raise P.ConfigError(f"params.yaml filter.window_days: expected a whole number >= 1, got "
                            f"{window_days!r}")
    skew = float((params.get("fetch") or {}).get("max_clock_skew_minutes", 10))
    return Settings(run_date=P.run_date(params), checks=checks,
                    examples=int(raw.get("examples", TOP_LEVEL["examples"])),
                    report_days=int(raw.get("report_days", TOP_LEVEL["report_days"])),
                    window_days=window_days, skew=dt.timedelta(minutes=skew))


# ---------------------------------------------------------------------------------------------
# The suites. Each planned expectation has a stable name (the key in metrics/validation.json),
# the params check that sets its severity, and the threshold in words for the summary.

@dataclass
class Planned:
    name: str
    check: str
    build: Callable[[Any], Any]  # gxe module -> expectation (GX is imported lazily)
    expected: str
    skipped: str = ""  # why the check does not apply today (it then passes, and says so)
    # Exact counts of the most common unexpected values, when GX's (a sample's) are not enough.
    top_values: Callable[[], list[dict]] | None = None


@dataclass
class Suite:
    name: str
    frame: pd.DataFrame
    planned: list[Planned]


@dataclass
class Outcome:
    suite: str
    name: str
    check: str
    severity: str
    success: bool
    observed: Any
    expected: str
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[dict] = field(default_factory=list)
    top_values: list[dict] = field(default_factory=list)
    note: str = ""

    @property
    def failed(self) -> bool:
        return not self.success and self.severity == "fail"

    @property
    def warned(self) -> bool:
        return not self.success and self.severity == "warn"

    def line(self) -> str:
        mark = "ok" if self.success else ("FAIL" if self.severity == "fail" else "warn")
        return f"[{mark}] {self.name}: observed {_fmt(self.observed)}; expected {self.expected}"


def delta_suites(cfg: Settings, delta: pd.DataFrame, quarantine_reasons: pd.Series,
                 trailing: list[int]) -> list[Suite]:
    start, end = P.day_window(cfg.run_date)
    c = cfg.checks
    plan: list[Planned] = [
        Planned("delta.columns", "columns",
                lambda x: x.ExpectTableColumnsToMatchSet(column_set=list(S.COLUMNS),
                                                         exact_match=True),
                f"exactly {list(S.COLUMNS)}"),
    ]
    for f in S.EVENT_SCHEMA:
        plan.append(Planned(f"delta.types.{f.name}", "types",
                            lambda x, n=f.name, t=GX_TYPES[f.type]:
                            x.ExpectColumnValuesToBeOfType(column=n, type_=t),
                            f"{f.type} (pandas type {GX_TYPES[f.type]})"))
    for col in S.REQUIRED:
        plan.append(Planned(f"delta.not_null.{col}", "not_null",
                            lambda x, n=col: x.ExpectColumnValuesToNotBeNull(column=n), "no NULLs"))
    plan.append(Planned("delta.event_types", "event_types",
                        lambda x: x.ExpectColumnValuesToBeInSet(column="event_type",
                                                                value_set=list(S.EVENT_TYPES)),
                        f"one of {list(S.EVENT_TYPES)}"))
    oldest = start - dt.timedelta(days=c["ts_in_window"]["max_late_days"])
    newest = end + cfg.skew
    plan.append(Planned("delta.ts_in_window", "ts_in_window",
                        lambda x: x.ExpectColumnValuesToBeBetween(column="ts", min_value=oldest,
                                                                  max_value=newest),
                        f"{_iso(oldest)} .. {_iso(newest)} (late writes up to "
                        f"{c['ts_in_window']['max_late_days']} days, clock skew "
                        f"{cfg.skew.total_seconds() / 60:g} min)"))
    for col in ("event_id", "user_id", "item_id"):
        plan.append(Planned(f"delta.id_format.{col}", "id_format",
                            lambda x, n=col: x.ExpectColumnValuesToMatchRegex(
                                column=n, regex=S.ID_REGEX.pattern),
                            f"matches {S.ID_REGEX.pattern}"))
    plan.append(Planned("delta.event_id_unique", "event_id_unique",
                        lambda x: x.ExpectColumnValuesToBeUnique(column="event_id"), "unique"))
    fresh_from = end - dt.timedelta(minutes=c["freshness"]["max_age_minutes"])
    plan.append(Planned("delta.freshness", "freshness",
                        lambda x: x.ExpectColumnMaxToBeBetween(column="ts", min_value=fresh_from),
                        f"newest event >= {_iso(fresh_from)} ({c['freshness']['max_age_minutes']} "
                        f"min before run.date)"))

    v = c["volume"]
    # The day's volume counts events of the day window only: the delta also holds late events of
    # earlier days (and re-read lookback days), which the history partitions count elsewhere.
    if "ts" in delta and isinstance(delta["ts"].dtype, pd.DatetimeTZDtype):
        in_day = delta.loc[(delta["ts"] >= start) & (delta["ts"] < end), ["ts"]]
    else:  # no usable ts: the type expectations say so; count every row
        in_day = pd.DataFrame({"row": np.arange(len(delta))})
    lo, hi, skipped = v["min_events"], None, ""
    if len(trailing) >= v["min_history_days"] and trailing:
        mean = float(np.mean(trailing))
        lo = max(v["min_events"], math.floor(mean * v["low"]))
        hi = math.ceil(mean * v["high"])
        expected = (f"{lo:,} .. {hi:,} events ({v['low']:g}x .. {v['high']:g}x the trailing "
                    f"{len(trailing)}-day mean {mean:,.0f})")
    else:
        expected = f">= {lo:,} events"
        skipped = (f"band not applied: {len(trailing)} trailing trusted day(s) in history, "
                   f"{v['min_history_days']} needed")
    day_plan = [Planned("delta_day.volume", "volume",
                        lambda x: x.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi),
                        expected, skipped)]

    share = c["quarantine_share"]["max"]
    fetch_plan = [Planned("fetch.quarantine_share", "quarantine_share",
                          lambda x: x.ExpectColumnValuesToBeInSet(column="quarantine_reason",
                                                                  value_set=[""],
                                                                  mostly=max(0.0, 1.0 - share)),
                          f"<= {share:.2%} of fetched rows quarantined",
                          top_values=lambda: [{"value": r, "count": int(n)} for r, n in
                                              quarantine_reasons.value_counts().items()])]
    fetched = pd.DataFrame({"quarantine_reason": pd.concat(
        [pd.Series("", index=range(len(delta)), dtype="str"), quarantine_reasons.astype("str")],
        ignore_index=True)})
    return [Suite("delta", delta, plan),
            Suite("delta_day", in_day.reset_index(drop=True), day_plan),
            Suite("fetch", fetched, fetch_plan)]


def window_suites(cfg: Settings, window: pd.DataFrame, first: dt.date) -> list[Suite]:
    lo = dt.datetime.combine(first, dt.time(), tzinfo=dt.timezone.utc)
    hi = dt.datetime.combine(cfg.run_date, dt.time(), tzinfo=dt.timezone.utc)
    plan = [Planned(f"window.not_null.{col}", "not_null",
                    lambda x, n=col: x.ExpectColumnValuesToNotBeNull(column=n), "no NULLs")
            for col in window.columns]
    min_events = cfg.checks["window"]["min_events"]
    plan += [
        Planned("window.event_types", "event_types",
                lambda x: x.ExpectColumnValuesToBeInSet(column="event_type",
                                                        value_set=list(S.EVENT_TYPES)),
                f"one of {list(S.EVENT_TYPES)}"),
        Planned("window.ts_in_window", "ts_in_window",
                lambda x: x.ExpectColumnValuesToBeBetween(column="ts", min_value=lo, max_value=hi,
                                                          strict_max=True),
                f"{_iso(lo)} .. {_iso(hi)} (excluded)"),
        Planned("window.event_id_unique", "event_id_unique",
                lambda x: x.ExpectColumnValuesToBeUnique(column="event_id"), "unique"),
        Planned("window.events", "window",
                lambda x: x.ExpectTableRowCountToBeBetween(min_value=min_events),
                f">= {min_events:,} events in the training window"),
    ]
    # Ids repeat a lot: their format is checked once per distinct id.
    ids = pd.DataFrame({"id": pd.concat([pd.Series(window["user_id"].unique()),
                                         pd.Series(window["item_id"].unique())],
                                        ignore_index=True).astype("str")})
    id_plan = [Planned("window_ids.id_format", "id_format",
                       lambda x: x.ExpectColumnValuesToMatchRegex(column="id",
                                                                  regex=S.ID_REGEX.pattern),
                       f"every distinct user_id and item_id matches {S.ID_REGEX.pattern}")]
    return [Suite("window", window, plan), Suite("window_ids", ids, id_plan)]


def run_suites(suites: list[Suite], cfg: Settings) -> list[Outcome]:
    """Run each suite with Great Expectations on its frame; one Outcome per planned expectation."""
    import great_expectations as gx  # slow import: this stage only
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import (DataContextConfig,
                                                            InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False)))
    asset = ctx.data_sources.add_or_update_pandas("dailyrec").add_dataframe_asset("events")
    batch = asset.add_batch_definition_whole_dataframe("whole")
    outcomes: list[Outcome] = []
    for suite in suites:
        expectations = []
        for p in suite.planned:
            exp = p.build(gxe)
            exp.meta = {"name": p.name}
            expectations.append(exp)
        gx_suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=suite.name,
                                                                expectations=expectations))
        definition = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=gx_suite))
        # GX 1.24 with pandas 3 misreads `str` columns as NULL unless the index is a RangeIndex.
        frame = suite.frame.reset_index(drop=True)
        with warnings.catch_warnings():
            # GX 1.24 uses pandas APIs that pandas 3 deprecates; not ours to fix, not worth a line.
            warnings.simplefilter("ignore", pd.errors.Pandas4Warning)
            result = definition.run(batch_parameters={"dataframe": frame}, result_format={
                "result_format": "SUMMARY", "partial_unexpected_count": max(cfg.examples, 1)})
        by_name = {r.expectation_config.meta["name"]: r for r in result.results}
        outcomes += [_outcome(suite, p, by_name[p.name], cfg) for p in suite.planned]
    return outcomes


def _outcome(suite: Suite, p: Planned, r, cfg: Settings) -> Outcome:
    res = dict(r.result or {})
    out = Outcome(suite=suite.name, name=p.name, check=p.check, severity=cfg.severity(p.check),
                  success=bool(r.success), observed=None, expected=p.expected, note=p.skipped)
    if r.exception_info and not res:
        info = r.exception_info if isinstance(r.exception_info, dict) else {}
        # Keyed by metric for a failed metric, or flat: the first message either way.
        errors = [v.get("exception_message") for v in info.values() if isinstance(v, dict)]
        message = next((e for e in errors if e), None) or info.get("exception_message", "")
        out.success, out.observed = False, f"could not evaluate: {_short(message)}"
        return out
    if "observed_value" in res:
        observed = _plain(res["observed_value"])
        out.observed = ", ".join(map(str, observed)) if isinstance(observed, list) else observed
        return out
    count, total = res.get("unexpected_count"), res.get("element_count")
    out.unexpected_count = int(count or 0)
    out.unexpected_percent = float(res["unexpected_percent"]) if \
        res.get("unexpected_percent") is not None else 0.0
    out.observed = f"{out.unexpected_count:,} of {int(total or 0):,} rows unexpected " \
                   f"({out.unexpected_percent:.3g}%)"
    if not out.success:
        idx = [i for i in res.get("partial_unexpected_index_list") or [] if isinstance(i, int)]
        cols = [c for c in EXAMPLE_COLUMNS if c in suite.frame.columns] or list(suite.frame.columns)
        rows = suite.frame.reset_index(drop=True).iloc[idx[:cfg.examples]][cols]
        out.examples = [{k: _plain(v) for k, v in row.items()} for row in rows.to_dict("records")]
        out.top_values = p.top_values()[:cfg.examples] if p.top_values else []
    return out


# ---------------------------------------------------------------------------------------------
# Reading the inputs.

def read_delta(path: Path = EVENTS_FILE) -> pd.DataFrame:
    """The delta as written, NOT conformed: the suite checks its columns and types itself."""
    if not path.exists():
        raise P.ConfigError(f"{path} not found: run fetch_delta first")
    try:
        return pq.read_table(path).to_pandas().reset_index(drop=True)
    except (pa.ArrowException, OSError) as err:
        raise P.ConfigError(f"{path}: cannot read the delta ({_short(str(err))})") from None


def read_quarantine_reasons(path: Path = QUARANTINE_FILE) -> pd.Series:
    if not path.exists():
        raise P.ConfigError(f"{path} not found: run fetch_delta first")
    try:
        return pq.read_table(path, columns=["reason"]).column("reason").to_pandas()
    except (pa.ArrowException, OSError, KeyError) as err:
        raise P.ConfigError(f"{path}: cannot read the quarantine ({_short(str(err))})") from None


def trailing_volumes(cfg: Settings, history: Path, excluded: set[dt.date]) -> list[int]:
    """Row counts of the trusted days before the delta's day (Parquet metadata only)."""
    n = cfg.checks["volume"]["trailing_days"]
    first = cfg.day - dt.timedelta(days=n)
    days = [d for d in partition_days(history) if first <= d < cfg.day and d not in excluded]
    return [partition_rows(history, d) for d in days]


def read_window(history: Path, days: list[dt.date]) -> pd.DataFrame:
    """The key columns of the trusted window days (what training uses), canonical types."""
    cols = ["event_id", "user_id", "item_id", "event_type", "ts"]
    schema = pa.schema([S.EVENT_SCHEMA.field(c) for c in cols])
    tables = []
    for path in (p for d in days for p in partition_files(history, d)):  # files, not rows
        try:
            tables.append(pq.read_table(path, columns=cols).cast(schema))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError, ValueError) as err:
            raise P.ConfigError(f"{path}: not canonical events ({_short(str(err))}); the history "
                                "partition is damaged") from None
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table.to_pandas()


# ---------------------------------------------------------------------------------------------
# The stage.

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


def validate(params: dict, delta_path: Path = EVENTS_FILE, quarantine_path: Path = QUARANTINE_FILE,
             history: Path = HISTORY_DIR, ledger_path: Path = R.LEDGER_FILE) -> Verdict:
    """Run the suites, update the ledger, and return the verdict (the caller writes the outputs)."""
    started = time.perf_counter()
    cfg = settings(params)
    ledger = R.load(ledger_path)
    delta = read_delta(delta_path)
    reasons = read_quarantine_reasons(quarantine_path)
    trailing = trailing_volumes(cfg, history, R.rejected_days(ledger))
    outcomes = run_suites(delta_suites(cfg, delta, reasons, trailing), cfg)

    delta_failed = [o for o in outcomes if o.failed]
    report_name = str(REPORT_DIR / f"{cfg.run_date.isoformat()}.html")
    rejected_now = cleared = False
    if delta_failed and not R.is_admitted(ledger, cfg.day):
        R.record_rejection(ledger, cfg.day, cfg.run_date, [o.line() for o in delta_failed],
                           report_name)
        rejected_now = True
    elif not delta_failed:
        cleared = R.clear_validation_rejection(ledger, cfg.day, cfg.run_date)
    # Saved first: the rejection must outlive whatever happens next (see stages/rejections.py).
    R.save(ledger, ledger_path)

    excluded = R.rejected_days(ledger)
    first = cfg.run_date - dt.timedelta(days=cfg.window_days)
    present = [d for d in partition_days(history) if first <= d < cfg.run_date]
    trusted = [d for d in present if d not in excluded]
    window_events = 0
    if cfg.checks["window"]["enabled"]:
        window = read_window(history, trusted)
        window_events = len(window)
        window_outcomes = run_suites(window_suites(cfg, window, first), cfg)
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
                      window_events=window_events)
    verdict.seconds = round(time.perf_counter() - started, 3)
    return verdict


def metrics(cfg: Settings, v: Verdict) -> dict:
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
        "seconds": v.seconds,
        "expectations": {o.name: {
            "success": o.success, "severity": o.severity, "observed": o.observed,
            "expected": o.expected,
            **({"unexpected_count": o.unexpected_count, "unexpected_percent": o.unexpected_percent}
               if o.unexpected_count is not None else {}),
            **({"note": o.note} if o.note else {}),
            **({"examples": o.examples} if o.examples else {}),
        } for o in v.outcomes},
    }


def summary(cfg: Settings, v: Verdict, report: Path) -> str:
    """The short, human summary printed at the end (stderr when the stage fails)."""
    head = {
        "passed": f"validate {cfg.run_date}: passed ({len(v.outcomes)} expectations)",
        "warned": f"validate {cfg.run_date}: passed with warnings",
        "admitted": f"validate {cfg.run_date}: day {cfg.day} fails validation but was admitted "
                    "by a person; going on",
        "failed": f"validate {cfg.run_date}: FAILED",
    }[v.status]
    lines = [head]
    if v.rejected_now:
        lines.append(f"  day {cfg.day} is REJECTED: it stays out of training (today and on later "
                     f"runs) until someone admits it")
    if v.window_failed and v.window_events == 0:
        lines.append("  the training window holds no trusted event (no history day in it, or "
                     "every one rejected)")
    elif v.window_failed:
        lines.append("  the training window itself fails: the history is damaged (no day was "
                     "rejected automatically; reject the bad day by hand or repair it)")
    if v.cleared:
        lines.append(f"  day {cfg.day} passes now: its earlier rejection by validate is lifted")
    for o in v.outcomes:
        if o.success:
            continue
        lines.append("  " + o.line())
        for row in o.examples[:3]:
            lines.append("      e.g. " + ", ".join(f"{k}={_fmt(val)}" for k, val in row.items()))
        if o.top_values and not o.examples:
            lines.append("      most common: " + ", ".join(f"{t['value']!r} x{t['count']}"
                                                           for t in o.top_values[:3]))
    lines.append(f"  report: {report}")
    if v.rejected_now:
        lines.append(f"  after a look: python -m stages.validate admit {cfg.day} --by NAME "
                     f"--note \"why it is fine\"  (then dvc repro)")
    if v.excluded_days:
        lines.append(f"  left out of the training window: {', '.join(v.excluded_days)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The HTML report: one self-contained page per run, inline CSS, no scripts, no CDN.

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2em;
color:#1d2430;max-width:1200px}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin-top:1.8em}
.badge{display:inline-block;padding:.15em .6em;border-radius:.3em;color:#fff;font-weight:600}
.passed{background:#2e7d32}.warned{background:#b26a00}.admitted{background:#6a4fb3}
.failed{background:#c62828}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em}
th,td{border:1px solid #d5dae1;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f1f3f6}tr.fail td{background:#fdecea}tr.warn td{background:#fff4e0}
td.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.muted{color:#5b6573}
"""


def render_html(cfg: Settings, v: Verdict, others: list[str]) -> str:
    e = html.escape
    rows = []
    for o in sorted(v.outcomes, key=lambda o: o.success):  # failures first, else in suite order
        cls = "" if o.success else ("fail" if o.severity == "fail" else "warn")
        result = "pass" if o.success else ("FAIL" if o.severity == "fail" else "warn")
        note = f"<br><span class=muted>{e(o.note)}</span>" if o.note else ""
        rows.append(f"<tr class='{cls}'><td class=mono>{e(o.name)}</td><td>{e(o.severity)}</td>"
                    f"<td>{result}</td><td>{e(_fmt(o.observed))}</td><td>{e(o.expected)}{note}</td>"
                    "</tr>")
    details = []
    for o in v.outcomes:
        if o.success or not (o.examples or o.top_values):
            continue
        details.append(f"<h3 class=mono>{e(o.name)}</h3>")
        if o.examples:
            cols = list(o.examples[0])
            details.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>" +
                           "".join("<tr>" + "".join(f"<td class=mono>{e(_fmt(r.get(c)))}</td>"
                                                    for c in cols) + "</tr>" for r in o.examples) +
                           "</table>")
        if o.top_values:
            details.append("<p>Most common unexpected values: " + ", ".join(
                f"<code>{e(_fmt(t['value']))}</code> &times;{t['count']:,}" for t in o.top_values)
                + "</p>")
    actions = ""
    if v.rejected_now:
        actions = (f"<p><b>Day {cfg.day} is rejected</b>: it is left out of every training window "
                   f"until a person admits it. After a look at the failures below:</p><pre><code>"
                   f"python -m stages.validate admit {cfg.day} --by NAME --note \"why it is fine\""
                   f"\ndvc repro</code></pre>")
    links = " &middot; ".join(f"<a href='{e(n)}.html'>{e(n)}</a>" for n in others) or "none"
    left_out = e(", ".join(v.excluded_days)) or "none"
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>validation {cfg.run_date}</title>
<style>{CSS}</style></head><body>
<h1>Data validation, run.date {cfg.run_date} <span class='badge {v.status}'>{v.status}</span></h1>
<p class=muted>Delta: {v.delta_events:,} events (day {cfg.day}). Training window:
{len(v.window_days)} trusted days, {v.window_events:,} events. Left out (rejected): {left_out}.
Took {v.seconds:.1f} s.</p>
{actions}
<h2>Expectations</h2>
<table><tr><th>expectation</th><th>severity</th><th>result</th><th>observed</th><th>expected</th>
</tr>{''.join(rows)}</table>
{'<h2>Examples</h2>' + ''.join(details) if details else ''}
<h2>Other runs</h2><p>{links}</p>
</body></html>
"""


def write_report(cfg: Settings, v: Verdict, report_dir: Path) -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    oldest = (cfg.run_date - dt.timedelta(days=cfg.report_days)).isoformat()
    for old in report_dir.glob("????-??-??.html"):
        if old.stem < oldest:
            old.unlink()
    others = sorted({p.stem for p in report_dir.glob("????-??-??.html")} |
                    {cfg.run_date.isoformat()}, reverse=True)
    page = render_html(cfg, v, others)
    path = report_dir / f"{cfg.run_date.isoformat()}.html"
    for target in (path, report_dir / "index.html"):
        tmp = target.with_suffix(".html.tmp")
        tmp.write_text(page)
        tmp.replace(target)
    return path


def _run(args) -> int:
    params = P.load(args.params)
    verdict = validate(params)
    cfg = settings(params)
    P.write_json(METRICS_FILE, metrics(cfg, verdict))
    report = write_report(cfg, verdict, REPORT_DIR)
    text = summary(cfg, verdict, report)
    if verdict.status == "failed":
        print(text, file=sys.stderr)
        return 1
    print(text)
    return 0


def _ledger_command(args) -> int:
    ledger = R.load(args.ledger)
    if args.command == "status":
        days = ledger["days"]
        if not days:
            print("no rejected or admitted days")
        for day, entry in days.items():
            who = entry.get("admitted_by") or entry.get("rejected_by") or entry.get("origin", "")
            print(f"{day}  {entry['status']:<8}  {who}  {entry.get('note', '')}")
            for failure in entry.get("failures", [])[:5]:
                print(f"            {failure}")
        return 0
    day = R.parse_day(args.day)
    if not args.note.strip():
        raise P.ConfigError("--note must say why (it is kept in the ledger)")
    if args.command == "admit":
        R.admit(ledger, day, args.by, args.note)
    else:
        R.reject(ledger, day, args.by, args.note)
    R.save(ledger, args.ledger)
    done = {"admit": "admitted", "reject": "rejected"}[args.command]
    print(f"{day} {done} by {args.by} in {args.ledger}; run `dvc repro` to rebuild the training "
          "window (and commit the ledger with dvc.lock)")
    return 0


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description="Validate the delta and the training window; manage "
                                             "rejected days.")
    ap.add_argument("--params", default=str(P.PARAMS_FILE))
    sub = ap.add_subparsers(dest="command")
    for name, text in (("admit", "re-admit a rejected day after a person has looked at it"),
                       ("reject", "keep a day out of training by hand")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("day", help="the event day, YYYY-MM-DD (run.date - 1 of the failed run)")
        cmd.add_argument("--by", default=getpass.getuser(), help="who decided (default: $USER)")
        cmd.add_argument("--note", required=True, help="why; kept in the ledger")
        cmd.add_argument("--ledger", default=str(R.LEDGER_FILE), type=Path)
    status = sub.add_parser("status", help="list rejected and admitted days")
    status.add_argument("--ledger", default=str(R.LEDGER_FILE), type=Path)
    args = ap.parse_args(argv)
    if args.command:
        return _ledger_command(args)
    return _run(args)


def main(argv: list[str] | None = None) -> int:
    return P.run_stage("validate", _main, argv)


# ---------------------------------------------------------------------------------------------

def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any) -> Any:
    """JSON-friendly scalars: timestamps as ISO text, NaN/NaT as None, numpy numbers as Python."""
    if value is None:
        return None
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        return None if pd.isna(value) else pd.Timestamp(value).isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str) and value == "NaT":
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool, dict)):
        return value
    return None if pd.isna(value) else str(value)


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _short(text: str | None, limit: int = 200) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
