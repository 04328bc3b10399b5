"""evaluate's session protocol (visitors who do not return): which visitors become cases and how
they split, fold-in against implicit's own recalculate_user, and the gate deciding on sessions
when the held-out day's visitors are all new (through the stage, MLflow and the daily report)."""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from dailyrec.core import metrics, settings
from dailyrec.ops import report
from dailyrec.core import schema as S
from dailyrec.model import confidence as C
from dailyrec.model import evaluation as E
from dailyrec.model import sessions as SES
from dailyrec.model import split as SPL
from dailyrec.model import training
from dailyrec.model.recommender import PopularRecommender
from dailyrec.model import settings as model_settings
from dailyrec.ops.settings import ReportSettings
from stages import evaluate as eval_stage
from stages import train as T
from tests.clean_events import frame, human_events, write_clean
from tests.modeling_workspace import FIRST_DAY, make_workspace
from tests.params import of, project_params
from tests.test_evaluate import CONF

UTC = dt.UTC
HOLDOUT = dt.datetime(2026, 11, 14, tzinfo=UTC)
END = dt.datetime(2026, 11, 15, tzinfo=UTC)
RUN_DATE = dt.date(2026, 11, 15)

SESSION_EVENTS = [
    # before the holdout: the catalogue is i1..i5 (columns 0..4); u1 and u2 are known
    ("u1", "i5", "view", "2026-11-10T00:00:00Z"),
    ("u1", "i1", "view", "2026-11-11T00:00:00Z"),
    ("u2", "i2", "view", "2026-11-12T00:00:00Z"),
    ("u2", "i3", "view", "2026-11-12T01:00:00Z"),
    ("u2", "i4", "click", "2026-11-13T00:00:00Z"),
    # the held-out day (not in time order in the file)
    ("v1", "i3", "view", "2026-11-14T12:00:00Z"),
    ("v1", "i1", "view", "2026-11-14T10:00:00Z"),
    ("v1", "i2", "click", "2026-11-14T11:00:00Z"),
    ("v1", "i1", "view", "2026-11-14T11:30:00Z"),      # i1 again: counted once, at its first
    ("v1", "i4", "view", "2026-11-14T13:00:00Z"),
    ("v2", "i3", "view", "2026-11-14T09:00:00Z"),      # same second as the next: file order
    ("v2", "i2", "view", "2026-11-14T09:00:00Z"),
    ("v2", "i5", "view", "2026-11-14T09:30:00Z"),
    ("v3", "i1", "view", "2026-11-14T08:00:00Z"),      # one relevant event ...
    ("v3", "i2", "purchase", "2026-11-14T08:10:00Z"),  # ... a purchase is not relevant here
    ("v4", "i2", "view", "2026-11-14T08:00:00Z"),      # one item, twice
    ("v4", "i2", "click", "2026-11-14T08:01:00Z"),
    ("v5", "i9", "view", "2026-11-14T08:00:00Z"),      # i9 is not in the catalogue
    ("v5", "i2", "view", "2026-11-14T08:01:00Z"),
    ("v6", "i5", "view", "2026-11-14T07:00:00Z"),      # 5 items: ceil(5/2) = 3, capped at 2
    ("v6", "i4", "view", "2026-11-14T07:01:00Z"),
    ("v6", "i3", "view", "2026-11-14T07:02:00Z"),
    ("v6", "i2", "view", "2026-11-14T07:03:00Z"),
    ("v6", "i1", "view", "2026-11-14T07:04:00Z"),
    ("u1", "i4", "view", "2026-11-14T06:00:00Z"),      # a returning visitor
    ("u1", "i8", "view", "2026-11-14T06:01:00Z"),      # not in the catalogue: left out
    ("u1", "i5", "view", "2026-11-14T06:02:00Z"),      # had before: still a target here
    ("v1", "i5", "view", "2026-11-15T01:00:00Z"),      # after the window
]


