"""The business owner's daily report, built from metrics files in the stages' formats and an MLflow
history (a real sqlite tracking store, runs logged under the names stages/tracking.py uses), mailed
to a real SMTP server on loopback."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from dailyrec.ops import notify, report
from dailyrec.ops.settings import ReportSettings
from tests.mailbox import Mailbox
from tests.metrics_examples import write

DAY = dt.date(2026, 11, 21)
SETTINGS = ReportSettings(main_metric="ndcg_at_20", chart_runs=30)


def eval_block(ndcg: float, recall: float) -> dict:
    return {"ndcg_at_10": ndcg * 0.8, "ndcg_at_20": ndcg, "recall_at_20": recall,
            "precision_at_20": 0.03, "map_at_20": 0.04, "hit_rate_at_20": 0.4,
            "coverage_at_20": 0.3, "mean_percentile_rank": 0.12}


def todays_metrics(directory: Path) -> None:
    day = DAY.isoformat()
    # fetched = kept + duplicates + ignored + quarantined: the page adds up
    write(directory, "fetch", day, fetched=104_421, kept=101_000, duplicates=2_000, ignored=100,
          ignored_by_type={"page_ping": 100}, quarantined=1_321,
          quarantined_by_reason={"ts:future": 21, "user_id:missing": 1_300})
    write(directory, "history", day, days=7, rows=700_000, added=101_000)
    write(directory, "validation", day, warned=1)
    write(directory, "filter", day,
          window={"days": 60, "rejected_days_left_out": ["2026-11-02"]},
          input={"rows": 96_175}, output={"rows": 95_500, "users": 19_800, "items": 4_900},
          removed={"rows": 675, "share": 0.007, "bot_or_internal_users": 31},
          rules={"crawler_ua": {"rows": 412, "users": 9, "enabled": True},
                 "behaviour": {"rows": 0, "users": 0, "enabled": True},
                 "internal": {"rows": 263, "users": 22, "enabled": True},
                 "repeated": {"rows": 0, "users": 0, "enabled": False}})
    write(directory, "train", day, users=19_800, items=4_900, nonzeros=800_000,
          durations_s={"fit": 12.34, "total": 15.0})
    write(directory, "eval", day, k=10, **eval_block(0.1500, 0.2500),
          baselines={"most_popular": eval_block(0.1000, 0.2000), "published": None},
          lift_over_most_popular=0.5)
    write(directory, "gate", day, passed=True, reason="passed: beats it")
    write(directory, "publish", day, version=f"{day}.3", previous_version="2026-11-20.2",
          users=19_800, users_written=19_750, users_without_recommendations=50,
          gate={"passed": True, "forced": False},
          model_run={"model_name": "dailyrec-als", "model_version": "9"})
    write(directory, "mlflow", day, run_id="abc123", model_version=9)


@pytest.fixture
def mlflow_history(tmp_path, monkeypatch):
    """35 earlier days of runs (more than the chart shows), one of them run twice, and a tuning
    study in the same experiment."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("dailyrec")
    values = {}
    for back in range(35, 0, -1):
        day = DAY - dt.timedelta(days=back)
        values[day] = 0.1 + (35 - back) / 1000
        reruns = [values[day] - 0.05, values[day]] if back == 1 else [values[day]]
        for value in reruns:  # a later run of the same date replaces the earlier one
            run = client.create_run(experiment)
            client.log_batch(run.info.run_id, params=[Param("run.date", day.isoformat())],
                             metrics=[Metric("ndcg_at_20", value, 0, 0),
                                      Metric("recall_at_20", 0.24, 0, 0),
                                      Metric("most_popular_ndcg_at_20", 0.1, 0, 0)])
            client.set_terminated(run.info.run_id)
    # Tuning shares the experiment: its trials (no run.date) and parent run are not daily runs.
    yesterday = (DAY - dt.timedelta(days=1)).isoformat()
    for tag, params in (("tune-trial", []), ("tune", [Param("run.date", yesterday)])):
        run = client.create_run(experiment, tags={"dailyrec.stage": tag})
        client.log_batch(run.info.run_id, params=params,
                         metrics=[Metric("ndcg_at_20", 0.9, 0, 0)])
        client.set_terminated(run.info.run_id)
    return values


