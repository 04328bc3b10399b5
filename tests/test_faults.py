"""Unattended for a year: faults of the services the daily run needs, on the real pipeline. Each
fault fails its night with the error kind's exit status and an alert; the next night's run heals
it by itself, makes up the failed days, and no event is lost or counted twice.

The chain, in one copy of the project (`python -m stages.daily --commit`, a local DVC remote,
MLflow on SQLite, a Redis server and an SMTP server started by the test):
    day 1  normal
    day 2  the source database is down          -> fetch_delta fails, exit 69
    day 3  the MLflow tracking server is down   -> makes up day 2, train fails, exit 69
    day 4  Redis is down                        -> makes up days 2..3, publish fails, exit 69
    day 5  everything is back                   -> makes up days 2..4, then day 5: exit 0
(The toy-pipeline tests in tests/test_daily.py kill each stage mid-write, kill the runner, and
take the DVC remote away during pull and push.)
"""

from __future__ import annotations

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest

from tests import workspace
from tests.mailbox import Mailbox
from tests.mini_source import fetch
from tests.servers import free_port

pytestmark = pytest.mark.slow

FIRST = dt.date(2026, 11, 14)
DAYS = [FIRST + dt.timedelta(days=k) for k in range(1, 6)]  # run dates 11-15 .. 11-19


def daily(ws, day: dt.date, **env):
    return ws.run(ws.env["VENV_PYTHON"], "-m", "stages.daily", "--date", day.isoformat(),
                  "--commit", check=False, env=env)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, redis_server):
    root = tmp_path_factory.mktemp("faults")
    with Mailbox() as box:
        ws = workspace.create(root / "repo", {
            "REDIS_URL": redis_server.url, "DAILYREC_STATE_DIR": str(root / "state"),
            "REDIS_KEY_PREFIX": "faults", **box.env()})
        import sys

        ws.env["VENV_PYTHON"] = sys.executable
        ws.python("-m", "tools.simulate", "--start", FIRST.isoformat(), "--days", "5",
                  "--users", "300", "--items", "80", "--events-per-day", "1500", "--seed", "3")
        ws.set_params(**{"eval.min_lift": -1.0, "eval.min_test_users": 1,
                         "train.iterations": 3})
        (root / "remote").mkdir()
        ws.add_remote("store", str(root / "remote"), default=True)
        ws.commit("faults: settings")
        runs = {}
        runs[1] = daily(ws, DAYS[0])
        dead = f"http://127.0.0.1:{free_port()}"
        runs[2] = daily(ws, DAYS[1], DAILYREC_SOURCE_URL=f"sqlite:///{root}/gone/source.db")
        runs[3] = daily(ws, DAYS[2], MLFLOW_TRACKING_URI=dead,
                        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
        runs[4] = daily(ws, DAYS[3], REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
        runs[5] = daily(ws, DAYS[4])
        yield {"ws": ws, "runs": runs, "mail": box.messages, "root": root}


def subjects(chain) -> list[str]:
    return [" ".join(m["Subject"].split()) for m in chain["mail"] if "ALERT" in m["Subject"]]


def test_each_fault_fails_its_night_with_its_kind(chain):
    runs = chain["runs"]
    assert runs[1].returncode == 3  # the first day has no history to evaluate against
    assert runs[2].returncode == 69 and "fetch_delta" in runs[2].stdout
    assert runs[3].returncode == 69 and f"[{DAYS[1]}] train" in runs[3].stdout
    assert runs[4].returncode == 69 and "publish" in runs[4].stdout
    alerts = subjects(chain)
    for day, stage in ((DAYS[1], "fetch_delta"), (DAYS[1], "train"), (DAYS[1], "publish")):
        assert f"[dailyrec] ALERT: daily run {day} failed at stage {stage} (unavailable)" in \
            alerts, alerts


def test_the_next_night_makes_up_every_failed_day(chain):
    run = chain["runs"][5]
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"catching up 3 missed or failed day(s) since {DAYS[0]}" in run.stdout
    ws = chain["ws"]
    log = ws.git("log", "--format=%s").stdout.splitlines()
    assert [f"daily run {d}" for d in reversed(DAYS)] == log[:5]
    served = ws.path / "metrics" / "publish.json"
    assert json.loads(served.read_text())["run_date"] == DAYS[4].isoformat()
    # MLflow holds a run (and a model version) for every day, the failed ones made up.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=ws.env["MLFLOW_TRACKING_URI"])
    dates = {r.data.params.get("run.date") for r in client.search_runs(
        [client.get_experiment_by_name("dailyrec").experiment_id])}
    assert {d.isoformat() for d in DAYS} <= dates


def test_no_event_is_lost_or_counted_twice(chain, tmp_path):
    """The history holds exactly the events a clean fetch of each day keeps, once each."""
    ws = chain["ws"]
    history = ws.path / "data" / "history"
    ids = [e for p in sorted(history.rglob("*.parquet"))
           for e in pq.read_table(p, columns=["event_id"])["event_id"].to_pylist()]
    assert len(ids) == len(set(ids))
    from tests.params import project_params

    expected: set[str] = set()
    for day in DAYS:
        params = project_params(day.isoformat())
        fetch(params, ws.env["DAILYREC_SOURCE_URL"], tmp_path / str(day))
        expected |= set(pq.read_table(tmp_path / str(day) / "events.parquet",
                                      columns=["event_id"])["event_id"].to_pylist())
    assert set(ids) == expected