def test_cases_their_context_and_targets_and_the_visitors_skipped():
    split = SPL.make_split(S.to_table(frame(SESSION_EVENTS)), CONF, HOLDOUT, END,
                         ("view", "click"))
    assert split.train.item_ids.tolist() == ["i1", "i2", "i3", "i4", "i5"]
    sessions = SES.make_sessions(split, max_context=2)
    assert sessions.visitor_ids.tolist() == ["u1", "v1", "v2", "v6"]
    assert sessions.context.tolist() == [
        [3, -1],  # u1: i4 | i5
        [0, 1],   # v1: i1 i2 | i3 i4 (time order, not file order)
        [2, 1],   # v2: i3 i2 (a tie in time: file order) | i5
        [4, 3],   # v6: i5 i4 (capped at 2) | i3 i2 i1
    ]
    assert [row.indices.tolist() for row in sessions.truth] == [[4], [2, 3], [4], [0, 1, 2]]
    assert sessions.truth.data.tolist() == [1.0] * 7
    assert sessions.returning.tolist() == [True, False, False, False]
    assert sessions.counts == {
        "holdout_visitors": 7, "cases": 4, "returning_cases": 1, "context_items": 7,
        "target_items": 7, "context_capped": 1,
        "skipped": {"fewer_than_2_events": 1, "no_new_later_item": 1, "unknown_items": 1}}
    # without the cap, v6's context is its first 3 items
    uncapped = SES.make_sessions(split, max_context=50)
    assert uncapped.context.tolist()[3] == [4, 3, 2]
    assert uncapped.counts["context_capped"] == 0


def test_no_holdout_events_no_cases():
    before = [e for e in SESSION_EVENTS if e[3] < "2026-11-14"]
    split = SPL.make_split(S.to_table(frame(before)), CONF, HOLDOUT, END, S.EVENT_TYPES)
    sessions = SES.make_sessions(split, 50)
    assert sessions.m == 0 and sessions.truth.shape == (0, 5)
    assert sessions.counts["skipped"] == dict.fromkeys(SES.SKIP_REASONS, 0)


# --- fold-in against implicit's recalculate_user ----------------------------------------------

@pytest.fixture(scope="module")
def fitted_split():
    """The simulator's traffic, the train configuration of the test workspace, fitted on the
    split as evaluate does."""
    events = S.to_table(human_events(FIRST_DAY, 14, users=300, items=120, events_per_day=2000))
    train_config = model_settings.train(of(project_params(RUN_DATE, **{
        "train.factors": 8, "train.iterations": 4, "train.regularization": 0.05,
        "train.alpha": 10.0, "train.confidence": "log"})))  # the test workspace's (make_params)
    split = SPL.make_split(events, train_config.confidence, HOLDOUT, END, S.EVENT_TYPES)
    _, fitted = E.fit_on_split(split, train_config, "cpu")
    return split, train_config, fitted


def test_fold_in_metrics_equal_implicit_recalculate_user_visitor_by_visitor(fitted_split):
    split, train_config, fitted = fitted_split
    sessions = SES.make_sessions(split, 50)
    # a handful of visitors, with contexts of different lengths
    lengths = (sessions.context >= 0).sum(axis=1)
    picked = np.concatenate([np.flatnonzero(lengths == n)[:2] for n in np.unique(lengths)])[:8]
    assert len(picked) >= 5 and len(np.unique(lengths[picked])) >= 3
    subset = SES.Sessions(visitor_ids=sessions.visitor_ids[picked],
                        context=sessions.context[picked], truth=sessions.truth[picked],
                        returning=sessions.returning[picked], counts={})
    weight = C.one_event_confidence(train_config.confidence)
    scored = SES.score_sessions(subset, fitted.model.item_factors, train_config.regularization,
                              weight, PopularRecommender(split.train.strength), [10, 20])

    # the reference: one visitor at a time, through implicit itself
    n_items = split.n_items
    ndcg, recall, hit = [], [], []
    for r in range(len(picked)):
        items = [int(i) for i in subset.context[r] if i >= 0]
        row = sp.csr_matrix((np.full(len(items), weight, dtype=np.float32),
                             (np.zeros(len(items), dtype=np.int64), items)), shape=(1, n_items))
        ids, _ = fitted.model.recommend(0, row, N=20, recalculate_user=True,
                                        filter_already_liked_items=True)
        assert not set(ids.tolist()) & set(items)
        assert ids.tolist() == scored["fold_in"].recommended[r].tolist()
        targets = set(subset.truth[r].indices.tolist())
        gains = [1 / math.log2(rank + 2) for rank, item in enumerate(ids) if item in targets]
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(20, len(targets))))
        found = sum(1 for item in ids if item in targets)
        ndcg.append(sum(gains) / ideal)
        recall.append(found / len(targets))
        hit.append(1.0 if found else 0.0)
    fold_in = scored["fold_in"].metrics
    assert fold_in["ndcg_at_20"] == pytest.approx(np.mean(ndcg))
    assert fold_in["recall_at_20"] == pytest.approx(np.mean(recall))
    assert fold_in["hit_rate_at_20"] == pytest.approx(np.mean(hit))


