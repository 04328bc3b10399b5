"""The validation suites: Great Expectations on the day's delta and on the training window. How a
run's verdict is reached from them, and written: dailyrec.quality.validation.verdict.

Suites (written in code below, thresholds and severities from params.yaml `validate:`):
    delta        the delta's rows: canonical columns and types, no NULL keys, event types in the
                 vocabulary, timestamps inside the fetch window, id formats, event_id unique,
                 freshness (newest event close to run.date)
    delta_day    the delta's events of the day window: volume within a band of the trailing median
    fetch        every fetched row, kept or quarantined: quarantined share below a threshold
    window       the training window (filter.window_days days, rejected days left out): no NULL
                 keys, event types, timestamps inside the window, event_id unique, not empty
    window_ids   the window's distinct user and item ids: id format
The window suites are answered from each history file's facts, read once and kept by content
(dailyrec.quality.validation.window_facts: the same outcomes, a day's work instead of the window's); Great
Expectations runs them on the whole window when that answer fails, or without a facts folder.
The delta suites are answered the same way in the daily case (a canonical delta that passes):
each planned expectation also says how to count its answer with GX's own rules (`counted`), and
GX runs them only when a count fails or the delta is not canonical, for its verdict and example
rows. Tests compare both answers field by field.

A failing expectation of severity `fail` on the delta rejects the day (run.date - 1) in the ledger,
and the verdict is "failed": nothing downstream runs and yesterday's published lists stay served.
A failing `fail` expectation on the window also fails (the history itself is damaged; no day is
rejected automatically). `warn` failures are only reported.

Great Expectations takes seconds to import, so it is imported inside run_suites() only.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from dailyrec.core import schema as S
from dailyrec.quality.validation import window_facts as F
from dailyrec.core.settings import day_window
from dailyrec.quality.settings import ValidateSettings

# GX's pandas type names: dtype.type of a pandas 3 string column is `str`, of a tz-aware timestamp
# column `Timestamp` (a tz-naive one is datetime64 and fails, as it should).
GX_TYPES = {pa.string(): "str", pa.timestamp("us", tz="UTC"): "Timestamp",
            pa.float64(): "float64"}
EXAMPLE_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "ts", "source"]


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
    # The answer without Great Expectations (rows counted, or a value observed), where the suite
    # is answered from counts when it passes; None: only GX answers it.
    counted: Callable[[], "F.Count | Observed"] | None = None
    mostly: float | None = None  # the tolerance, where it is not the check's `mostly` setting


@dataclass
class Observed:
    """What Great Expectations observes for a table or aggregate expectation, and its verdict."""
    value: Any
    success: bool


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


def delta_suites(cfg: ValidateSettings, delta: pd.DataFrame, quarantine_reasons: pd.Series,
                 trailing: list[int]) -> list[Suite]:
    start, end = day_window(cfg.run_date)
    c = cfg.checks

    def mostly(check: str) -> float:
        return c[check]["mostly"]

    def _share(text: str, check: str) -> str:
        return _tolerance(text, mostly(check))

    # The daily case, a canonical delta, is answered from counts: the answers GX gives, without
    # importing it (seconds); anything else, and any failure, is GX's to judge (see answered()).
    countable = _countable(delta, quarantine_reasons)
    n = len(delta)

    def rows(unexpected: Callable[[], Any]) -> Callable[[], F.Count] | None:
        return (lambda: F.Count(n, int(unexpected()))) if countable else None

    def observed(value: Callable[[], Any], success: Callable[[Any], bool]
                 ) -> Callable[[], Observed] | None:
        return (lambda: Observed(value(), bool(success(value())))) if countable else None

    plan: list[Planned] = [
        Planned("delta.columns", "columns",
                lambda x: x.ExpectTableColumnsToMatchSet(column_set=list(S.COLUMNS),
                                                         exact_match=True),
                f"exactly {list(S.COLUMNS)}",
                # GX observes the columns sorted by name
                counted=observed(lambda: sorted(delta.columns), lambda _: True)),
    ]
    for f in S.EVENT_SCHEMA:
        plan.append(Planned(f"delta.types.{f.name}", "types",
                            lambda x, n=f.name, t=GX_TYPES[f.type]:
                            x.ExpectColumnValuesToBeOfType(column=n, type_=t),
                            f"{f.type} (pandas type {GX_TYPES[f.type]})",
                            counted=observed(lambda t=GX_TYPES[f.type]: t, lambda _: True)))
    for col in S.REQUIRED:
        plan.append(Planned(f"delta.not_null.{col}", "not_null",
                            lambda x, n=col: x.ExpectColumnValuesToNotBeNull(
                                column=n, mostly=mostly("not_null")),
                            _share("no NULLs", "not_null"), counted=rows(lambda: 0)))
    plan.append(Planned("delta.event_types", "event_types",
                        lambda x: x.ExpectColumnValuesToBeInSet(
                            column="event_type", value_set=list(S.EVENT_TYPES),
                            mostly=mostly("event_types")),
                        _share(f"one of {list(S.EVENT_TYPES)}", "event_types"),
                        counted=rows(lambda: (~delta["event_type"].isin(S.EVENT_TYPES)).sum())))
    oldest = start - cfg.max_late
    newest = end + cfg.skew
    plan.append(Planned("delta.ts_in_window", "ts_in_window",
                        lambda x: x.ExpectColumnValuesToBeBetween(
                            column="ts", min_value=oldest, max_value=newest,
                            mostly=mostly("ts_in_window")),
                        _share(f"{_iso(oldest)} .. {_iso(newest)} (late writes up to "
                               f"{cfg.max_late.days} days, clock skew "
                               f"{cfg.skew.total_seconds() / 60:g} min)", "ts_in_window"),
                        counted=rows(lambda: ((delta["ts"] < oldest) |
                                              (delta["ts"] > newest)).sum())))
    for col in ("event_id", "user_id", "item_id"):
        plan.append(Planned(f"delta.id_format.{col}", "id_format",
                            lambda x, n=col: x.ExpectColumnValuesToMatchRegex(
                                column=n, regex=S.ID_REGEX.pattern, mostly=mostly("id_format")),
                            _share(f"matches {S.ID_REGEX.pattern}", "id_format"),
                            # GX's pandas test: column.astype(str).str.contains(regex)
                            counted=rows(lambda name=col: (~delta[name].astype(str).str
                                                           .contains(S.ID_REGEX.pattern)).sum())))
    plan.append(Planned("delta.event_id_unique", "event_id_unique",
                        lambda x: x.ExpectColumnValuesToBeUnique(
                            column="event_id", mostly=mostly("event_id_unique")),
                        _share("unique", "event_id_unique"),
                        counted=rows(lambda: delta["event_id"].duplicated(keep=False).sum())))
    fresh_from = end - dt.timedelta(minutes=c["freshness"]["max_age_minutes"])
    plan.append(Planned("delta.freshness", "freshness",
                        lambda x: x.ExpectColumnMaxToBeBetween(column="ts", min_value=fresh_from),
                        f"newest event >= {_iso(fresh_from)} ({c['freshness']['max_age_minutes']} "
                        f"min before run.date)",
                        counted=observed(lambda: delta["ts"].max(), lambda t: t >= fresh_from)))

    v = c["volume"]
    # The day's volume counts events of the day window only: the delta also holds late events of
    # earlier days (and re-read lookback days), which the history partitions count elsewhere.
    if "ts" in delta and isinstance(delta["ts"].dtype, pd.DatetimeTZDtype):
        in_day = delta.loc[(delta["ts"] >= start) & (delta["ts"] < end), ["ts"]]
    else:  # no usable ts: the type expectations say so; count every row
        in_day = pd.DataFrame({"row": np.arange(len(delta))})
    lo, hi, skipped = v["min_events"], None, ""
    if len(trailing) >= v["min_history_days"] and trailing:
        # The median, not the mean: one admitted outlier day (a confirmed outage, a sale) must
        # not drag the band so far that the next ordinary day fails.
        median = float(np.median(trailing))
        lo = max(v["min_events"], math.floor(median * v["low"]))
        hi = math.ceil(median * v["high"])
        expected = (f"{lo:,} .. {hi:,} events ({v['low']:g}x .. {v['high']:g}x the trailing "
                    f"{len(trailing)}-day median {median:,.0f})")
    else:
        expected = f">= {lo:,} events"
        skipped = (f"band not applied: {len(trailing)} trailing trusted day(s) in history, "
                   f"{v['min_history_days']} needed")
    day_plan = [Planned("delta_day.volume", "volume",
                        lambda x: x.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi),
                        expected, skipped,
                        counted=observed(lambda: len(in_day),
                                         lambda k: k >= lo and (hi is None or k <= hi)))]

    share = c["quarantine_share"]["max"]
    fetch_plan = [Planned("fetch.quarantine_share", "quarantine_share",
                          lambda x: x.ExpectColumnValuesToBeInSet(column="quarantine_reason",
                                                                  value_set=[""],
                                                                  mostly=max(0.0, 1.0 - share)),
                          f"<= {share:.2%} of fetched rows quarantined",
                          top_values=lambda: [{"value": r, "count": int(n)} for r, n in
                                              quarantine_reasons.value_counts().items()],
                          counted=(lambda: F.Count(n + len(quarantine_reasons),
                                                   int((quarantine_reasons != "").sum())))
                          if countable else None, mostly=max(0.0, 1.0 - share))]
    fetched = pd.DataFrame({"quarantine_reason": pd.concat(
        [pd.Series("", index=range(len(delta)), dtype="str"), quarantine_reasons.astype("str")],
        ignore_index=True)})
    return [Suite("delta", delta, plan),
            Suite("delta_day", in_day.reset_index(drop=True), day_plan),
            Suite("fetch", fetched, fetch_plan)]


def _countable(delta: pd.DataFrame, reasons: pd.Series) -> bool:
    """Whether counts give GX's answers for the delta: canonical columns of the canonical pandas
    types, rows, no NULL key or reason (GX leaves NULLs out of a share; counts would not)."""
    return (len(delta) > 0 and set(delta.columns) == set(S.COLUMNS)
            and all(delta[f.name].dtype.type.__name__ == GX_TYPES[f.type]
                    for f in S.EVENT_SCHEMA)
            and not any(delta[c].isna().any() for c in S.REQUIRED)
            and not reasons.isna().any())


def answered(suites: list[Suite], cfg: ValidateSettings) -> list[Outcome] | None:
    """The suites' outcomes from their counted answers, when every expectation has one and all
    pass; None when Great Expectations must run (its verdict, its example rows)."""
    if not all(p.counted is not None for s in suites for p in s.planned):
        return None
    outcomes = [_counted_outcome(s.name, p, p.counted(), cfg) for s in suites for p in s.planned]
    return outcomes if all(o.success for o in outcomes) else None


def window_plan(cfg: ValidateSettings, columns: list[str], first: dt.date
                ) -> tuple[list[Planned], list[Planned]]:
    """The planned expectations of the window suite and of its distinct-ids suite."""
    lo = dt.datetime.combine(first, dt.time(), tzinfo=dt.timezone.utc)
    hi = dt.datetime.combine(cfg.run_date, dt.time(), tzinfo=dt.timezone.utc)
    def mostly(check: str) -> float:
        return cfg.checks[check]["mostly"]

    def _share(text: str, check: str) -> str:
        return _tolerance(text, mostly(check))

    plan = [Planned(f"window.not_null.{col}", "not_null",
                    lambda x, n=col: x.ExpectColumnValuesToNotBeNull(
                        column=n, mostly=mostly("not_null")), _share("no NULLs", "not_null"))
            for col in columns]
    min_events = cfg.checks["window"]["min_events"]
    plan += [
        Planned("window.event_types", "event_types",
                lambda x: x.ExpectColumnValuesToBeInSet(column="event_type",
                                                        value_set=list(S.EVENT_TYPES),
                                                        mostly=mostly("event_types")),
                _share(f"one of {list(S.EVENT_TYPES)}", "event_types")),
        Planned("window.ts_in_window", "ts_in_window",
                lambda x: x.ExpectColumnValuesToBeBetween(column="ts", min_value=lo, max_value=hi,
                                                          strict_max=True,
                                                          mostly=mostly("ts_in_window")),
                _share(f"{_iso(lo)} .. {_iso(hi)} (excluded)", "ts_in_window")),
        Planned("window.event_id_unique", "event_id_unique",
                lambda x: x.ExpectColumnValuesToBeUnique(column="event_id",
                                                         mostly=mostly("event_id_unique")),
                _share("unique", "event_id_unique")),
        Planned("window.events", "window",
                lambda x: x.ExpectTableRowCountToBeBetween(min_value=min_events),
                f">= {min_events:,} events in the training window"),
    ]
    id_plan = [Planned("window_ids.id_format", "id_format",
                       lambda x: x.ExpectColumnValuesToMatchRegex(column="id",
                                                                  regex=S.ID_REGEX.pattern,
                                                                  mostly=mostly("id_format")),
                       _share(f"every distinct user_id and item_id matches {S.ID_REGEX.pattern}",
                              "id_format"))]
    return plan, id_plan


def window_suites(cfg: ValidateSettings, window: pd.DataFrame, first: dt.date) -> list[Suite]:
    plan, id_plan = window_plan(cfg, list(window.columns), first)
    # Ids repeat a lot: their format is checked once per distinct id.
    ids = pd.DataFrame({"id": pd.concat([pd.Series(window["user_id"].unique()),
                                         pd.Series(window["item_id"].unique())],
                                        ignore_index=True).astype("str")})
    return [Suite("window", window, plan), Suite("window_ids", ids, id_plan)]


def run_suites(suites: list[Suite], cfg: ValidateSettings) -> list[Outcome]:
    """Run each suite with Great Expectations on its frame; one Outcome per planned expectation."""
    with warnings.catch_warnings():
        # With the spark extra installed GX imports PySpark, which warns about pandas 3 on import;
        # validate never uses Spark.
        warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas",
                                FutureWarning)
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


def _outcome(suite: Suite, p: Planned, r, cfg: ValidateSettings) -> Outcome:
    res = dict(r.result or {})
    out = Outcome(suite=suite.name, name=p.name, check=p.check, severity=cfg.severity(p.check),
                  success=bool(r.success), observed=None, expected=p.expected, note=p.skipped)
    if r.exception_info and not res:
        info = r.exception_info if isinstance(r.exception_info, dict) else {}
        # Keyed by metric for a failed metric, or flat: the first message either way.
        errors = [v.get("exception_message") for v in info.values() if isinstance(v, dict)]
        message = next((e for e in errors if e), None) or info.get("exception_message", "")
        out.success, out.observed = False, f"could not evaluate: {shorten(message)}"
        return out
    if "observed_value" in res:
        observed = _plain(res["observed_value"])
        out.observed = ", ".join(map(str, observed)) if isinstance(observed, list) else observed
        return out
    _fill_counts(out, res)
    if not out.success:
        idx = [i for i in res.get("partial_unexpected_index_list") or [] if isinstance(i, int)]
        cols = [c for c in EXAMPLE_COLUMNS if c in suite.frame.columns] or list(suite.frame.columns)
        rows = suite.frame.reset_index(drop=True).iloc[idx[:cfg.examples]][cols]
        out.examples = [{k: _plain(v) for k, v in row.items()} for row in rows.to_dict("records")]
        out.top_values = p.top_values()[:cfg.examples] if p.top_values else []
    return out


def _fill_counts(out: Outcome, res: dict) -> None:
    count, total = res.get("unexpected_count"), res.get("element_count")
    out.unexpected_count = int(count or 0)
    out.unexpected_percent = float(res["unexpected_percent"]) if \
        res.get("unexpected_percent") is not None else 0.0
    out.observed = f"{out.unexpected_count:,} of {int(total or 0):,} rows unexpected " \
                   f"({out.unexpected_percent:.3g}%)"


def _counted_outcome(suite: str, p: Planned, count: F.Count | Observed | int,
                     cfg: ValidateSettings) -> Outcome:
    """The Outcome Great Expectations gives for these counts (its success and percent rules,
    great_expectations/expectations/expectation.py: _mostly_success, _format_map_output)."""
    out = Outcome(suite=suite, name=p.name, check=p.check, severity=cfg.severity(p.check),
                  success=True, observed=None, expected=p.expected, note=p.skipped)
    if isinstance(count, int):  # the row count
        out.observed, out.success = count, count >= cfg.checks["window"]["min_events"]
        return out
    if isinstance(count, Observed):  # as _outcome reads GX's observed_value
        observed = _plain(count.value)
        out.observed = ", ".join(map(str, observed)) if isinstance(observed, list) else observed
        out.success = count.success
        return out
    if count.element:  # else vacuously true, as in GX
        mostly = p.mostly if p.mostly is not None else cfg.checks[p.check]["mostly"]
        out.success = (count.element - count.unexpected) / count.element >= mostly
    percent = count.unexpected / count.element * 100 if count.element else None
    _fill_counts(out, {"unexpected_count": count.unexpected, "element_count": count.element,
                       "unexpected_percent": percent})
    return out


def window_from_facts(cfg: ValidateSettings, files: list[Path], first: dt.date, facts_dir: Path
                      ) -> tuple[list[Outcome] | None, int, dict]:
    """The window suites answered from per-file facts (dailyrec.quality.validation.window_facts): (outcomes,
    window events, {files, computed, reused}); outcomes is None when Great Expectations must run
    on the whole window (something fails)."""
    cache = F.WindowFacts(facts_dir)
    keyed = [cache.of(path) for path in files]
    cache.prune({key for key, _ in keyed})
    facts = [f for _, f in keyed]
    epoch = dt.date(1970, 1, 1)
    counts = F.window_counts(facts, files, (first - epoch).days, (cfg.run_date - epoch).days,
                             F.KEY_COLUMNS)
    stats = {"files": len(files), "computed": cache.computed, "reused": cache.reused}
    plan, id_plan = window_plan(cfg, F.KEY_COLUMNS, first)
    outcomes = [_counted_outcome("window", p, counts[p.name], cfg) for p in plan] + \
        [_counted_outcome("window_ids", p, counts[p.name], cfg) for p in id_plan]
    if not all(o.success for o in outcomes):
        return None, 0, stats  # GX's own verdict, with example rows
    return outcomes, counts["window.events"], stats


# ---------------------------------------------------------------------------------------------
# Reading the inputs.


# ---------------------------------------------------------------------------------------------
# The verdict.


# ---------------------------------------------------------------------------------------------

def _tolerance(text: str, mostly: float) -> str:
    """The expectation in words, with its tolerance: a day fails for a share of bad rows."""
    return text if mostly >= 1 else f"{text} for >= {mostly:.2%} of rows"


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


def shorten(text: str | None, limit: int = 200) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."

