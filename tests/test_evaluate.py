"""The evaluate stage: the out-of-time split, baselines, the published model, the gate, outputs."""

import csv
import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dailyrec.core import paths, settings
from dailyrec.core import schema as S
from dailyrec.core.errors import ConfigError
from dailyrec.model import artifacts, training
from dailyrec.model import evaluation as E
from dailyrec.model import gate as GATE
from dailyrec.model import scoring as SCO
from dailyrec.model import split as SPL
from dailyrec.model.recommender import PopularRecommender, Recommender
from dailyrec.model import settings as model_settings
from dailyrec.model.settings import ConfidenceConfig
from stages import evaluate as eval_stage
from stages import train as T
from tests.clean_events import frame
from tests.params import of, project_params
from tests.modeling_workspace import FIRST_DAY, make_params, make_workspace

UTC = dt.timezone.utc
HOLDOUT = dt.datetime(2026, 11, 14, tzinfo=UTC)
END = dt.datetime(2026, 11, 15, tzinfo=UTC)
CONF = ConfidenceConfig(event_weights={"view": 1.0, "click": 2.0, "add_to_cart": 4.0,
                                         "purchase": 8.0},
                          decay_half_life_days=0.0, transform="linear", alpha=1.0, eps=1.0,
                          quantity_transform="log", quantity_cap=1000.0)
SPLIT_EVENTS = [
    ("u1", "i1", "view", "2026-11-10T00:00:00Z"),
    ("u1", "i2", "click", "2026-11-12T00:00:00Z"),
    ("u2", "i1", "view", "2026-11-13T00:00:00Z"),
    ("u2", "i3", "view", "2026-11-13T05:00:00Z"),
    # the held-out day
    ("u1", "i2", "view", "2026-11-14T10:00:00Z"),      # u1 had i2 already: not a new item
    ("u1", "i3", "purchase", "2026-11-14T11:00:00Z"),  # new for u1
    ("u1", "i3", "view", "2026-11-14T12:00:00Z"),      # ... twice: weight 2 in the EPR
    ("u2", "i2", "click", "2026-11-14T13:00:00Z"),     # new for u2
    ("u3", "i1", "view", "2026-11-14T14:00:00Z"),      # u3 unknown before the holdout
    ("u1", "i9", "view", "2026-11-14T15:00:00Z"),      # i9 not in the catalogue
    ("u1", "i1", "view", "2026-11-15T01:00:00Z"),      # after the window
]


def test_split_holds_out_new_items_of_known_users_and_counts_the_rest():
    split = SPL.make_split(S.to_table(frame(SPLIT_EVENTS)), CONF, HOLDOUT, END, S.EVENT_TYPES)
    assert split.train.user_ids.tolist() == ["u1", "u2"]
    assert split.train.item_ids.tolist() == ["i1", "i2", "i3"]
    assert split.users.tolist() == [0, 1]
    assert split.truth.toarray().tolist() == [[0, 0, 2], [0, 1, 0]]
    assert split.counts == {
        "events_before_holdout": 4, "holdout_events": 6, "holdout_relevant_events": 6,
        "events_after_window": 1, "catalogue_items": 3, "known_users": 2, "holdout_users": 3,
        "holdout_users_unknown": 1, "holdout_events_unknown_item": 1,
        "holdout_pairs_already_had": 1, "evaluated_users": 2, "truth_pairs": 2}


def test_split_is_the_same_from_sliced_time_ordered_events_and_from_any_order():
    """data/clean is in time order, so make_split slices it; events in another order are
    filtered: the same split either way, with events exactly at the holdout start in the holdout
    and those exactly at the window end after it."""
    rows = SPLIT_EVENTS + [("u2", "i2", "view", "2026-11-14T00:00:00Z"),
                           ("u2", "i3", "view", "2026-11-15T00:00:00Z")]
    in_order = sorted(rows, key=lambda r: r[3])
    splits = [SPL.make_split(S.to_table(frame(r)), CONF, HOLDOUT, END, S.EVENT_TYPES)
              for r in (in_order, in_order[::-1])]
    assert splits[0].counts == splits[1].counts
    assert splits[0].counts["holdout_events"] == 7 and splits[0].counts["events_after_window"] == 2
    assert (splits[0].truth != splits[1].truth).nnz == 0
    assert (splits[0].train.strength != splits[1].train.strength).nnz == 0