def test_similar_items_and_most_popular_by_hand(fitted_split):
    """similar_items: the sum of cosines to the context items; most_popular: the split's order;
    neither recommends a context item."""
    split, train_config, fitted = fitted_split
    sessions = SES.make_sessions(split, 50)
    subset = SES.Sessions(visitor_ids=sessions.visitor_ids[:30], context=sessions.context[:30],
                        truth=sessions.truth[:30], returning=sessions.returning[:30], counts={})
    popular = PopularRecommender(split.train.strength)
    scored = SES.score_sessions(subset, fitted.model.item_factors, train_config.regularization,
                              1.0, popular, [20], max_batch=7)  # several batches
    y = np.asarray(fitted.model.item_factors, dtype=np.float64)
    unit = y / np.linalg.norm(y, axis=1, keepdims=True)
    for r in range(subset.m):
        items = [int(i) for i in subset.context[r] if i >= 0]
        similar = unit @ unit[items].sum(axis=0)
        expected = [i for i in np.argsort(-similar, kind="stable") if i not in items][:20]
        got = scored["similar_items"].recommended[r].tolist()
        assert got[:5] == expected[:5]  # float32 in the stage: compare the clear leaders
        assert [i for i in popular.order if i not in items][:20] == \
            scored["most_popular"].recommended[r].tolist()


# --- the gate on a day of new visitors --------------------------------------------------------

def _renamed_holdout(days: int = 14) -> pd.DataFrame:
    """The simulator's traffic with every held-out day's visitor under a new id: none returns."""
    events = human_events(FIRST_DAY, days, users=300, items=120, events_per_day=2000).copy()
    holdout = events["ts"] >= pd.Timestamp(HOLDOUT)
    events.loc[holdout, "user_id"] = "new-" + events.loc[holdout, "user_id"]
    return events


