"""The daily report's numbers: read from the stages' metrics files (their shapes:
dailyrec.core.metrics) and, for the chart's history, from MLflow (the JSON saved beside each
report when MLflow has none). Any missing block says so, never fails.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dailyrec.core import env, metrics, noise_rules, paths

log = logging.getLogger("dailyrec.ops.report")

METRICS_DIR = paths.METRICS_DIR
REPORTS_DIR = paths.DAILY_REPORTS
# Evaluation metrics in the order the report lists them (others found in eval.json follow).
METRIC_ORDER = ("ndcg", "recall", "precision", "map", "hit_rate", "coverage",
                "mean_percentile_rank")
METRIC_FILES = tuple(m.name for m in metrics.ALL)


@dataclass
class Point:
    """One run in the chart's history."""
    day: dt.date
    value: float
    baseline: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def number(value: Any) -> float | None:
    """A finite number, or None (missing, not a number, a boolean, NaN or infinite)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        found = float(value)
    except (TypeError, ValueError):
        return None
    return found if math.isfinite(found) else None


def eval_metrics(block: dict | None, cutoff: Any = None) -> dict[str, float]:
    """The model's evaluation metrics from eval.json: those at `cutoff` (default: eval.json's `k`;
    every cutoff when neither is known) and the cutoff-free ones such as mean_percentile_rank."""
    if not isinstance(block, dict):
        return {}
    return _ordered(_metric_subset(block, cutoff or block.get("k")))


def _metric_subset(source: dict, k: Any) -> dict[str, float]:
    out = {}
    for name, value in source.items():
        stem, _, cutoff = name.partition("_at_")
        if stem not in METRIC_ORDER or number(value) is None:
            continue
        if cutoff and k is not None and cutoff != str(k):
            continue
        out[name] = float(value)
    return out


def baseline_metrics(block: dict | None, cutoff: Any = None) -> tuple[str, dict[str, float]]:
    """The most-popular baseline's metrics (eval.json baselines.most_popular), and its label."""
    label = "most popular"
    if not isinstance(block, dict):
        return label, {}
    popular = (block.get("baselines") or {}).get("most_popular")
    if not isinstance(popular, dict):
        return label, {}
    return label, _ordered(_metric_subset(popular, cutoff or block.get("k")))


SESSION_MODELS = (("fold_in", "fold-in"), ("similar_items", "similar items"),
                  ("most_popular", "most popular"))


SESSION_COLUMNS = ("ndcg", "recall", "hit_rate")


def session_summary(block: dict | None, main_metric: str) -> dict[str, Any] | None:
    """The session protocol (eval.json `sessions`): its cases, whether the gate used it, and each
    model's NDCG, recall and hit rate at the main metric's cutoff (eval.json's k when it has none),
    with the lift over most popular on the main metric (NDCG when it is not a session metric)."""
    sessions = block.get("sessions") if isinstance(block, dict) else None
    if not isinstance(sessions, dict):
        return None
    k = main_metric.partition("_at_")[2] or block.get("k")
    models = sessions.get("models") or {}
    popular = models.get("most_popular") or {}
    lift_metric = main_metric if number(popular.get(main_metric)) is not None else f"ndcg_at_{k}"
    rows = []
    for name, label in SESSION_MODELS:
        values = models.get(name)
        if not isinstance(values, dict):
            continue
        rows.append({"model": name, "label": label,
                     "cells": [number(values.get(f"{c}_at_{k}")) for c in SESSION_COLUMNS],
                     "lift": "(baseline)" if name == "most_popular" else
                     lift(number(values.get(lift_metric)), number(popular.get(lift_metric)))})
    counts = sessions.get("counts") or {}
    return {"cases": number(counts.get("cases")), "status": sessions.get("status"),
            "gate": block.get("protocol") == "sessions", "cutoff": k,
            "columns": [metric_label(f"{c}_at_{k}") for c in SESSION_COLUMNS],
            "lift_label": f"lift ({metric_label(lift_metric)})", "rows": rows}


def _ordered(metrics: dict[str, float]) -> dict[str, float]:
    def rank(name: str) -> tuple[int, str]:
        stem = name.split("_at_")[0]
        return (METRIC_ORDER.index(stem) if stem in METRIC_ORDER else len(METRIC_ORDER), name)
    return {k: metrics[k] for k in sorted(metrics, key=rank)}


# Runs of the daily pipeline carry run.date (stages/tracking.py); tuning runs (stages/tune.py) share
# the experiment and are left out of the daily history.
NOT_DAILY_STAGES = {"tune", "tune-trial"}


def _run_day(run) -> dt.date | None:
    if run.data.tags.get("dailyrec.stage") in NOT_DAILY_STAGES:
        return None
    raw = run.data.params.get("run.date") or run.data.tags.get("dailyrec.run_date")
    try:
        return dt.date.fromisoformat(str(raw)[:10]) if raw else None
    except ValueError:
        return None


def mlflow_history(experiment: str, metric: str, before_or_on: dt.date,
                   uri: str | None = None, limit: int = 500) -> list[Point]:
    """One point per run date (the latest run of that date) that logged `metric`, oldest first.
    The most-popular baseline is the run's `most_popular_<metric>` (as evaluate logs it)."""
    uri = uri or env.mlflow_uri()
    if env.mlflow_store_missing(uri):
        return []
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    by_day: dict[dt.date, Point] = {}
    for run in runs:  # newest first: the first run seen for a date wins
        metrics = run.data.metrics
        day = _run_day(run)
        if metric not in metrics or day is None or day > before_or_on or day in by_day:
            continue
        baseline = metrics.get(f"most_popular_{metric}")
        by_day[day] = Point(day, float(metrics[metric]),
                            None if baseline is None else float(baseline), dict(metrics))
    return [by_day[d] for d in sorted(by_day)]


