"""Evaluation: how good is today's configuration, out of time, against baselines; and the gate.

    input   data/clean/ (a file per day), models/ (its meta.json must match params.yaml's
            train section),
            params.yaml (run.date, train, eval, mlflow), metrics/mlflow.json (the train run)
    output  metrics/eval.json          ALS metrics at K=20 and eval.k, counts, a `baselines` block,
                                       a `sessions` block (the session protocol), `protocol`
            metrics/gate.json          {"passed", "reason", ...}: publish obeys `passed`
            metrics/plots/eval_at_k.csv  recall/ndcg/precision at k = 1..max(20, eval.k) per model

The split (dailyrec.model.split): the last eval.holdout_days days of the window (the days before
run.date) are held out. Metric definitions: dailyrec.model.ranking. Every model is scored through
the one Recommender interface (dailyrec.model.recommender).

Baselines, on the same split, users and truth:
- most_popular: items by number of distinct users before the holdout.
- published: the registry version carrying mlflow.alias (what publish serves), when there is one.
  If its training data ended before the holdout start it never saw the held-out days, and the
  artefact itself is scored ("artifact" mode: what users were actually served; users it does not
  know get its most-popular list, items it does not know rank last). Otherwise (eval.holdout_days > 1,
  or re-running a past day) scoring it would leak the answers, so its configuration (meta.json params)
  is refitted on the split instead ("refit" mode: compares configurations only). The mode is recorded.

The session protocol: dailyrec.model.sessions. The gate: dailyrec.model.gate.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from dailyrec.core.errors import ConfigError
from dailyrec.core.files import tmp_path
from dailyrec.model import als, artifacts
from dailyrec.model import confidence as C
from dailyrec.model.recommender import (ALSRecommender, MappedRecommender, PopularRecommender)
from dailyrec.model.settings import EvalConfig, TrainConfig
from dailyrec.model.split import Split, make_split
from dailyrec.model.sessions import Sessions, make_sessions, score_sessions, SESSION_MODELS
from dailyrec.model.gate import decide, decide_sessions, gate_record
from dailyrec.model.scoring import Scored, score


# --- the split ----------------------------------------------------------------------------------


# --- the session protocol: visitors who do not return ---------------------------------------------


# --- scoring ------------------------------------------------------------------------------------


def fit_on_split(split: Split, config: TrainConfig, device: str
                 ) -> tuple[C.Interactions, als.FitResult]:
    """Fit a configuration on the split's training events; returns (its interactions, the fit).
    The split's strength matrix is reused unless the event weights or the decay differ."""
    interactions = split.train
    if (config.confidence.event_weights, config.confidence.decay_half_life_days) != \
            (split.confidence.event_weights, split.confidence.decay_half_life_days):
        interactions = C.aggregate(split.before, config.confidence, split.holdout_start)
    matrix = C.confidence(interactions, config.confidence)
    return interactions, als.fit(matrix, config, device)


# --- the gate -----------------------------------------------------------------------------------


# --- evaluating a configuration ------------------------------------------------------------------

def evaluate(train_config: TrainConfig, config: EvalConfig, run_date: dt.date,
             window_end: dt.datetime, events: pa.Table,
             published: Callable[[], tuple[artifacts.ModelBundle, dict] | None] | None = None
             ) -> dict[str, Any]:
    """Everything but the writing. `published`: None, or a function giving (bundle, info) or
    None, called once the candidate is scored (the stage looks it up meanwhile)."""
    holdout_start = window_end - dt.timedelta(days=config.holdout_days)
    device = als.resolve_device(train_config.device)
    split = make_split(events, train_config.confidence, holdout_start, window_end,
                       config.relevant_event_types)
    sessions = make_sessions(split, config.session_max_context)
    report: dict[str, Any] = {
        "run_date": run_date.isoformat(), "holdout_start": holdout_start.isoformat(),
        "holdout_days": config.holdout_days, "k": config.k, "gate_metric": config.gate_metric,
        "counts": split.counts, "device": device,
    }
    out: dict[str, Any] = {"report": report, "curves": {}, "session_curves": {},
                           "fit_losses": [], "durations": {}}
    history = split.train.strength.nnz > 0
    n_users, n_cases = len(split.users), sessions.m
    users_ok = history and n_users >= config.min_test_users
    fitted = None
    if history and (users_ok or n_cases > 0):
        _, fitted = fit_on_split(split, train_config, device)
        out["fit_losses"] = fitted.losses
        out["durations"]["fit"] = fitted.seconds
    popular_recommender = PopularRecommender(split.train.strength)
    report["sessions"] = _session_report(sessions, fitted, popular_recommender, train_config,
                                         config, out)
    if not users_ok:
        report.update(status="insufficient_data", baselines={"most_popular": None,
                                                             "published": None},
                      lift_over_most_popular=None)
        session_models = report["sessions"]["models"]
        if history and n_cases >= config.min_test_users:
            out["gate"] = decide_sessions(session_models["fold_in"],
                                          session_models["most_popular"], n_users, n_cases,
                                          config)
        else:
            problem = (f"not enough history: no events before the holdout start "
                       f"{holdout_start.date()} (eval.holdout_days={config.holdout_days})"
                       if not history else
                       f"too few users to evaluate: {n_users} held-out users with new items and "
                       f"{n_cases} visitor sessions with a later item, "
                       f"eval.min_test_users={config.min_test_users}")
            out["gate"] = {**gate_record(config, None), "passed": False, "reason": f"failed: {problem}"}
        report["protocol"] = out["gate"]["protocol"]
        return out
    model = score(ALSRecommender(fitted.model), split, config.cutoffs)
    popular = score(popular_recommender, split, config.cutoffs)
    out["durations"].update(score_model=model.seconds, score_most_popular=popular.seconds)
    report.update(status="ok", **model.metrics)
    curves = {"als": model.curves, "most_popular": popular.curves}
    published_block = None
    found = published() if published is not None else None
    if found is not None:
        bundle, info = found
        published_scored, mode = score_published(bundle, split, train_config, config, device,
                                                  model)
        published_block = {**published_scored.metrics, **info, "mode": mode}
        curves["published"] = published_scored.curves
        out["durations"]["score_published"] = published_scored.seconds
    report["baselines"] = {"most_popular": popular.metrics, "published": published_block}
    base = popular.metrics[config.gate_metric]
    report["lift_over_most_popular"] = (model.metrics[config.gate_metric] / base - 1.0) \
        if base > 0 else None
    out["gate"] = decide(model.metrics, popular.metrics, published_block, config)
    report["protocol"] = "users"
    out["curves"] = curves
    return out


