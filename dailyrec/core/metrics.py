"""The metrics files: each one's shape, defined once, for its writer and for its readers.

Two kinds of file. `metrics/NAME.json` is a stage's full record (plain git-tracked outputs in
dvc.yaml: the report, the runner and filter_noise read them). `metrics/summary/ROW.json` are the DVC
metrics: the headline numbers of those records, flat and numeric (booleans for verdicts), derived
here when the record is written, so that `dvc metrics show`, `dvc metrics diff` and `dvc exp show`
are a table a person can read. Rows are cheap there, columns are not: the summary rows share a
small set of column names (events, kept, users, ndcg@20, ...), and per-rule and per-baseline
numbers are rows of their own.

A stage writes its file with `FILE.write(payload)`, which refuses a payload that does not match the
shape (a key missing, an unknown key, a value of the wrong type), so a change to what a stage writes
is a change here, where the report and the runner see it too. Readers use `FILE.read(day)`, which
returns None for a file that is missing, unreadable, not of this shape, or about another run.date.

None of these files holds a wall-clock value that another stage depends on: durations are only in
train.json and publish.json, which no stage reads (tests/test_dvc_yaml.py re-runs the pipeline and
checks that nothing after fetch_delta runs again).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dailyrec.core import noise_rules, paths
from dailyrec.core.files import write_json

NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))
OPTIONAL_TEXT = (str, type(None))


class ShapeError(ValueError):
    """A payload or file that does not match its metrics file's shape."""


@dataclass(frozen=True)
class MayLack:
    """A key that may be absent (files written before it existed, and tests' examples of them);
    checked against `expected` when present."""

    expected: Any


@dataclass(frozen=True)
class MetricsFile:
    """A metrics file: its path, the stage that writes it, and its keys with their types.

    shape: key -> a type or tuple of types (dict and list hold anything), or a nested shape;
           MayLack(...) around one of these: the key may be absent.
    extra: a regular expression for further top-level keys (eval.json's metric_at_k), number-valued.
    """

    path: Path
    stage: str
    shape: dict[str, Any]
    extra: str | None = None
    doc: str = ""
    summary: Callable[[dict], dict[str, dict]] | None = None  # payload -> {row: flat numbers}
    rows: tuple[str, ...] = ()  # the summary rows it writes (each is metrics/summary/ROW.json)

    def check(self, payload: Any) -> dict:
        if not isinstance(payload, dict):
            raise ShapeError(f"{self.path}: expected an object, got {type(payload).__name__}")
        _check(self.shape, payload, str(self.path), self.extra)
        return payload

    def write(self, payload: dict, path: Path | None = None) -> None:
        """The record, then its summary rows beside it (under summary/)."""
        path = Path(path or self.path)
        write_json(path, self.check(payload))
        if self.summary is not None:
            rows = self.summary(payload)
            assert set(rows) == set(self.rows), (self.name, sorted(rows))
            for row, values in rows.items():
                write_json(path.parent / SUMMARY_DIRNAME / f"{row}.json", summary_row(values))

    def summary_paths(self) -> list[Path]:
        return [SUMMARY_DIR / f"{row}.json" for row in self.rows]

    def read(self, day: dt.date | None = None, path: Path | str | None = None) -> dict | None:
        """The file's content, or None: missing, unreadable, not this shape, or (with day) about
        another run.date."""
        try:
            payload = self.check(json.loads(Path(path or self.path).read_text()))
        except (OSError, ValueError):
            return None
        if day is not None and payload.get("run_date") not in (None, day.isoformat()):
            return None
        return payload

    @property
    def name(self) -> str:
        return self.path.stem


