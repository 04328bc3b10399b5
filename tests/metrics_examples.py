"""Metrics files in the stages' shapes (dailyrec.core.metrics), for tests that need them without running
the stages: example("fetch", day, fetched=10) is a whole fetch.json with that number changed."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

from dailyrec.core import metrics


def _base(day: str) -> dict[str, dict]:
    ndcg = {"ndcg_at_20": 0.15, "recall_at_20": 0.25}
    return {
        "fetch": {"run_date": day, "window": {"start": f"{day}T00:00:00+00:00",
                                              "end": f"{day}T00:00:00+00:00"},
                  "fetched": 0, "kept": 0, "quarantined": 0, "duplicates": 0, "ignored": 0,
                  "quarantined_by_reason": {}, "ignored_by_type": {}, "tables": {}},
        "history": {"run_date": day, "days": 0, "first_day": None, "last_day": None, "rows": 0,
                    "added": 0, "added_by_day": {}, "duplicates_skipped": 0, "resent": 0,
                    "replaced": 0, "partitions_removed": [], "quarantined": 0},
        "validation": {"run_date": day, "day": day, "status": "passed", "passed": True,
                       "failed": 0, "warned": 0, "day_rejected": False, "rejected_days": [],
                       "delta_events": 0, "window_days": 0, "window_events": 0,
                       "expectations": {}},
        "filter": {"run_date": day,
                   "window": {"days": 0, "first_day": None, "last_day": None, "window_days": 60,
                              "rejected_days_left_out": []},
                   "input": {"rows": 0, "users": 0, "items": 0},
                   "output": {"rows": 0, "users": 0, "items": 0},
                   "removed": {"rows": 0, "share": 0.0, "bot_or_internal_users": 0},
                   "rules": {}, "seconds": {}, "events_per_second": None},
        "train": {"run_date": day, "device": "cpu", "events": 0, "events_ignored": 0, "users": 0,
                  "items": 0, "nonzeros": 0, "density": 0.0, "iterations": 15,
                  "final_loss": None, "durations_s": {}, "fit_s_per_iteration": 0.0,
                  "implicit_version": "0.7.3", "mlflow_run_id": None},
        "eval": {"run_date": day, "holdout_start": day, "holdout_days": 1, "k": 10,
                 "gate_metric": "ndcg_at_20", "counts": {}, "device": "cpu", "status": "ok",
                 "baselines": {"most_popular": None, "published": None},
                 "lift_over_most_popular": None, **ndcg},
        "gate": {"run_date": day, "passed": True, "reason": "passed", "metric": "ndcg_at_20",
                 "value": None, "most_popular": None, "lift": None, "min_lift": 0.1,
                 "published": None, "published_version": None, "drop": None, "max_drop": 0.05,
                 "model_md5": None},
        "publish": {"run_date": day, "version": f"{day}.1", "kind": "model",
                    "previous_version": None, "users": 0,
                    "users_written": 0, "users_without_recommendations": 0, "items": 0,
                    "items_with_similar": 0, "top_n": 20, "filter_already_liked": True,
                    "explain_items": 20, "buckets": 1, "item_buckets": 1,
                    "kept_versions": [], "removed_versions": [], "seconds": {},
                    "users_per_second": None, "redis": "redis://127.0.0.1:6379/0",
                    "gate": {"passed": True, "forced": False, "reason": "passed"},
                    "model_run": {}, "mlflow_alias": None},
        "mlflow": {"run_id": None, "experiment": "dailyrec", "model_name": "dailyrec-als",
                   "model_version": None, "alias": "published"},
    }


def _merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def example(name: str, day: dt.date | str, **changes) -> dict:
    """A whole metrics file; nested changes are merged into the example (a dict replaces
    an empty one)."""
    payload = _merge(_base(str(day))[name], changes)
    return metrics.BY_NAME[name].check(payload)


def write(directory: Path, name: str, day: dt.date | str, **changes) -> dict:
    payload = example(name, day, **changes)
    metrics.BY_NAME[name].write(payload, Path(directory) / f"{name}.json")
    return payload
