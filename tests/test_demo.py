"""make demo walks every way the project is used, so a newcomer's first commands work: a short demo
in a copy of the project, then every command its "next steps" print, run as printed (make's install
step held back: the copy borrows the test run's virtualenv), each checked for what it promises."""

from __future__ import annotations

import json
import os
import signal
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from dailyrec.publish import keys as K
from tests import workspace
from tests.servers import free_port

pytestmark = pytest.mark.demo

VENV = Path(sys.executable).resolve().parent.parent
PREFIX = "demo-test"
MAKE = ["make", "--no-print-directory", "-o", ".venv/.installed-stamp"]  # never reinstall


@pytest.fixture(scope="module")
def demo(tmp_path_factory, redis_server):
    ws = workspace.create(tmp_path_factory.mktemp("demo") / "project",
                          {"REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": PREFIX})
    (ws.path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    head = ws.git("rev-parse", "HEAD").stdout.strip()
    ran = ws.python("-m", "tools.demo", "--days", "3", "--events-per-day", "20000", check=False)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    steps = ws.python("-m", "tools.demo", "--next-steps").stdout
    return ws, head, steps


def commands(steps: str) -> list[str]:
    return [line.strip()[2:] for line in steps.splitlines() if line.strip().startswith("$ ")]


def run(ws, command: str, **env) -> subprocess.CompletedProcess:
    args = shlex.split(command)  # as a shell splits the pasted line
    if args[0] == "make":
        args = MAKE + args[1:]
    return ws.run(*args, check=False, env=env)


def served(ws) -> str:
    return redis.Redis.from_url(ws.env["REDIS_URL"]).get(K.Layout(PREFIX).current).decode()


def test_the_demo_commits_its_days_on_its_own_branch_and_changes_no_tracked_file(demo):
    ws, head, _ = demo
    assert ws.git("status", "--porcelain", "--untracked-files=no").stdout == ""
    assert ws.git("rev-parse", "HEAD").stdout.strip() == head  # the user's branch did not move
    assert ws.git("symbolic-ref", "--short", "HEAD").stdout.strip() == "main"
    log = ws.git("log", "--format=%s", f"{head}..dailyrec-demo").stdout.split("\n")
    assert log[:3] == ["daily run 2026-11-17", "daily run 2026-11-16", "daily run 2026-11-15"]
    files = ws.git("show", "--name-only", "--format=", "dailyrec-demo").stdout.split()
    assert {"dvc.lock", "params.yaml", "metrics/eval.json"} <= set(files)


def test_every_printed_step_is_a_command_that_works(demo):
    _, _, steps = demo
    printed = commands(steps)
    assert [c.split()[0:2] for c in printed] == [
        ["make", "mlflow-ui"], ["make", "reproduce"], [".venv/bin/python", "-m"],
        [".venv/bin/python", "-m"], [".venv/bin/dvc", "metrics"], [".venv/bin/dvc", "metrics"],
        [".venv/bin/dvc", "plots"], [".venv/bin/dvc", "exp"],
        ["git", "log"]], steps
    assert "reports/daily/2026-11-17.html" in steps and "reports/validation/index.html" in steps


def test_rebuilding_the_printed_commit_is_byte_identical(demo):
    ws, _, steps = demo
    [command] = [c for c in commands(steps) if c.startswith("make reproduce COMMIT=")]
    rebuilt = run(ws, command)
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert "identical" in rebuilt.stdout and "DIFFERENT" not in rebuilt.stdout


def test_rollback_serves_yesterday_and_roll_forward_today(demo):
    ws, _, steps = demo
    back, forward = [c for c in commands(steps) if "stages.publish rollback" in c]
    today = served(ws)
    assert today in forward
    done = run(ws, back)
    assert done.returncode == 0, done.stderr
    yesterday = served(ws)
    assert yesterday != today and yesterday < today and f"now serving {yesterday}" in done.stdout
    assert run(ws, forward).returncode == 0 and served(ws) == today


def test_dvc_plots_exp_and_the_demo_log(demo):
    ws, _, steps = demo
    for command in commands(steps):
        if command.startswith((".venv/bin/dvc", "git log")):
            done = run(ws, command)
            assert done.returncode == 0, (command, done.stderr[-2000:])
            if "plots" in command:
                assert (ws.path / "dvc_plots" / "index.html").exists()
            if "metrics diff" in command:
                assert "ndcg@20" in done.stdout or "events" in done.stdout, done.stdout
            if "metrics show" in command:
                assert "ndcg@20" in done.stdout and "metrics/summary/eval.json" in done.stdout
            if "exp show" in command:
                assert "eval.json:ndcg@20" in done.stdout and "train.factors" in done.stdout, \
                    done.stdout
            if command.startswith("git log"):
                assert len(done.stdout.splitlines()) >= 3
    assert ws.git("status", "--porcelain").stdout.count("dvc_plots") == 0  # ignored


def test_the_mlflow_ui_lists_the_demos_runs(demo):
    ws, _, steps = demo
    assert "make mlflow-ui" in commands(steps)
    port = free_port()
    ui = subprocess.Popen(MAKE + ["mlflow-ui", f"MLFLOW_PORT={port}"], cwd=ws.path, env=ws.env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name="
                                            "dailyrec", timeout=5) as answer:
                    experiment = json.load(answer)["experiment"]["experiment_id"]
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(1)
        request = urllib.request.Request(
            f"{base}/runs/search", data=json.dumps({"experiment_ids": [experiment]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            runs = json.load(answer)["runs"]
        days = {tag["value"] for r in runs for tag in r["data"].get("tags", [])
                if tag["key"] == "dailyrec.run_date"}
        assert len(runs) >= 3 and {"2026-11-15", "2026-11-16", "2026-11-17"} <= days, runs[:1]
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