def saved_history(metric: str, before_or_on: dt.date,
                  reports_dir: Path = REPORTS_DIR) -> list[Point]:
    """History from the JSON summaries saved beside earlier reports (when MLflow has none)."""
    points = []
    for path in sorted(Path(reports_dir).glob("*.json")):
        try:
            summary = json.loads(path.read_text())
            day = dt.date.fromisoformat(summary["run_date"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        metrics = (summary.get("eval") or {}).get("metrics") or {}
        baseline = (summary.get("eval") or {}).get("baseline") or {}
        if day <= before_or_on and number(metrics.get(metric)) is not None:
            points.append(Point(day, float(metrics[metric]), number(baseline.get(metric)),
                                {k: float(v) for k, v in metrics.items()
                                 if number(v) is not None}))
    return points


def history(summary: dict, metric: str, runs: int, reports_dir: Path = REPORTS_DIR,
            experiment: str = "dailyrec") -> tuple[list[Point], str]:
    """The last `runs` points up to today, and where they came from."""
    day = dt.date.fromisoformat(summary["run_date"])
    try:
        points, source = mlflow_history(experiment, metric, day), "MLflow"
    except Exception as err:  # noqa: BLE001 - a history problem must not cost the report
        log.warning("MLflow history unavailable: %s", err)
        points, source = [], "MLflow"
    if not points:
        points, source = saved_history(metric, day, reports_dir), "saved reports"
    today = summary["eval"]["metrics"].get(metric)
    if today is not None:  # today's own numbers are authoritative
        points = [p for p in points if p.day != day]
        points.append(Point(day, today, summary["eval"]["baseline"].get(metric),
                            dict(summary["eval"]["metrics"])))
    return points[-runs:], source


def summarize(snap: metrics.Snapshot, main_metric: str) -> dict[str, Any]:
    """The report's numbers from the stages' metrics files (their shapes: dailyrec.core.metrics); a
    missing file leaves its block None. The evaluation table shows the main metric's cutoff."""
    cutoff = main_metric.partition("_at_")[2] or None
    fetch, filt, train = snap["fetch"], snap["filter"], snap["train"]
    evaluation, gate, publish = snap["eval"], snap["gate"], snap["publish"]
    mlflow_info, hist, validation = snap["mlflow"], snap["history"], snap["validation"]
    baseline_label, baseline = baseline_metrics(evaluation, cutoff)
    return {
        "run_date": snap.day.isoformat(),
        "missing": [name for name in METRIC_FILES
                    if snap[name] is None and name not in snap.stale],
        "stale": list(snap.stale),
        "fetch": None if fetch is None else {
            k: fetch[k] for k in ("fetched", "kept", "duplicates", "ignored", "quarantined",
                                  "quarantined_by_reason", "ignored_by_type")},
        "history": None if hist is None else {k: hist[k] for k in ("days", "rows", "added")},
        "validation": None if validation is None else {
            k: validation[k] for k in ("passed", "failed", "warned", "day_rejected")},
        "filter": None if filt is None else _filter_summary(filt),
        "train": None if train is None else {
            "seconds": number(train["durations_s"].get("fit")),
            "stage_seconds": number(train["durations_s"].get("total")),
            "device": train["device"], "users": train["users"], "items": train["items"],
            "interactions": train["nonzeros"],
        },
        "eval": {
            "metrics": eval_metrics(evaluation, cutoff),
            "baseline": baseline,
            "baseline_label": baseline_label,
            "status": None if evaluation is None else evaluation["status"],
            "users": None if evaluation is None else
            number(evaluation["counts"].get("evaluated_users")),
            "sessions": session_summary(evaluation, main_metric),
        },
        "gate": None if gate is None else {"passed": gate["passed"], "reason": gate["reason"]},
        "publish": None if publish is None else {
            "version": publish["version"],
            "previous_version": publish["previous_version"],
            "users": publish["users_written"],
            "users_without_recommendations": publish["users_without_recommendations"],
            "forced": bool(publish["gate"].get("forced")),
            "model_version": publish["model_run"].get("model_version"),
            "model_name": publish["model_run"].get("model_name"),
        },
        "mlflow": None if mlflow_info is None else {
            k: mlflow_info[k] for k in ("run_id", "experiment", "model_name", "model_version")},
    }


RULE_LABELS = {rule.name: rule.label for rule in noise_rules.RULES}


def _filter_summary(filt: dict) -> dict[str, Any]:
    """Events removed per rule (metrics/filter.json `rules`), over the training window."""
    counts: dict[str, int] = {}
    for rule, entry in filt["rules"].items():
        if isinstance(entry, dict) and entry.get("enabled", True) is not False:
            rows = number(entry.get("rows"))
            if rows is not None:
                counts[RULE_LABELS.get(rule, rule.replace("_", " "))] = int(rows)
    return {
        "removed_by_rule": counts,
        "removed": filt["removed"]["rows"],
        "removed_users": filt["removed"]["bot_or_internal_users"],
        "input": filt["input"]["rows"],
        "kept": filt["output"]["rows"],
        "users": filt["output"]["users"],
        "items": filt["output"]["items"],
        "window_days": filt["window"]["days"],
        "rejected_days": filt["window"]["rejected_days_left_out"],
    }


def metric_label(name: str) -> str:
    stem, _, k = name.partition("_at_")
    label = {"ndcg": "NDCG", "map": "MAP", "hit_rate": "Hit rate", "mean_percentile_rank":
             "MPR (lower=better)"}.get(stem, stem.replace("_", " ").capitalize())
    return f"{label}@{k}" if k else label


def lift(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "n/a"
    return f"{(value - base) / abs(base):+.1%}"
