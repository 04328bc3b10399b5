"""Rebuilding a past model from its git commit (tools/reproduce.py, `make reproduce`).

A copy of the project, with the GCS emulator as its default DVC remote, runs the pipeline for two
days (Redis and MLflow are real: a test Redis, a temp SQLite tracking store), committing and pushing
after each, as the daily runner does. Then the first day's model is rebuilt from its commit,
after the second day has run, in a temporary worktree with an empty cache: byte-identical (CPU).
A commit whose dvc.lock does not match its params is caught as DIFFERENT.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import yaml

from tests import workspace
from tools import reproduce

pytestmark = pytest.mark.slow

FIRST_EVENT_DAY = dt.date(2026, 11, 14)
RUN_DATES = [dt.date(2026, 11, 15), dt.date(2026, 11, 16)]


def small_test_settings(ws: workspace.Workspace) -> None:
    """Tiny data: let the quality gate pass so publish runs (the gate has its own tests), and
    train small, on the CPU (byte-identical rebuilds are a CPU promise; GPU results differ)."""
    ws.set_params(**{"eval.min_test_users": 1, "eval.min_lift": -1.0, "eval.max_drop": 1.0,
                     "train.device": "cpu", "train.iterations": 5, "train.factors": 16})


@pytest.fixture(scope="module")
def history(tmp_path_factory, gcs_emulator, redis_server):
    """Two committed, pushed daily runs; their commits, dvc.locks and MLflow records.

    The first day runs up to train (one day of history leaves evaluate nothing to hold out); the
    second runs the whole pipeline, publish to a test Redis included, as the scheduler does.
    """
    ws = workspace.create(tmp_path_factory.mktemp("reproduce") / "project",
                          extra_env={"REDIS_URL": redis_server.url})
    ws.python("-m", "tools.simulate", "--url", ws.env["DAILYREC_SOURCE_URL"], "--start",
              FIRST_EVENT_DAY.isoformat(), "--days", "2", "--users", "300", "--items", "120",
              "--events-per-day", "1500", "--seed", "5")
    small_test_settings(ws)
    # The repo's remote is the (emulated) GCS bucket of the committed `gcs` remote; its endpoint
    # lives in .dvc/config.local, which tools/reproduce.py carries into its worktree.
    ws.configure_remote("gcs", **gcs_emulator.dvc_config)
    ws.dvc("remote", "default", "--local", "gcs")
    runs = []
    for run_date, target in zip(RUN_DATES, (["train"], [])):
        ws.set_run_date(run_date)
        ws.dvc("repro", *target)
        sha = ws.commit(f"daily run {run_date}")
        ws.dvc("push")
        runs.append({"sha": sha, "lock": ws.lock(),
                     "mlflow": json.loads((ws.path / "metrics" / "mlflow.json").read_text())})
    assert "publish" in runs[-1]["lock"]["stages"]
    return ws, runs


def test_first_days_model_is_rebuilt_byte_identical_after_the_second_day(history):
    ws, runs = history
    first, second = runs
    recorded = workspace.out_hash(first["lock"], "train", "models")
    assert recorded != workspace.out_hash(second["lock"], "train", "models")
    done = ws.python("-m", "tools.reproduce", first["sha"], check=False)
    assert done.returncode == reproduce.IDENTICAL, done.stdout + done.stderr
    out = done.stdout
    assert re.search(rf"(?m)^models\s+{recorded}\s+{recorded}\s+identical$", out), out
    # Compared file by file against the recorded listing, not just the top-level hash.
    for name in ("als.npz", "ids.npz", "user_items.npz", "meta.json"):
        assert re.search(rf"(?m)^  {re.escape(name)}\s+([0-9a-f]{{32}})\s+\1\s+identical$", out), \
            f"{name}:\n{out}"
    assert "verdict: IDENTICAL" in out
    # Nothing of the rebuild is left behind: no worktree, and the project's tree is untouched.
    assert ws.git("worktree", "list").stdout.count("\n") == 1
    assert ws.git("status", "--porcelain", "--untracked-files=no").stdout == ""
    assert ws.lock() == second["lock"]


def test_a_commit_whose_lock_does_not_match_its_params_is_reported_different(history):
    ws, runs = history
    ws.git("checkout", "-q", "-b", "stale", runs[0]["sha"])
    try:
        iterations = yaml.safe_load((ws.path / "params.yaml").read_text())["train"]["iterations"]
        ws.set_params(**{"train.iterations": iterations + 1})
        stale = ws.commit("params changed without running the pipeline")
    finally:
        ws.git("checkout", "-q", "main")
    done = ws.python("-m", "tools.reproduce", stale, check=False)
    assert done.returncode == reproduce.DIFFERENT, done.stdout + done.stderr
    assert "verdict: DIFFERENT" in done.stdout
    assert "als.npz" in done.stdout and "DIFFERENT" in done.stdout.split("als.npz", 1)[1]


def test_an_mlflow_run_leads_to_the_commit_that_records_its_model(history, monkeypatch):
    ws, runs = history
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ws.env["MLFLOW_TRACKING_URI"])
    for run in runs:
        assert run["mlflow"]["run_id"]
        assert reproduce.commit_for_run(ws.path, run["mlflow"]["run_id"]) == run["sha"]


def test_bad_requests_are_refused_with_a_clear_message(history):
    ws, runs = history
    done = ws.python("-m", "tools.reproduce", "no-such-commit", check=False)
    assert done.returncode == reproduce.FAILED
    assert "'no-such-commit' is not a commit" in done.stderr
    first_commit = ws.git("rev-list", "--max-parents=0", "HEAD").stdout.strip()
    done = ws.python("-m", "tools.reproduce", first_commit, check=False)
    assert done.returncode == reproduce.FAILED
    assert "has no dvc.lock" in done.stderr