def _session_report(sessions: Sessions, fitted: als.FitResult | None,
                    popular: PopularRecommender, train_config: TrainConfig, config: EvalConfig,
                    out: dict[str, Any]) -> dict[str, Any]:
    """eval.json's `sessions` block; scores the session models when there are cases."""
    item_confidence = C.one_event_confidence(train_config.confidence)
    block: dict[str, Any] = {
        "status": "ok" if fitted is not None and sessions.m >= config.min_test_users
        else "insufficient_data",
        "counts": sessions.counts, "max_context": config.session_max_context,
        "item_confidence": item_confidence,
        "models": dict.fromkeys(SESSION_MODELS), "lift_over_most_popular": None,
    }
    if fitted is None or sessions.m == 0:
        return block
    scored = score_sessions(sessions, np.asarray(fitted.model.item_factors),
                            train_config.regularization, item_confidence, popular, config.cutoffs)
    block["models"] = {name: s.metrics for name, s in scored.items()}
    base = scored["most_popular"].metrics[config.gate_metric]
    if base > 0:
        block["lift_over_most_popular"] = scored["fold_in"].metrics[config.gate_metric] / base - 1
    out["session_curves"] = {f"session_{name}": s.curves for name, s in scored.items()}
    out["durations"].update({f"score_session_{name}": s.seconds for name, s in scored.items()})
    return block


def score_published(bundle: artifacts.ModelBundle, split: Split, train_config: TrainConfig,
                    config: EvalConfig, device: str, candidate: Scored) -> tuple[Scored, str]:
    last = (bundle.meta.get("data") or {}).get("last_event")
    last_ts = pd.Timestamp(last) if last else None
    if last_ts is not None and last_ts.tz_localize(None) < \
            pd.Timestamp(split.holdout_start).tz_convert(None):
        mapped = MappedRecommender(bundle, split.train.user_ids, split.train.item_ids)
        return score(mapped, split, config.cutoffs), "artifact"
    published_config = bundle.train_config(train_config.as_dict())
    if published_config.replace(device=train_config.device, track_loss=train_config.track_loss) \
            == train_config:
        return candidate, "refit"  # same configuration on the same split: the same model
    interactions, fitted = fit_on_split(split, published_config, device)
    if interactions is split.train:
        return score(ALSRecommender(fitted.model), split, config.cutoffs), "refit"
    refit = artifacts.ModelBundle(model=fitted.model, user_ids=interactions.user_ids,
                                  item_ids=interactions.item_ids,
                                  user_items=interactions.strength)
    mapped = MappedRecommender(refit, split.train.user_ids, split.train.item_ids)
    return score(mapped, split, config.cutoffs), "refit"


def check_models(models_dir: Path, config: TrainConfig, run_date: dt.date) -> None:
    """models/ must be the model of this configuration and day: the gate speaks for it."""
    meta = artifacts.read_meta(models_dir)
    current = json.loads(json.dumps(config.as_dict()))
    if meta.get("params") != current:
        changed = sorted(k for k in set(current) | set(meta.get("params") or {})
                         if (meta.get("params") or {}).get(k) != current.get(k))
        raise ConfigError(f"{models_dir} was trained with other train params ({changed}) than "
                          f"params.yaml: run train first")
    if meta.get("run_date") != run_date.isoformat():
        raise ConfigError(f"{models_dir} was trained for run.date {meta.get('run_date')}, "
                          f"params.yaml has {run_date}: run train first")


def write_plots(path: Path, curves: dict[str, dict[str, np.ndarray]], K: int) -> None:
    """One row per k: <model>_<metric> columns, for dvc plots (see dvc.yaml `plots:`)."""
    columns = [f"{model}_{metric}" for model in ("als", "most_popular", "published")
               for metric in ("recall", "ndcg", "precision")
               if model in curves or model != "published"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["k", *columns])
        if curves:
            for k in range(1, K + 1):
                row = []
                for col in columns:
                    model, metric = col.rsplit("_", 1)
                    row.append(f"{float(curves[model][metric][k - 1]):.6f}")
                writer.writerow([k, *row])
    tmp.replace(path)