def _check(shape: dict, payload: dict, where: str, extra: str | None = None) -> None:
    missing = [k for k, t in shape.items() if k not in payload and not isinstance(t, MayLack)]
    unknown = [k for k in payload if k not in shape and not (extra and re.fullmatch(extra, k))]
    if missing or unknown:
        raise ShapeError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    for key, value in payload.items():
        expected = shape.get(key, NUMBER)
        if isinstance(expected, MayLack):
            expected = expected.expected
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise ShapeError(f"{where}.{key}: expected an object")
            _check(expected, value, f"{where}.{key}")
            continue
        if isinstance(value, bool) and bool not in (expected if isinstance(expected, tuple)
                                                    else (expected,)):
            raise ShapeError(f"{where}.{key}: expected {expected}, got a boolean")
        if not isinstance(value, expected):
            raise ShapeError(f"{where}.{key}: expected {expected}, got {type(value).__name__}")


SUMMARY_DIRNAME = "summary"
SUMMARY_DIR = paths.METRICS_DIR / SUMMARY_DIRNAME


def summary_row(values: dict[str, Any]) -> dict[str, int | float | bool]:
    """A summary row: numbers and booleans only (None, meaning not measured, is left out: DVC shows
    '-'); floats rounded to 4 significant decimals so a row stays narrow."""
    out: dict[str, int | float | bool] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or isinstance(value, int):
            out[key] = value
        elif isinstance(value, float):
            out[key] = round(value, 4)
        else:
            raise ShapeError(f"summary {key}: expected a number or a boolean, got "
                             f"{type(value).__name__}")
    return out


def _at_k(metric: str) -> str:
    """The gate metric's cutoff ('ndcg_at_20' -> '20'): the K of the summary's ranking columns."""
    return metric.rsplit("_at_", 1)[-1] if "_at_" in metric else "20"


def _ranking(block: dict | None, k: str) -> dict[str, Any]:
    block = block or {}
    return {f"{name}@{k}": block.get(f"{name}_at_{k}") for name in ("ndcg", "recall", "precision")}


def _fetch_summary(p: dict) -> dict[str, dict]:
    return {"fetch": {"events": p["fetched"], "kept": p["kept"], "quarantined": p["quarantined"]}}


def _history_summary(p: dict) -> dict[str, dict]:
    return {"history": {"days": p["days"], "events": p["rows"], "quarantined": p["quarantined"]}}


def _validation_summary(p: dict) -> dict[str, dict]:
    return {"validation": {"passed": p["passed"], "failed": p["failed"], "days": p["window_days"],
                           "events": p["window_events"]}}


FILTER_RULES = noise_rules.NAMES  # each a row of its own: rule_<name>


def _filter_summary(p: dict) -> dict[str, dict]:
    rows = {"filter": {"events": p["input"]["rows"], "kept": p["output"]["rows"],
                       "removed": p["removed"]["rows"], "users": p["output"]["users"],
                       "items": p["output"]["items"]}}
    for rule in FILTER_RULES:
        entry = p["rules"].get(rule) or {}
        rows[f"rule_{rule}"] = {"removed": entry.get("rows", 0), "users": entry.get("users", 0)}
    return rows


def _train_summary(p: dict) -> dict[str, dict]:
    return {"train": {"events": p["events"], "users": p["users"], "items": p["items"],
                      "nonzeros": p["nonzeros"], "fit_s": p["durations_s"].get("fit")}}


def _eval_summary(p: dict) -> dict[str, dict]:
    k = _at_k(p["gate_metric"])
    baselines = p.get("baselines") or {}
    sessions = p.get("sessions") or {}
    models = sessions.get("models") or {}
    return {
        "eval": {**_ranking(p, k), "lift": p.get("lift_over_most_popular")},
        "popular": _ranking(baselines.get("most_popular"), k),
        "published": _ranking(baselines.get("published"), k),
        "session_fold_in": {**_ranking(models.get("fold_in"), k),
                            "lift": sessions.get("lift_over_most_popular")},
        "session_popular": _ranking(models.get("most_popular"), k),
    }


def _gate_summary(p: dict) -> dict[str, dict]:
    return {"gate": {"passed": p["passed"], "lift": p["lift"]}}


