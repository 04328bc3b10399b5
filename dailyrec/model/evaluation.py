"""Evaluation: how good is today's configuration, out of time, against baselines; and the gate.

    input   data/clean/events.parquet, models/ (its meta.json must match params.yaml's train section),
            params.yaml (run.date, train, eval, mlflow), metrics/mlflow.json (the train run)
    output  metrics/eval.json          ALS metrics at K=20 and eval.k, counts, a `baselines` block
            metrics/gate.json          {"passed", "reason", ...}: publish obeys `passed`
            metrics/plots/eval_at_k.csv  recall/ndcg/precision at k = 1..max(20, eval.k) per model

The split: the last eval.holdout_days days of the window (the days before run.date) are held out.
The same train configuration is fitted on the events before them (recency decay measured from the
holdout start, as if it were run.date), and scored on the held-out users' new interactions: items
they had not had before the holdout, that the catalogue (items seen before it) contains. Users
unknown before the holdout cannot be scored by any model and are only counted. Metric definitions:
dailyrec.model.ranking. Every model is scored through the
one Recommender interface (dailyrec.model.recommender).

Baselines, on the same split, users and truth:
- most_popular: items by number of distinct users before the holdout.
- published: the registry version carrying mlflow.alias (what publish serves), when there is one.
  If its training data ended before the holdout start it never saw the held-out days, and the
  artefact itself is scored ("artifact" mode: what users were actually served; users it does not
  know get its most-popular list, items it does not know rank last). Otherwise (eval.holdout_days > 1,
  or re-running a past day) scoring it would leak the answers, so its configuration (meta.json params)
  is refitted on the split instead ("refit" mode: compares configurations only). The mode is recorded.

The gate: the model's eval.gate_metric must beat most-popular by eval.min_lift (relative), and must not
fall more than eval.max_drop (relative) below the published model. Too little data (no days before the
holdout, or fewer than eval.min_test_users users to score) fails the gate with that reason.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from dailyrec.errors import ConfigError
from dailyrec.files import tmp_path
from dailyrec.model import als, artifacts
from dailyrec.model import confidence as C
from dailyrec.model import ranking as R
from dailyrec.model.recommender import (ALSRecommender, MappedRecommender, PopularRecommender,
                                        Recommender)
from dailyrec.settings.evaluation import EvalConfig
from dailyrec.settings.model import ConfidenceConfig, TrainConfig, train_from_dict


# --- the split ----------------------------------------------------------------------------------

@dataclass
class Split:
    holdout_start: dt.datetime
    window_end: dt.datetime
    before: pa.Table  # events before the holdout (kept to refit other configurations)
    confidence: ConfidenceConfig  # what `train` was aggregated with
    train: C.Interactions  # strength matrix of `before`, decay measured from holdout_start
    users: np.ndarray  # rows of train.user_ids that are evaluated (|T_u| >= 1)
    truth: sp.csr_matrix  # len(users) x catalogue: relevant holdout events per new (user, item)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.train.item_ids)


def make_split(events: pa.Table, confidence: ConfidenceConfig, holdout_start: dt.datetime,
               window_end: dt.datetime, relevant_types: tuple[str, ...]) -> Split:
    ts = events["ts"]
    start = pa.scalar(holdout_start, pa.timestamp("us", tz="UTC"))
    end = pa.scalar(window_end, pa.timestamp("us", tz="UTC"))
    before = events.filter(pc.less(ts, start))
    in_holdout = pc.and_(pc.greater_equal(ts, start), pc.less(ts, end))
    holdout = events.filter(in_holdout)
    after = int(pc.sum(pc.greater_equal(ts, end)).as_py() or 0)
    train = C.aggregate(before, confidence, holdout_start)
    relevant = holdout.filter(pc.is_in(holdout["event_type"],
                                       value_set=pa.array(list(relevant_types))))
    user_rows = pc.index_in(relevant["user_id"], value_set=pa.array(train.user_ids, pa.string()))
    item_cols = pc.index_in(relevant["item_id"], value_set=pa.array(train.item_ids, pa.string()))
    u = user_rows.to_numpy(zero_copy_only=False)
    i = item_cols.to_numpy(zero_copy_only=False)
    u = np.where(np.isnan(u), -1, u).astype(np.int64) if u.dtype.kind == "f" else u.astype(np.int64)
    i = np.where(np.isnan(i), -1, i).astype(np.int64) if i.dtype.kind == "f" else i.astype(np.int64)
    known_user, known_item = u >= 0, i >= 0
    both = known_user & known_item
    shape = train.shape
    counts_ui = sp.coo_matrix((np.ones(int(both.sum())), (u[both], i[both])), shape=shape).tocsr()
    counts_ui.sum_duplicates()
    had = counts_ui.multiply(train.strength > 0).tocsr()
    new = (counts_ui - had).tocsr()
    new.eliminate_zeros()
    new.sort_indices()
    users = np.flatnonzero(np.diff(new.indptr))
    holdout_users = pc.count_distinct(relevant["user_id"]).as_py() if relevant.num_rows else 0
    unknown_users = pc.count_distinct(relevant.filter(pa.array(~known_user))["user_id"]).as_py() \
        if (~known_user).any() else 0
    return Split(
        holdout_start=holdout_start, window_end=window_end, before=before,
        confidence=confidence, train=train,
        users=users, truth=new[users],
        counts={
            "events_before_holdout": before.num_rows,
            "holdout_events": holdout.num_rows,
            "holdout_relevant_events": relevant.num_rows,
            "events_after_window": after,
            "catalogue_items": shape[1],
            "known_users": shape[0],
            "holdout_users": int(holdout_users),
            "holdout_users_unknown": int(unknown_users),
            "holdout_events_unknown_item": int((known_user & ~known_item).sum()),
            "holdout_pairs_already_had": int(had.nnz),
            "evaluated_users": int(len(users)),
            "truth_pairs": int(new.nnz),
        })

# --- scoring ------------------------------------------------------------------------------------

@dataclass
class Scored:
    metrics: dict[str, float]
    curves: dict[str, np.ndarray]  # metric -> values at k = 1..K
    seconds: float


def score(model: Recommender, split: Split, cutoffs: list[int], batch_cells: int = 8_000_000
          ) -> Scored:
    """Rank the catalogue for every evaluated user (their earlier items left out) and measure."""
    start = time.perf_counter()
    K = max(cutoffs)
    n, n_items = len(split.users), split.n_items
    history = split.train.strength
    truth = split.truth.tocsr()
    recommended = np.full((n, K), -1, dtype=np.int64)
    ranks = np.empty(truth.nnz, dtype=np.float64)
    batch = max(1, batch_cells // max(1, n_items))
    for lo in range(0, n, batch):  # batches of users
        hi = min(n, lo + batch)
        rows = split.users[lo:hi]
        scores = model.score(rows)
        had = history[rows].tocoo()
        scores[had.row, had.col] = np.nan
        recommended[lo:hi] = R.top_k(scores, K)
        part = truth[lo:hi].tocoo()
        base = truth.indptr[lo]
        # tocoo of a sorted CSR keeps CSR order, so the ranks line up with truth.data.
        ranks[base:base + part.nnz] = R.percentile_ranks(scores, part.row, part.col)
    hit = R.hits(recommended, truth)
    sizes = np.diff(truth.indptr)
    curves = R.curves(hit, sizes)
    metrics: dict[str, float] = {}
    for c in cutoffs:
        for name in R.METRICS:
            metrics[f"{name}_at_{c}"] = float(curves[name][c - 1])
        metrics[f"coverage_at_{c}"] = R.coverage(recommended, c, n_items)
    metrics["mean_percentile_rank"] = R.expected_percentile_rank(ranks, truth.data)
    return Scored(metrics=metrics, curves=curves, seconds=time.perf_counter() - start)


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

def decide(model: dict[str, float], popular: dict[str, float],
           published: dict[str, Any] | None, config: EvalConfig) -> dict[str, Any]:
    metric = config.gate_metric
    value, base = model[metric], popular[metric]
    lift = (value / base - 1.0) if base > 0 else (float("inf") if value > 0 else 0.0)
    gate: dict[str, Any] = {"metric": metric, "value": value, "most_popular": base,
                            "lift": lift if np.isfinite(lift) else None, "min_lift": config.min_lift,
                            "published": None, "published_version": None, "drop": None,
                            "max_drop": config.max_drop}
    reasons, passed = [], True
    if lift >= config.min_lift:
        reasons.append(f"{metric} {value:.4f} beats most-popular {base:.4f} by {_pct(lift)} "
                       f"(needs {_pct(config.min_lift)})")
    else:
        passed = False
        reasons.append(f"{metric} {value:.4f} vs most-popular {base:.4f}: lift {_pct(lift)} is "
                       f"below the required {_pct(config.min_lift)}")
    if published is not None:
        ref = published[metric]
        drop = (1.0 - value / ref) if ref > 0 else 0.0
        gate.update(published=ref, published_version=published.get("model_version"), drop=drop)
        label = f"published v{published.get('model_version')} ({published.get('mode')})"
        if drop <= config.max_drop:
            reasons.append(f"{_pct(0.0 - drop + 0.0)} vs {label} {ref:.4f} (max drop {_pct(config.max_drop)})")
        else:
            passed = False
            reasons.append(f"falls {_pct(drop)} below {label} {ref:.4f}; at most "
                           f"{_pct(config.max_drop)} allowed")
    else:
        reasons.append("no published model to compare with")
    gate["passed"] = passed
    gate["reason"] = ("passed: " if passed else "failed: ") + "; ".join(reasons)
    return gate


def _pct(x: float) -> str:
    return "inf" if not np.isfinite(x) else f"{x * 100:+.1f}%"

# --- evaluating a configuration ------------------------------------------------------------------

def evaluate(train_config: TrainConfig, config: EvalConfig, run_date: dt.date,
             window_end: dt.datetime, events: pa.Table, published=None) -> dict[str, Any]:
    """Everything but the writing. `published`: (bundle, info) or None."""
    holdout_start = window_end - dt.timedelta(days=config.holdout_days)
    device = als.resolve_device(train_config.device)
    split = make_split(events, train_config.confidence, holdout_start, window_end,
                       config.relevant_event_types)
    report: dict[str, Any] = {
        "run_date": run_date.isoformat(), "holdout_start": holdout_start.isoformat(),
        "holdout_days": config.holdout_days, "k": config.k, "gate_metric": config.gate_metric,
        "counts": split.counts, "device": device,
    }
    out: dict[str, Any] = {"report": report, "curves": {}, "fit_losses": [], "durations": {}}
    problem = None
    if split.train.strength.nnz == 0:
        problem = (f"not enough history: no events before the holdout start "
                   f"{holdout_start.date()} (eval.holdout_days={config.holdout_days})")
    elif len(split.users) < config.min_test_users:
        problem = (f"too few users to evaluate: {len(split.users)} held-out users with new items, "
                   f"eval.min_test_users={config.min_test_users}")
    if problem:
        report.update(status="insufficient_data", baselines={"most_popular": None,
                                                             "published": None},
                      lift_over_most_popular=None)
        out["gate"] = {"passed": False, "reason": f"failed: {problem}", "metric":
                       config.gate_metric, "value": None, "most_popular": None, "lift": None,
                       "min_lift": config.min_lift, "published": None, "published_version": None,
                       "drop": None, "max_drop": config.max_drop}
        return out
    interactions, fitted = fit_on_split(split, train_config, device)
    out["fit_losses"] = fitted.losses
    out["durations"]["fit"] = fitted.seconds
    model = score(ALSRecommender(fitted.model), split, config.cutoffs)
    popular = score(PopularRecommender(split.train.strength), split, config.cutoffs)
    out["durations"].update(score_model=model.seconds, score_most_popular=popular.seconds)
    report.update(status="ok", **model.metrics)
    curves = {"als": model.curves, "most_popular": popular.curves}
    published_block = None
    if published is not None:
        bundle, info = published
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
    out["curves"] = curves
    return out


def score_published(bundle: artifacts.ModelBundle, split: Split, train_config: TrainConfig,
                    config: EvalConfig, device: str, candidate: Scored) -> tuple[Scored, str]:
    last = (bundle.meta.get("data") or {}).get("last_event")
    last_ts = pd.Timestamp(last) if last else None
    if last_ts is not None and last_ts.tz_localize(None) < \
            pd.Timestamp(split.holdout_start).tz_convert(None):
        mapped = MappedRecommender(bundle, split.train.user_ids, split.train.item_ids)
        return score(mapped, split, config.cutoffs), "artifact"
    published_config = train_from_dict(bundle.meta.get("params") or {}, train_config.as_dict())
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
    meta_file = Path(models_dir) / artifacts.META_FILE
    if not meta_file.exists():
        raise ConfigError(f"{meta_file} not found: run train first")
    meta = json.loads(meta_file.read_text())
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