def test_only_relevant_event_types_make_the_truth():
    split = SPL.make_split(S.to_table(frame(SPLIT_EVENTS)), CONF, HOLDOUT, END, ("purchase",))
    assert split.users.tolist() == [0] and split.truth.toarray().tolist() == [[0, 0, 1]]


def evaluate(params: settings.Params, published=None) -> dict:
    """evaluate's work on the workspace's data and params (what the stage does before writing)."""
    return E.evaluate(model_settings.train(params), model_settings.evaluation(params),
                      settings.run_date(params), settings.window_end(params),
                      training.read_events(paths.CLEAN_DIR), published=published)


def test_most_popular_scores_distinct_users_and_leaves_out_what_users_had():
    split = SPL.make_split(S.to_table(frame(SPLIT_EVENTS)), CONF, HOLDOUT, END, S.EVENT_TYPES)
    # i1 has 2 users, i2 and i3 one each (tie -> lower index first): order i1, i2, i3.
    popular = PopularRecommender(split.train.strength)
    assert popular.score(np.array([0])).tolist() == [[3.0, 2.0, 1.0]]
    scored = SCO.score(popular, split, [1, 2])
    # u1 had i1, i2 -> gets [i3]: a hit. u2 had i1, i3 -> gets [i2]: a hit.
    assert scored.metrics["hit_rate_at_1"] == 1.0 and scored.metrics["precision_at_2"] == 0.5
    assert scored.metrics["mean_percentile_rank"] == 0.0
    assert scored.metrics["coverage_at_1"] == pytest.approx(2 / 3)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("DAILYREC_MLFLOW", "off")
    root = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(root)
    assert T.main([]) == 0
    return root


def read(path):
    return json.loads(open(path).read())


