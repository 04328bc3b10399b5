"""The pipeline stops at validate on a bad day, and the rejection outlives DVC's bookkeeping.

In a throwaway copy of the project (tests/workspace.py), with `dvc repro` as the scheduler runs it:
a good day builds data/clean; on the next the feed stops at 06:00, validate fails, nothing
downstream runs (data/clean, the filter metrics and the published lists in Redis are untouched),
and the day is rejected in data/rejections.json even though DVC records nothing for a failed
stage. The next day trains without the rejected day; `python -m stages.validate admit` brings it
back on the following `dvc repro`.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from dailyrec.core.files import dvc_md5
from tools import simulate
from tests import workspace

pytestmark = pytest.mark.slow

FIRST = dt.date(2026, 11, 14)
BAD_DAY = dt.date(2026, 11, 16)  # the day the feed breaks: run.date 2026-11-17 fetches it
STOP = "2026-11-16 06:00:00"


def _digest(path) -> str | None:
    return dvc_md5(path)


def _break_feed(url: str) -> None:
    """Writes after 06:00 on BAD_DAY never arrived (a feed that stopped)."""
    stop, end = pd.Timestamp(STOP), pd.Timestamp(BAD_DAY + dt.timedelta(days=1))
    ms = lambda t: int(t.timestamp() * 1000)  # noqa: E731
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM web_events WHERE ingested_at >= :a AND ingested_at < :b"),
                     {"a": ms(stop), "b": ms(end)})
        conn.execute(sa.text("DELETE FROM app_events WHERE written_at >= :a AND written_at < :b"),
                     {"a": stop.to_pydatetime(), "b": end.to_pydatetime()})
        conn.execute(sa.text("DELETE FROM legacy_clicks WHERE EventTime >= :a AND EventTime < :b"),
                     {"a": ms(stop) // 1000, "b": ms(end) // 1000})
    engine.dispose()


def _clean_days(ws) -> set[str]:
    ts = pq.read_table(ws.path / "data/clean", columns=["ts"]).column("ts")
    return set(pd.Series(ts.to_pandas()).dt.strftime("%Y-%m-%d").unique())


def _ledger(ws) -> dict:
    return json.loads((ws.path / "data/rejections.json").read_text())["days"]


@pytest.fixture
def ws(tmp_path, redis_server):
    ws = workspace.create(tmp_path / "repo", extra_env={"REDIS_URL": redis_server.url})
    url = ws.env["DAILYREC_SOURCE_URL"]
    simulate.write(url, FIRST, 4, seed=5, users=1500, items=400, events_per_day=4000)
    _break_feed(url)
    return ws


def test_bad_day_stops_the_pipeline_and_stays_out_until_admitted(ws, redis_client):
    ws.set_run_date(BAD_DAY)  # a good day: it fetches what was written on 2026-11-15
    ws.dvc("repro", "filter_noise")
    clean, filter_metrics = ws.path / "data/clean", ws.path / "metrics/filter.json"
    before = (_digest(clean), _digest(filter_metrics))
    assert "2026-11-15" in _clean_days(ws)
    redis_client.set("dailyrec:test:served", "yesterday's lists")
    keys_before = sorted(redis_client.keys("*"))

    # The bad day, the whole pipeline as the scheduler runs it.
    ws.set_run_date(BAD_DAY + dt.timedelta(days=1))
    proc = ws.dvc("repro", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "validate 2026-11-17: FAILED" in output and "delta.freshness" in output
    assert "day 2026-11-16 is REJECTED" in output
    for stage in ("filter_noise", "train", "evaluate", "publish"):
        assert f"Running stage '{stage}'" not in output, stage
    assert (_digest(clean), _digest(filter_metrics)) == before  # data/clean untouched
    assert not (ws.path / "models").exists() and not (ws.path / "metrics/publish.json").exists()
    assert sorted(redis_client.keys("*")) == keys_before
    assert redis_client.get("dailyrec:test:served") == b"yesterday's lists"
    assert _ledger(ws)["2026-11-16"]["status"] == "rejected"
    # DVC recorded nothing for the failed stage: the lock still holds yesterday's validate...
    lock = ws.lock()
    assert lock["stages"]["validate"]["params"]["params.yaml"]["run.date"] == "2026-11-16"
    # ...and a checkout (what `dvc pull` does at the start of the scheduler's next day) neither
    # brings back the ledger the lock knows (it is git's, not DVC's) nor trips on the failed
    # run's report.
    ws.dvc("checkout", "--allow-missing")  # models/ and the rest downstream never ran
    assert _ledger(ws)["2026-11-16"]["status"] == "rejected"
    assert (ws.path / "reports/validation/2026-11-17.html").exists()

    # The next day: a good delta; the rejected day stays out of the training window.
    ws.set_run_date(dt.date(2026, 11, 18))
    proc = ws.dvc("repro", "filter_noise")
    assert "left out of the training window: 2026-11-16" in proc.stdout
    # Nothing the rejected run wrote reaches training: its own day file and its arrivals in other
    # days (late and clock-skewed events); other runs' late events of 2026-11-16 do.
    from dailyrec.ingest import history

    rejected_run = history.run_files(ws.path / "data/history", dt.date(2026, 11, 17))
    assert any(p.name.startswith("arrived-") for p in rejected_run)
    written = {e for p in rejected_run for e in pq.read_table(p)["event_id"].to_pylist()}
    clean_ids = set(pq.read_table(clean, columns=["event_id"])["event_id"].to_pylist())
    assert written and not written & clean_ids and "2026-11-17" in _clean_days(ws)
    metrics = json.loads(filter_metrics.read_text())
    assert metrics["window"]["rejected_days_left_out"] == ["2026-11-16"]
    # This time DVC records the ledger, rejection included.
    recorded = workspace.out_hash(ws.lock(), "validate", "data/rejections.json")
    assert recorded == _digest(ws.path / "data/rejections.json")

    # A person looks, admits the day, and the next repro brings it back.
    ws.python("-m", "stages.validate", "admit", "2026-11-16", "--by", "tester",
              "--note", "feed outage confirmed; the morning's data is right")
    assert "data/rejections.json" in ws.dvc("status", "filter_noise").stdout
    ws.dvc("repro", "filter_noise")
    assert {"2026-11-15", "2026-11-16", "2026-11-17"} <= _clean_days(ws)
    clean_ids = set(pq.read_table(clean, columns=["event_id"])["event_id"].to_pylist())
    assert written & clean_ids  # the run's events are back (those filter_noise keeps)
    assert json.loads(filter_metrics.read_text())["window"]["rejected_days_left_out"] == []
    assert _ledger(ws)["2026-11-16"]["admitted_by"] == "tester"