@pytest.fixture
def new_visitors(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws")
    write_clean(root, _renamed_holdout())
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("DAILYREC_MLFLOW", "on")
    assert T.main([]) == 0
    return root


def test_a_day_of_new_visitors_is_gated_on_sessions(new_visitors, capsys):
    assert eval_stage.main([]) == 0
    out = capsys.readouterr().out
    evaluation = metrics.EVAL.read(RUN_DATE)
    gate = metrics.GATE.read(RUN_DATE)
    assert evaluation is not None and gate is not None  # both in their shapes
    # the user protocol has nobody to score ...
    assert evaluation["status"] == "insufficient_data"
    assert evaluation["counts"]["evaluated_users"] == 0
    assert evaluation["counts"]["holdout_users_unknown"] == evaluation["counts"]["holdout_users"]
    # ... the session protocol has, and decides
    sessions = evaluation["sessions"]
    assert sessions["status"] == "ok" and sessions["counts"]["returning_cases"] == 0
    assert sessions["counts"]["cases"] >= 50
    fold_in, popular = sessions["models"]["fold_in"], sessions["models"]["most_popular"]
    assert set(fold_in) == set(popular) == set(sessions["models"]["similar_items"])
    assert {"ndcg_at_20", "recall_at_20", "hit_rate_at_20", "precision_at_10", "map_at_20",
            "coverage_at_20"} <= set(fold_in)
    assert fold_in["ndcg_at_20"] > popular["ndcg_at_20"]
    assert evaluation["protocol"] == gate["protocol"] == "sessions"
    assert gate["passed"] is True and gate["value"] == fold_in["ndcg_at_20"]
    assert gate["most_popular"] == popular["ndcg_at_20"]
    assert gate["lift"] == pytest.approx(sessions["lift_over_most_popular"])
    assert gate["reason"].startswith("passed: session protocol (0 returning users")
    assert "not compared in the session protocol" in gate["reason"]
    assert gate["published"] is None and gate["model_md5"]
    assert "gate PASSED" in out and "visitor sessions" in out

    # MLflow: the session metrics under their prefix, in the train run
    import mlflow

    run = mlflow.MlflowClient().get_run(metrics.MLFLOW.read()["run_id"])
    logged = run.data.metrics
    assert logged["session_fold_in_ndcg_at_20"] == pytest.approx(fold_in["ndcg_at_20"])
    assert logged["session_most_popular_ndcg_at_20"] == pytest.approx(popular["ndcg_at_20"])
    assert logged["session_similar_items_recall_at_20"] == pytest.approx(
        sessions["models"]["similar_items"]["recall_at_20"])
    assert logged["session_cases"] == sessions["counts"]["cases"]
    assert logged["gate_passed"] == 1.0 and "ndcg_at_20" not in logged
    assert run.data.tags["gate.protocol"] == "sessions"

    # the daily report: a row per session model
    built = report.build(RUN_DATE, settings=ReportSettings(main_metric="ndcg_at_20",
                                                           chart_runs=5),
                         experiment="dailyrec", reports_dir=new_visitors / "reports")
    text = built.text
    assert "Returning users: too few to score (0 with new items)" in text
    assert "(the quality gate used these: too few returning users)" in text
    [row] = [line.split() for line in text.splitlines() if line.strip().startswith("fold-in")]
    assert row[1] == f"{fold_in['ndcg_at_20']:.4f}" and row[2] == f"{fold_in['recall_at_20']:.4f}"
    assert row[-1] == f"{sessions['lift_over_most_popular']:+.1%}"
    assert "similar items" in text and "most popular" in text
    assert "the quality gate used these" in built.html("cid:x")


def test_a_day_of_returning_users_is_gated_as_before_and_reports_sessions_too(tmp_path,
                                                                               monkeypatch):
    root = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(root)
    monkeypatch.setenv("DAILYREC_MLFLOW", "off")
    assert T.main([]) == 0 and eval_stage.main([]) == 0
    evaluation, gate = metrics.EVAL.read(RUN_DATE), metrics.GATE.read(RUN_DATE)
    assert evaluation["status"] == "ok" and evaluation["protocol"] == gate["protocol"] == "users"
    assert gate["value"] == evaluation["ndcg_at_20"]
    sessions = evaluation["sessions"]
    assert sessions["status"] == "ok" and sessions["counts"]["returning_cases"] > 0
    assert sessions["models"]["fold_in"]["ndcg_at_20"] > 0


def test_too_few_users_and_sessions_fail_naming_both_counts(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws", eval={"min_test_users": 100_000})
    monkeypatch.chdir(root)
    monkeypatch.setenv("DAILYREC_MLFLOW", "off")
    assert T.main([]) == 0
    out = E.evaluate(model_settings.train(settings.load()), model_settings.evaluation(settings.load()),
                     RUN_DATE, END, training.read_events("data/clean"))
    gate, evaluation = out["gate"], out["report"]
    users = evaluation["counts"]["evaluated_users"]
    cases = evaluation["sessions"]["counts"]["cases"]
    assert users > 0 and cases > 0
    assert gate["passed"] is False and gate["protocol"] is None
    assert gate["reason"] == (f"failed: too few users to evaluate: {users} held-out users with "
                              f"new items and {cases} visitor sessions with a later item, "
                              "eval.min_test_users=100000")
    # the session metrics are still measured and reported
    assert evaluation["sessions"]["status"] == "insufficient_data"
    assert evaluation["sessions"]["models"]["fold_in"] is not None
    metrics.EVAL.check(evaluation)


def test_gate_and_eval_files_without_the_new_keys_still_read():
    """Files written before the session protocol (and other tests' examples) keep their shape."""
    from tests.metrics_examples import example

    assert "protocol" not in example("gate", RUN_DATE)
    assert "sessions" not in example("eval", RUN_DATE)
    with pytest.raises(metrics.ShapeError, match="sessions"):
        metrics.EVAL.check({**example("eval", RUN_DATE), "sessions": {"status": "ok"}})