def test_evaluate_writes_metrics_gate_and_plots(workspace, capsys):
    assert eval_stage.main([]) == 0
    report, gate = read("metrics/eval.json"), read("metrics/gate.json")
    assert report["status"] == "ok" and report["holdout_start"] == "2026-11-14T00:00:00+00:00"
    for k in (10, 20):
        for name in ("precision", "recall", "map", "ndcg", "hit_rate", "coverage"):
            assert 0.0 <= report[f"{name}_at_{k}"] <= 1.0
            assert 0.0 <= report["baselines"]["most_popular"][f"{name}_at_{k}"] <= 1.0
    assert 0.0 < report["mean_percentile_rank"] < 0.5  # better than random
    assert report["baselines"]["published"] is None
    assert report["counts"]["evaluated_users"] >= 20
    # The simulated users have tastes: ALS must beat most-popular on this data.
    assert report["ndcg_at_20"] > report["baselines"]["most_popular"]["ndcg_at_20"]
    assert report["lift_over_most_popular"] == pytest.approx(gate["lift"])
    assert gate["passed"] is True and gate["reason"].startswith("passed: ndcg_at_20")
    assert "no published model" in gate["reason"]
    with open("metrics/plots/eval_at_k.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["k"]) for r in rows] == list(range(1, 21))
    assert float(rows[19]["als_recall"]) == pytest.approx(report["recall_at_20"], abs=1e-6)
    assert float(rows[9]["most_popular_ndcg"]) == pytest.approx(
        report["baselines"]["most_popular"]["ndcg_at_10"], abs=1e-6)
    assert "gate PASSED" in capsys.readouterr().out


def test_gate_fails_when_the_lift_over_most_popular_is_too_small(workspace):
    make_params(workspace / "params.yaml", dt.date(2026, 11, 15), eval={"min_lift": 10.0})
    assert eval_stage.main([]) == 0
    gate = read("metrics/gate.json")
    assert gate["passed"] is False and "below the required +1000.0%" in gate["reason"]


def test_no_history_before_the_holdout_fails_the_gate_with_the_reason(workspace):
    make_params(workspace / "params.yaml", dt.date(2026, 11, 15), eval={"holdout_days": 14})
    assert eval_stage.main([]) == 0
    report, gate = read("metrics/eval.json"), read("metrics/gate.json")
    assert report["status"] == "insufficient_data" and gate["passed"] is False
    assert "not enough history" in gate["reason"]


def test_models_of_another_configuration_are_refused(workspace, capsys):
    make_params(workspace / "params.yaml", dt.date(2026, 11, 15), train={"factors": 9})
    assert eval_stage.main([]) == 2
    assert "other train params (['factors'])" in capsys.readouterr().err


def test_published_artifact_that_never_saw_the_holdout_is_scored_as_is(workspace, tmp_path):
    """Yesterday's model (same config, data up to the holdout) is the candidate itself: equal scores."""
    params = settings.load()
    before = pq.read_table("data/clean")
    before = before.filter(pc.less(before["ts"], pa.scalar(HOLDOUT, before["ts"].type)))
    pq.write_table(before, tmp_path / "before.parquet")
    yesterday = dt.date(2026, 11, 14)
    training.train(model_settings.train(params), yesterday, settings.day_window(yesterday)[1],
                   tmp_path / "before.parquet", tmp_path / "published")
    bundle = artifacts.load(tmp_path / "published")
    out = evaluate(params, published=lambda: (bundle, {"model_version": 7, "run_id": "r"}))
    published = out["report"]["baselines"]["published"]
    assert published["mode"] == "artifact" and published["model_version"] == 7
    assert published["ndcg_at_20"] == pytest.approx(out["report"]["ndcg_at_20"])
    assert published["mean_percentile_rank"] == pytest.approx(out["report"]["mean_percentile_rank"])
    assert out["gate"]["drop"] == pytest.approx(0.0, abs=1e-9) and out["gate"]["passed"]


def test_published_model_that_saw_the_holdout_is_refitted_on_the_split(workspace):
    params = settings.load()
    bundle = artifacts.load("models")  # trained through the held-out day: it knows the answers
    bundle.meta["params"]["factors"] = 4
    out = evaluate(params, published=lambda: (bundle, {"model_version": 3, "run_id": "r"}))
    published = out["report"]["baselines"]["published"]
    assert published["mode"] == "refit"
    assert published["ndcg_at_20"] != out["report"]["ndcg_at_20"]
    # the same configuration refitted is the candidate itself
    bundle.meta["params"]["factors"] = model_settings.train(params).factors
    same = evaluate(params, published=lambda: (bundle, {"model_version": 3, "run_id": "r"}))
    assert same["report"]["baselines"]["published"]["ndcg_at_20"] == \
        same["report"]["ndcg_at_20"]


def test_gate_drop_below_the_published_model():
    config = model_settings.evaluation(of(project_params(**{"eval.max_drop": 0.05,
                                                           "eval.min_lift": 0.1})))
    model, popular = {"ndcg_at_20": 0.30}, {"ndcg_at_20": 0.20}
    ok = GATE.decide(model, popular, {"ndcg_at_20": 0.31, "model_version": 4, "mode": "artifact"},
                  config)
    assert ok["passed"] and ok["drop"] == pytest.approx(1 - 0.30 / 0.31)
    bad = GATE.decide(model, popular, {"ndcg_at_20": 0.40, "model_version": 4, "mode": "artifact"},
                   config)
    assert not bad["passed"] and "falls +25.0% below published v4 (artifact)" in bad["reason"]
    assert bad["lift"] == pytest.approx(0.5)


@pytest.mark.parametrize("section, message", [
    ({"holdout_days": 0}, "eval.holdout_days must be an integer >= 1"),
    ({"gate_metric": "mean_percentile_rank"}, "eval.gate_metric must be one of"),
    ({"relevant_event_types": ["hover"]}, "eval.relevant_event_types"),
    ({"max_drop": -1}, "eval.max_drop must be a number >= 0"),
])
def test_bad_eval_params_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        model_settings.evaluation(of(project_params(**{f"eval.{k}": v
                                                      for k, v in section.items()})))


def test_recall_curve_is_monotone_and_matches_the_cutoffs(workspace):
    out = evaluate(settings.load())
    recall = out["curves"]["als"]["recall"]
    assert np.all(np.diff(recall) >= 0) and recall[9] == out["report"]["recall_at_10"]
    assert FIRST_DAY.isoformat() == "2026-11-01"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_most_popular_ranked_from_the_history_alone_equals_the_dense_ranking(seed, monkeypatch):
    """score() ranks most-popular without a users x catalogue matrix (at scale it would not fit in
    memory): the lists, every metric and the percentile ranks are exactly those of the dense path,
    heavy users (more items than a batch row is wide), users who had nearly everything and ties in
    popularity included."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 300, 60
    rows = []
    for u in range(n_users):
        had = 58 if u % 97 == 0 else int(rng.integers(1, 12))  # a few users with nearly all
        for i in rng.choice(n_items, size=had, replace=False):
            rows.append((f"u{u}", f"i{i}", "view", "2026-11-10T00:00:00Z"))
        for i in rng.choice(n_items, size=int(rng.integers(1, 4)), replace=False):
            rows.append((f"u{u}", f"i{i}", "click", "2026-11-14T10:00:00Z"))
    split = SPL.make_split(S.to_table(frame(rows)), CONF, HOLDOUT, END, S.EVENT_TYPES)
    popular = PopularRecommender(split.train.strength)
    assert len(set(popular.counts.tolist())) < n_items  # ties in popularity
    dense_class = type("Dense", (Recommender,), {
        "score": lambda self, r: popular.score(r)})
    cutoffs = [1, 5, 20]
    for cells in (8_000_000, 64):  # one batch; many tiny batches
        sparse = SCO.score(popular, split, cutoffs, batch_cells=cells)
        dense = SCO.score(dense_class(), split, cutoffs, batch_cells=cells)
        assert sparse.metrics == dense.metrics
        for name in sparse.curves:
            assert np.array_equal(sparse.curves[name], dense.curves[name], equal_nan=True)


def test_mapped_published_model_scores_known_pairs_ranks_unknown_users_and_drops_unknown_items():
    """The published baseline scored over the split's users and catalogue (MappedRecommender):
    users and items it knows get its own scores (the bits of its known users' factors times its
    known items' factors, one multiply), a user it does not know its most-popular order, an item
    it does not know -inf; whether it knows every item (the usual day: written in place) or not."""
    from dailyrec.model.recommender import MappedRecommender
    from tests import tiny_models as tm

    bundle = tm.bundle(n_users=50, n_items=30, seed=4)
    rng = np.random.default_rng(8)
    users = np.concatenate([bundle.user_ids[rng.permutation(50)[:40]], ["new-1", "new-2"]])
    users = users[rng.permutation(len(users))]
    user_at = {u: i for i, u in enumerate(bundle.user_ids)}
    item_at = {it: j for j, it in enumerate(bundle.item_ids)}
    popular = PopularRecommender(bundle.user_items).ranks
    for items in (bundle.item_ids[rng.permutation(30)],  # every item known
                  np.concatenate([bundle.item_ids[rng.permutation(30)[:25]], ["new-a", "new-b"]])):
        mapped = MappedRecommender(bundle, users, items)
        rows = rng.permutation(len(users))
        for batch in (rows, rows[users[rows] != "new-1"][:30]):  # with and without unknown users
            got = mapped.score(batch)
            assert got.dtype == np.float32 and got.shape == (len(batch), len(items))
            known_rows = [r for r, u in enumerate(users[batch]) if u in user_at]
            known_cols = [c for c, it in enumerate(items) if it in item_at]
            dots = bundle.model.user_factors[[user_at[u] for u in users[batch][known_rows]]] @ \
                bundle.model.item_factors[[item_at[items[c]] for c in known_cols]].T
            want = np.full(got.shape, -np.inf, dtype=np.float32)
            want[:, known_cols] = popular[[item_at[items[c]] for c in known_cols]]
            want[np.ix_(known_rows, known_cols)] = dots
            assert len(known_rows) < len(batch) or batch is not rows
            np.testing.assert_array_equal(got, want)