def test_the_report_has_the_right_numbers_and_an_mlflow_chart(tmp_path, mlflow_history,
                                                              monkeypatch):
    metrics_dir, reports_dir = tmp_path / "metrics", tmp_path / "reports"
    todays_metrics(metrics_dir)
    built = report.build(DAY, metrics_dir, reports_dir, SETTINGS, "dailyrec")

    yesterday = mlflow_history[DAY - dt.timedelta(days=1)]
    change = 0.15 - yesterday
    assert built.subject == ("Daily recommendations 2026-11-21: new recommendations for 19,750 "
                             f"users · NDCG@20 0.1500 ({change:+.4f})")
    chart = built.summary["chart"]
    assert chart["source"] == "MLflow" and len(chart["points"]) == 30
    assert chart["points"][-1] == [DAY.isoformat(), 0.15]
    assert chart["points"][-2] == [(DAY - dt.timedelta(days=1)).isoformat(), yesterday]
    assert chart["points"][0][0] == (DAY - dt.timedelta(days=29)).isoformat()
    assert built.summary["eval"]["previous_day"] == "2026-11-20"

    text = built.text
    for expected in ("Events fetched:        104,421", "Quarantined:           1,321",
                     "Ignored (event types not used): 100", "page_ping: 100",
                     "ts:future: 21", "user_id:missing: 1,300",
                     "Removed as bots or internal traffic (training window: last 60 days)",
                     "known crawlers (user agent): 412", "bot-like behaviour (scrapers): 0",
                     "internal traffic (staff accounts, office networks): 263",
                     "Removed:               675", "Days kept out (failed data checks): 2026-11-02",
                     "12.3 s on cpu",
                     "Published version 2026-11-21.3 (MLflow model dailyrec-als v9): "
                     "recommendations for 19,750 users", "50 users got no personal list",
                     "Quality gate: passed", "Evaluation (change since yesterday)"):
        assert expected in text, expected
    [ndcg] = [line for line in text.splitlines() if line.strip().startswith("NDCG@20")]
    assert ndcg.split() == ["NDCG@20", "0.1500", f"{change:+.4f}", "0.1000", "+50.0%"]
    [recall] = [line for line in text.splitlines() if line.strip().startswith("Recall@20")]
    assert recall.split() == ["Recall@20", "0.2500", "+0.0100", "0.2000", "+25.0%"]
    assert "NDCG@10" not in text  # only the main metric's cutoff (eval.json's k is 10)
    assert "repeated clicks" not in text  # a rule that is switched off
    assert "MPR (lower=better)" in text

    paths = report.save(built, reports_dir)
    assert {p.name for p in paths} == {"2026-11-21.html", "2026-11-21.txt", "2026-11-21.json",
                                       "2026-11-21.png"}
    page = (reports_dir / "2026-11-21.html").read_text()
    assert 'src="data:image/png;base64,' in page and "19,750" in page

    with Mailbox() as box:
        for name, value in box.env().items():
            monkeypatch.setenv(name, value)
        assert notify.send_report(built) is True
        [msg] = box.messages
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["To"] == "owner@example.test"
    html = msg.get_body(("html",))
    [image] = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert image.get_content() == built.chart_png
    assert f'src="cid:{image["Content-ID"].strip("<>")}"' in html.get_content()
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == built.text


def test_missing_and_stale_blocks_are_named_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    metrics_dir = tmp_path / "metrics"
    todays_metrics(metrics_dir)
    for name in ("filter", "train", "mlflow"):
        (metrics_dir / f"{name}.json").unlink()
    (metrics_dir / "history.json").write_text("{not json")
    # eval, gate and publish of yesterday: today the pipeline stopped before them.
    for name in ("eval", "gate"):
        block = json.loads((metrics_dir / f"{name}.json").read_text())
        (metrics_dir / f"{name}.json").write_text(json.dumps({**block, "run_date": "2026-11-20"}))
    block = json.loads((metrics_dir / "publish.json").read_text())
    (metrics_dir / "publish.json").write_text(json.dumps({**block, "run_date": "2026-11-20",
                                                          "version": "2026-11-20.2"}))

    built = report.build(DAY, metrics_dir, tmp_path / "reports", SETTINGS, "dailyrec")
    assert built.subject == "Daily recommendations 2026-11-21: nothing published"
    assert "not available (metrics/filter.json missing)" in built.text
    assert "not available (metrics/train.json missing)" in built.text
    assert "metrics/eval.json is from another day" in built.text
    assert "Nothing published today" in built.text
    assert "Events fetched:        104,421" in built.text
    assert built.chart_png is None and "<img" not in built.html("cid:x")
    assert built.summary["missing"] == ["history", "filter", "train", "mlflow"]
    assert built.summary["stale"] == ["eval", "gate", "publish"]
    report.save(built, tmp_path / "reports")  # a report without a chart saves too