def _publish_summary(p: dict) -> dict[str, dict]:
    return {"publish": {"users": p["users_written"], "items": p["items"]}}


FETCH = MetricsFile(paths.FETCH_METRICS, "fetch_delta", {
    "run_date": str,
    "window": {"start": str, "end": str},
    "fetched": int, "kept": int, "quarantined": int, "duplicates": int, "ignored": int,
    "quarantined_by_reason": dict,  # reason -> rows
    "ignored_by_type": dict,  # event type a table ignores -> rows
    "tables": dict,  # table -> {fetched, kept, quarantined, duplicates, ignored, columns}
}, doc="fetched = kept + quarantined + duplicates + ignored, per table and in all",
    summary=_fetch_summary, rows=("fetch",))

HISTORY = MetricsFile(paths.HISTORY_METRICS, "merge_history", {
    "run_date": str, "days": int, "first_day": OPTIONAL_TEXT, "last_day": OPTIONAL_TEXT,
    "rows": int, "added": int, "added_by_day": dict, "duplicates_skipped": int,
    "resent": int, "replaced": int, "partitions_removed": list, "quarantined": int,
}, doc="the history's days and rows, and what this run added",
    summary=_history_summary, rows=("history",))

VALIDATION = MetricsFile(paths.VALIDATION_METRICS, "validate", {
    "run_date": str, "day": str,
    "status": str,  # passed, warned, admitted, failed
    "passed": bool, "failed": int, "warned": int, "day_rejected": bool,
    "rejected_days": list, "delta_events": int, "window_days": int, "window_events": int,
    "expectations": dict,  # name -> {success, severity, observed, expected, ...}
}, doc="the verdict and every expectation (filter_noise depends on it: no durations here)",
    summary=_validation_summary, rows=("validation",))

FILTER = MetricsFile(paths.FILTER_METRICS, "filter_noise", {
    "run_date": str,
    "window": {"days": int, "first_day": OPTIONAL_TEXT, "last_day": OPTIONAL_TEXT,
               "window_days": int, "rejected_days_left_out": list},
    "input": {"rows": int, "users": int, "items": int},
    "output": {"rows": int, "users": int, "items": int},
    "removed": {"rows": int, "share": NUMBER, "bot_or_internal_users": int},
    # events without an IP, and those whose IP text is no address (kept, treated as without one)
    "ip_texts": MayLack({"rows_without_ip": int, "rows_not_an_address": int,
                         "values_not_an_address": int, "top_not_an_address": list}),
    "rules": dict,  # rule -> {enabled, rows, users, top offenders, ...}
    "seconds": dict, "events_per_second": OPTIONAL_NUMBER,
    # the local engine: days whose day-local verdicts were reused, days judged this run, days
    # whose shared_ip verdicts were reused, data/clean's day files linked from an earlier run's
    "day_verdicts": MayLack({"reused": int, "judged": int, "shared_ip_reused": int,
                             "day_files_reused": int}),
}, doc="events and users removed per rule, top offenders",
    summary=_filter_summary, rows=("filter", *(f"rule_{rule}" for rule in FILTER_RULES)))

TRAIN = MetricsFile(paths.TRAIN_METRICS, "train", {
    "run_date": str, "device": str, "events": int, "events_ignored": int, "users": int,
    "items": int, "nonzeros": int, "density": NUMBER, "iterations": int,
    "final_loss": OPTIONAL_NUMBER, "durations_s": dict, "fit_s_per_iteration": NUMBER,
    "implicit_version": str, "mlflow_run_id": OPTIONAL_TEXT,
}, doc="the matrix, the fit's durations and loss (no stage reads it)",
    summary=_train_summary, rows=("train",))

MLFLOW = MetricsFile(paths.MLFLOW_RECORD, "train", {
    "run_id": OPTIONAL_TEXT, "experiment": str, "model_name": str,
    "model_version": (int, type(None)), "alias": str,
}, doc="the MLflow run and registered model version of models/")

EVAL = MetricsFile(paths.EVAL_METRICS, "evaluate", {
    "run_date": str, "holdout_start": str, "holdout_days": int, "k": int, "gate_metric": str,
    "counts": dict, "device": str,
    "status": str,  # ok, insufficient_data
    "baselines": dict,  # most_popular, published: metric -> value (or None)
    "lift_over_most_popular": OPTIONAL_NUMBER,
    "protocol": MayLack(OPTIONAL_TEXT),  # the gate's protocol: users, sessions (None: neither)
    "sessions": MayLack({  # the session protocol (visitors who do not return)
        "status": str,  # ok, insufficient_data
        "counts": dict,  # cases, skipped by reason, ...
        "max_context": int, "item_confidence": NUMBER,
        "models": dict,  # fold_in, similar_items, most_popular: metric -> value (or None)
        "lift_over_most_popular": OPTIONAL_NUMBER,  # fold_in's gate metric
    }),
}, extra=r"(precision|recall|map|ndcg|hit_rate|coverage)_at_\d+|mean_percentile_rank",
    doc="the model's metrics at K=20 and eval.k (the user protocol), its baselines', and the "
        "session protocol's",
    summary=_eval_summary, rows=("eval", "popular", "published", "session_fold_in",
                                 "session_popular"))

GATE = MetricsFile(paths.GATE, "evaluate", {
    "run_date": str, "passed": bool, "reason": str, "metric": str, "value": OPTIONAL_NUMBER,
    "most_popular": OPTIONAL_NUMBER, "lift": OPTIONAL_NUMBER, "min_lift": NUMBER,
    "published": OPTIONAL_NUMBER, "published_version": (int, str, type(None)),
    "drop": OPTIONAL_NUMBER, "max_drop": NUMBER,
    "model_md5": OPTIONAL_TEXT,  # the DVC hash of the models/ it judged: publish checks it
    "protocol": MayLack(OPTIONAL_TEXT),  # users or sessions: which evaluation decided
}, doc="the publish gate's verdict on one model (publish obeys `passed` for that model only)",
    summary=_gate_summary, rows=("gate",))

PUBLISH = MetricsFile(paths.PUBLISH_METRICS, "publish", {
    "run_date": str, "version": str, "kind": str, "previous_version": OPTIONAL_TEXT,
    "users": int, "users_written": int, "users_without_recommendations": int, "items": int,
    "items_with_similar": int, "top_n": int, "filter_already_liked": bool, "explain_items": int,
    "buckets": int, "item_buckets": int, "kept_versions": list,
    "removed_versions": list, "seconds": dict, "users_per_second": OPTIONAL_NUMBER,
    "redis": str, "gate": dict, "model_run": dict, "mlflow_alias": (dict, type(None)),
}, doc="the version served, its users, and how long publishing took (no stage reads it)",
    summary=_publish_summary, rows=("publish",))

ALL: tuple[MetricsFile, ...] = (FETCH, HISTORY, VALIDATION, FILTER, TRAIN, EVAL, GATE, PUBLISH,
                                MLFLOW)
BY_NAME: dict[str, MetricsFile] = {m.name: m for m in ALL}


@dataclass
class Snapshot:
    """Every metrics file of one run.date: None where missing, and the names of those left out
    because they belong to another day (a stage that failed or did not run today)."""

    day: dt.date
    files: dict[str, dict | None] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> dict | None:
        return self.files.get(name)


def snapshot(day: dt.date, metrics_dir: Path = paths.METRICS_DIR) -> Snapshot:
    snap = Snapshot(day=day)
    for m in ALL:
        path = Path(metrics_dir) / m.path.name
        any_day = m.read(path=path)
        today = m.read(day, path=path)
        snap.files[m.name] = today
        if any_day is not None and today is None:
            snap.stale.append(m.name)
    return snap
