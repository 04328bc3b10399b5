"""The daily runner (stages.daily) on a small, real git + DVC repository with a local remote, mail
going to a real SMTP server on loopback.

The pipeline here is a stand-in (tests/daily_toy.py, five stages named like the real ones, keeping
the stages' contract and writing metrics files in the real stages' shapes), so the runner's own behaviour -- lock, pull, repro,
push, commit, progress, alerts, report, backfill -- is tested in seconds and whatever state the
real stages are in.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.mailbox import Mailbox, text_of
from tests.servers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TOY = Path(__file__).with_name("daily_toy.py")
SECRET = "hunter2-stage-secret"

TOY_DVC_YAML = """
stages:
  fetch_delta:
    cmd: python toy.py fetch_delta
    deps: [toy.py]
    params: [run.date]
    outs: [data/delta]
    metrics: [{metrics/fetch.json: {cache: false}}]
  filter_noise:
    cmd: python toy.py filter_noise
    deps: [data/delta]
    outs: [data/clean]
    metrics: [{metrics/filter.json: {cache: false}}]
  train:
    cmd: python toy.py train
    deps: [data/clean]
    outs: [models]
    metrics: [{metrics/train.json: {cache: false}}, {metrics/mlflow.json: {cache: false}}]
  evaluate:
    cmd: python toy.py evaluate
    deps: [models]
    metrics: [{metrics/eval.json: {cache: false}}, {metrics/gate.json: {cache: false}}]
  publish:
    cmd: python toy.py publish
    deps: [models, metrics/gate.json]
    metrics: [{metrics/publish.json: {cache: false}}]
"""


@pytest.fixture
def repo(tmp_path):
    """A git + DVC repo holding the toy pipeline, with an empty local DVC remote as its default."""
    path = tmp_path / "repo"
    path.mkdir()
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),  # `python -m stages.daily` is the project's runner
        "DVC_NO_ANALYTICS": "1",
        "DAILYREC_STATE_DIR": str(tmp_path / "state"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'no-mlflow.db'}",  # absent: no history
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.test",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.test",
        "TOY_SECRET": SECRET,
    }
    for name in list(env):
        if name.startswith("DAILYREC_SMTP") or name in ("DAILYREC_PARAMS", "DAILYREC_ALERT_TO",
                                                        "DAILYREC_REPORT_TO"):
            env.pop(name)

    def run(*args, check=True):
        proc = subprocess.run(args, cwd=path, env=env, capture_output=True, text=True)
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    run("git", "init", "-q", "-b", "main")
    run(sys.executable, "-m", "dvc", "init", "-q")
    shutil.copy(TOY, path / "toy.py")
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    (path / "dvc.yaml").write_text(TOY_DVC_YAML)
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "toy pipeline")
    (tmp_path / "remote").mkdir()
    run(sys.executable, "-m", "dvc", "remote", "add", "-d", "--local", "store",
        str(tmp_path / "remote"))

    class Repo:
        def __init__(self):
            self.path, self.env, self.run = path, env, run
            self.remote = tmp_path / "remote"

        def daily(self, *args, extra_env=None):
            return subprocess.run([sys.executable, "-m", "stages.daily", *args], cwd=path,
                                  env={**env, **(extra_env or {})}, capture_output=True,
                                  text=True, timeout=300)

        def fail(self, stage, day):
            (path / f"fail-{stage}-{day}").touch()

        def run_date(self):
            return yaml.safe_load((path / "params.yaml").read_text())["run"]["date"]

    return Repo()


@pytest.fixture
def mailbox():
    with Mailbox() as box:
        yield box


def toy_numbers(day: dt.date) -> dict:
    """What tests/daily_toy.py writes for a day (kept in step with it)."""
    d = day.day
    return {"fetched": 10_000 + d, "ts_future": 3, "user_id_null": d, "bots": 400 + d,
            "internal": 250, "ndcg": round(0.1 + d / 1000, 6), "popular_ndcg": 0.05,
            "version": f"{day}.1", "users": 2_000 + d, "fit_s": 1.5}


def test_a_good_day_pulls_reproduces_pushes_commits_and_mails_the_report(repo, mailbox):
    day1, day2 = dt.date(2026, 11, 20), dt.date(2026, 11, 21)
    first = repo.daily("--date", str(day1), "--commit", extra_env=mailbox.env())
    assert first.returncode == 0, first.stdout + first.stderr
    # One progress line per step and per stage, with its duration.
    for step in ("fetch_delta", "filter_noise", "train", "evaluate", "publish",
                 "dvc push", "git commit"):
        assert any(line.startswith(f"[{day1}] {step} ") and " in " in line
                   for line in first.stdout.splitlines()), (step, first.stdout)
    # Nothing is recorded before the first day: nothing to pull (a pull would delete outputs
    # dvc.lock has no hash for: tests/test_unrecorded_history.py).
    assert f"[{day1}] dvc pull           skipped (dvc.lock records no outputs yet)" in \
        first.stdout.splitlines(), first.stdout
    assert repo.run_date() == str(day1)
    assert any(repo.remote.rglob("*")), "dvc push sent nothing to the remote"
    log = repo.run("git", "log", "-1", "--name-only", "--format=%s").stdout.split()
    assert log[:3] == ["daily", "run", str(day1)]
    assert {"params.yaml", "dvc.lock", "metrics/eval.json"} <= set(log)

    second = repo.daily("--date", str(day2), "--commit", extra_env=mailbox.env())
    assert second.returncode == 0, second.stdout + second.stderr
    assert any(line.startswith(f"[{day2}] dvc pull ") and "done in" in line
               for line in second.stdout.splitlines()), second.stdout
    assert repo.run("git", "show", "HEAD:params.yaml").stdout.count(f"date: '{day2}'") == 1
    assert repo.run("git", "status", "--porcelain", "--", "dvc.lock").stdout == ""

    reports = [m for m in mailbox.messages if "ALERT" not in m["Subject"]]
    assert len(reports) == 2 and len(mailbox.messages) == 2
    msg = reports[1]
    n1, n2 = toy_numbers(day1), toy_numbers(day2)
    assert msg["Subject"] == (f"[dailyrec] Daily recommendations {day2}: new recommendations "
                              f"for {n2['users']:,} users · NDCG@20 {n2['ndcg']:.4f} "
                              f"(+{n2['ndcg'] - n1['ndcg']:.4f})")
    assert mailbox.envelopes[1][1] == ["owner@example.test"]
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    for body in (text, html):
        assert f"{n2['fetched']:,}" in body
        assert "ts:future" in body and "user_id:null" in body
        assert f"{n2['bots']:,}" in body and f"{n2['internal']:,}" in body
        assert f"{n2['ndcg']:.4f}" in body and f"+{n2['ndcg'] - n1['ndcg']:.4f}" in body
        lift = (n2["ndcg"] - n2["popular_ndcg"]) / n2["popular_ndcg"]
        assert f"{lift:+.1%}" in body  # against most-popular
        assert "1.5 s on cpu" in body
        assert f"{n2['users']:,}" in body and f"version {n2['version']}" in body
    # The chart: an inline PNG the HTML points at by Content-ID.
    [image] = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert image.get_content()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f'src="cid:{image["Content-ID"].strip("<>")}"' in html
    saved = repo.path / "reports" / "daily"
    assert {p.name for p in saved.iterdir()} >= {f"{day2}.html", f"{day2}.txt", f"{day2}.png",
                                                 f"{day2}.json"}
    assert json.loads((saved / f"{day2}.json").read_text())["eval"]["previous_day"] == str(day1)


def test_a_failing_stage_alerts_with_its_name_and_output_and_stops_the_backfill(repo, mailbox):
    days = [dt.date(2026, 11, 20) + dt.timedelta(days=i) for i in range(3)]
    repo.fail("train", days[1])
    proc = repo.daily("--from", str(days[0]), "--to", str(days[2]), extra_env=mailbox.env())
    assert proc.returncode == 1
    assert f"[{days[1]}] train" in proc.stdout and "FAILED" in proc.stdout
    assert f"backfill stopped at {days[1]}; not run: {days[2]}..{days[2]}" in proc.stderr
    assert repo.run_date() == str(days[1])  # the third day never started
    saved = repo.path / "reports" / "daily"
    assert (saved / f"{days[0]}.html").exists() and not (saved / f"{days[2]}.html").exists()

    # Only the alert is mailed: a backfill mails the report of its last day, which never came.
    [msg] = mailbox.messages
    assert msg["Subject"] == f"[dailyrec] ALERT: daily run {days[1]} failed at stage train (bug)"
    assert mailbox.envelopes[0][1] == ["oncall@example.test"]
    body = text_of(msg)
    assert "stage: train" in body and "command: python toy.py train" in body
    assert "kind: bug" in body and "exit_status: 1" in body
    assert "Last 50 lines of output" in body
    lines = body.splitlines()
    # The last 50 lines of the stage's output, not its beginning.
    assert "train line 59" in lines and "train line 30" in lines and "train line 0" not in lines
    assert "RuntimeError: the toy train stage failed" in body
    assert SECRET not in body


def test_each_error_kind_has_its_exit_status_and_is_named_in_the_alert(repo, mailbox):
    """A stage that ends with bad data (validate rejecting the day) exits 65: the runner says so
    from the stage's own status, exits 65, and names the kind in the alert."""
    repo.run("touch", "reject-filter_noise-2026-11-20")
    proc = repo.daily("--date", "2026-11-20", extra_env=mailbox.env())
    assert proc.returncode == 65, proc.stdout + proc.stderr
    assert ("[2026-11-20] filter_noise       FAILED after" in proc.stdout
            and "(exit status 65, data): day 2026-11-19 is rejected" in proc.stdout)
    [msg] = mailbox.messages
    assert " ".join(msg["Subject"].split()) == ("[dailyrec] ALERT: daily run 2026-11-20 failed at "
                                                "stage filter_noise (data)")
    assert "kind: data" in text_of(msg) and "exit_status: 65" in text_of(msg)


def test_a_failed_quality_gate_is_alerted_and_reported_and_the_backfill_goes_on(repo, mailbox):
    repo.run("touch", "gate-fails-2026-11-20")
    proc = repo.daily("--from", "2026-11-20", "--to", "2026-11-21", "--commit",
                      extra_env=mailbox.env())
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "[2026-11-20] publish            refused: the quality gate failed" in proc.stdout
    assert "nothing published for 2026-11-20: the quality gate failed" in proc.stderr
    # The refused day is still recorded: its data pushed, its dvc.lock committed.
    subjects = repo.run("git", "log", "--format=%s").stdout.splitlines()
    assert subjects[:2] == ["daily run 2026-11-21", "daily run 2026-11-20"]
    alert, report = mailbox.messages  # the backfill mails its last day's report only
    assert alert["Subject"] == ("[dailyrec] ALERT: daily run 2026-11-20: quality gate failed, "
                                "nothing published")
    assert "gate: below most-popular" in text_of(alert) and "refusing to publish" in text_of(alert)
    assert report["Subject"].startswith("[dailyrec] Daily recommendations 2026-11-21: new ")
    refused = (repo.path / "reports" / "daily" / "2026-11-20.txt").read_text()
    assert refused.startswith("Daily recommendations 2026-11-20: model NOT published")
    assert "Quality gate: FAILED (below most-popular)" in refused
    assert "Nothing published today" in refused


def test_smtp_down_does_not_break_the_runner(repo):
    dead = {"DAILYREC_SMTP_HOST": "127.0.0.1", "DAILYREC_SMTP_PORT": str(free_port()),
            "DAILYREC_SMTP_TLS": "none", "DAILYREC_ALERT_TO": "oncall@example.test",
            "DAILYREC_REPORT_TO": "owner@example.test"}
    good = repo.daily("--date", "2026-11-20", extra_env=dead)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "could not send mail" in good.stderr and "(not mailed)" in good.stdout
    assert (repo.path / "reports" / "daily" / "2026-11-20.html").exists()

    repo.fail("evaluate", "2026-11-21")
    bad = repo.daily("--date", "2026-11-21", extra_env=dead)
    assert bad.returncode == 1
    assert "[2026-11-21] evaluate" in bad.stdout and "FAILED" in bad.stdout
    assert "could not send mail" in bad.stderr

    # The mail server is back: the next run's mail goes out, then what was kept, marked delayed.
    (repo.path / "fail-evaluate-2026-11-21").unlink()
    with Mailbox(port=int(dead["DAILYREC_SMTP_PORT"])) as box:
        healed = repo.daily("--date", "2026-11-22", extra_env=dead)
        assert healed.returncode == 0, healed.stdout + healed.stderr
        subjects = [m["Subject"] for m in box.messages]
    delayed = [s for s in subjects if s.startswith("[delayed] ")]
    assert any("2026-11-22" in s and "ALERT" not in s for s in subjects[:1]), subjects
    assert any("2026-11-20" in s and "ALERT" not in s for s in delayed), subjects  # the report
    assert any("ALERT: daily run 2026-11-21 failed at stage evaluate" in s for s in delayed)
    assert not list((Path(repo.env["DAILYREC_STATE_DIR"]) / "outbox").glob("*.eml"))


def test_a_second_concurrent_runner_refuses(repo):
    (repo.path / "hold").touch()  # the toy fetch_delta waits while this file exists
    first = subprocess.Popen([sys.executable, "-m", "stages.daily", "--date", "2026-11-20"],
                             cwd=repo.path, env=repo.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (repo.path / "holding").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never reached its stage"
            time.sleep(0.05)
        second = repo.daily("--date", "2026-11-21")
        assert second.returncode == 75
        assert "another daily run is in progress" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "2026-11-20" in second.stderr
        assert second.stdout == ""
        assert repo.run_date() == "2026-11-20"  # the second run changed nothing
    finally:
        (repo.path / "hold").unlink()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    # The lock goes with its holder: the next run can take it.
    from dailyrec.core.paths import RUN_LOCK
    from dailyrec.ops.runner.lock import RunLock

    RunLock(repo.path / RUN_LOCK).acquire({"pid": os.getpid()}).release()


def test_a_stopped_run_alerts_naming_the_stage_it_was_in(repo, mailbox):
    (repo.path / "hold").touch()
    runner = subprocess.Popen([sys.executable, "-m", "stages.daily", "--date", "2026-11-20"],
                              cwd=repo.path, env={**repo.env, **mailbox.env()},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (repo.path / "holding").exists():
        assert runner.poll() is None, runner.communicate()
        assert time.monotonic() < deadline, "the run never reached its stage"
        time.sleep(0.05)
    runner.terminate()  # what systemd does at TimeoutStartSec or `systemctl stop`
    deadline = time.monotonic() + 60
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 1, out + err
    assert "[2026-11-20] fetch_delta" in out and "stopped by SIGTERM" in out
    [msg] = mailbox.messages
    assert " ".join(msg["Subject"].split()) == ("[dailyrec] ALERT: daily run 2026-11-20 failed at "
                                                "stage fetch_delta (stopped)")
    assert "fetch_delta failed (stopped by SIGTERM" in text_of(msg)
    # The stop reached the stage's own process too: nothing is left running.
    stage_pid = int((repo.path / "holding").read_text())
    while process_state(stage_pid) not in (None, "Z"):
        assert time.monotonic() < deadline, f"the stage (pid {stage_pid}) is still running"
        time.sleep(0.05)


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat (Z: zombie), or None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def test_bad_arguments_are_refused_with_a_clear_message(repo):
    proc = repo.daily("--from", "2026-11-22", "--to", "2026-11-20")
    assert proc.returncode == 2 and "--from 2026-11-22 is after --to 2026-11-20" in proc.stderr
    proc = repo.daily("--date", "2026-13-01")
    assert proc.returncode == 2 and "'2026-13-01' is not a date" in proc.stderr


# --- faults heal by the next run: nobody watches the nightly run ----------------------------------

def _remote_objects(repo) -> set[str]:
    return {p.parent.name + p.name for p in repo.remote.rglob("*") if p.is_file()}


@pytest.mark.parametrize("stage", ["fetch_delta", "filter_noise", "train"])
def test_a_stage_killed_mid_write_is_healed_by_the_next_run(repo, mailbox, stage):
    """SIGKILL leaves half an output that differs from dvc.lock, which used to stop every later
    `dvc pull` ("unsaved files"). The next run restores it to what dvc.lock records, says so in one
    alert, then makes up the failed day before its own."""
    day1, day2, day3 = (dt.date(2026, 11, 20) + dt.timedelta(days=k) for k in range(3))
    assert repo.daily("--date", str(day1), "--commit").returncode == 0
    repo.run("touch", f"kill-{stage}-{day2}")
    killed = repo.daily("--date", str(day2), "--commit", extra_env=mailbox.env())
    assert killed.returncode == 1 and f"[{day2}] {stage}" in killed.stdout
    assert "killed by signal 9" in killed.stdout or "exit status" in killed.stdout
    repo.run("rm", f"kill-{stage}-{day2}")

    healed = repo.daily("--date", str(day3), "--commit", extra_env=mailbox.env())
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert f"catching up 1 missed or failed day(s) since {day1}" in healed.stdout
    assert f"[{day2}] recover" in healed.stdout and "restored" in healed.stdout
    subjects = repo.run("git", "log", "--format=%s").stdout.splitlines()
    assert subjects[:3] == [f"daily run {day3}", f"daily run {day2}", f"daily run {day1}"]
    assert not list(repo.path.rglob(".part.txt.tmp"))
    alerts = [" ".join(m["Subject"].split()) for m in mailbox.messages if "ALERT" in m["Subject"]]
    assert alerts == [f"[dailyrec] ALERT: daily run {day2} failed at stage {stage} (bug)",
                      f"[dailyrec] ALERT: daily run {day2}: recovered from an earlier fault"]


def test_killing_the_runner_keeps_the_lock_until_its_stage_ends(repo):
    """SIGKILL to the runner leaves dvc and its stage running in their own session; they hold the
    run lock (its descriptor is theirs too), so a second runner cannot start on top of them."""
    import signal

    (repo.path / "hold").touch()
    runner = subprocess.Popen([sys.executable, "-m", "stages.daily", "--date", "2026-11-20"],
                              cwd=repo.path, env=repo.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (repo.path / "holding").exists():
        assert runner.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    stage_pid = int((repo.path / "holding").read_text())
    assert process_state(stage_pid) not in (None, "Z")  # the orphan still writes
    second = repo.daily("--date", "2026-11-20")
    assert second.returncode == 75 and "another daily run is in progress" in second.stderr
    (repo.path / "hold").unlink()
    while process_state(stage_pid) not in (None, "Z"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    deadline = time.monotonic() + 60
    while True:  # dvc records the stage and exits; then the lock is free
        third = repo.daily("--date", "2026-11-20")
        if third.returncode != 75 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert third.returncode == 0, third.stdout + third.stderr


def test_an_unreachable_remote_neither_fails_the_day_nor_loses_its_data(repo, mailbox):
    """Pull: the workspace already holds what dvc.lock records, so the day runs on it. Push: what
    was served is committed anyway, and the next run pushes that commit's data, so `make
    reproduce` finds the day."""
    day1, day2, day3 = (dt.date(2026, 11, 20) + dt.timedelta(days=k) for k in range(3))
    assert repo.daily("--date", str(day1), "--commit").returncode == 0
    store = str(repo.remote)
    repo.run(sys.executable, "-m", "dvc", "remote", "add", "-d", "--local", "--force", "store",
             f"http://127.0.0.1:{free_port()}/nowhere")
    shutil.rmtree(repo.path / ".dvc" / "cache")  # a cleaned cache: pull must ask the remote
    down = repo.daily("--date", str(day2), "--commit", extra_env=mailbox.env())
    assert down.returncode == 0, down.stdout + down.stderr
    assert "dvc pull           failed; the workspace holds" in down.stdout
    assert "dvc push           FAILED" in down.stdout
    assert "dvc gc             skipped: the DVC remote does not hold every day yet" in down.stdout
    day2_commit = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    assert repo.run("git", "log", "-1", "--format=%s").stdout.strip() == f"daily run {day2}"
    report = (repo.path / "reports" / "daily" / f"{day2}.txt").read_text()
    assert "dvc push failed" in report and "dvc pull failed" in report
    subjects = [m["Subject"] for m in mailbox.messages]
    assert any("dvc push failed, the next run retries" in s for s in subjects)

    repo.run(sys.executable, "-m", "dvc", "remote", "add", "-d", "--local", "--force", "store",
             store)
    before = _remote_objects(repo)
    up = repo.daily("--date", str(day3), "--commit")
    assert up.returncode == 0, up.stdout + up.stderr
    lock = yaml.safe_load(repo.run("git", "show", f"{day2_commit}:dvc.lock").stdout)
    day2_models = next(o["md5"] for o in lock["stages"]["train"]["outs"]
                       if o["path"] == "models")
    assert day2_models.removesuffix(".dir") in {o.removesuffix(".dir")
                                               for o in _remote_objects(repo) - before}
    assert "pushed the data of 1 earlier run(s)" in (
        repo.path / "reports" / "daily" / f"{day3}.txt").read_text()


def test_stale_served_lists_are_alerted_even_when_the_day_fails(repo, mailbox, redis_server,
                                                                 redis_client):
    """The API still serves a version built from 2026-11-01's data (published with
    serving.max_age_hours 36): every daily run mails an alert that the lists are stale, and the
    report says how old they are: a week of held-back days must not go unnoticed."""
    from dailyrec.publish.settings import PublishSettings
    from dailyrec.publish import writer
    from tests import tiny_models

    old = dt.date(2026, 11, 1)
    writer.publish(tiny_models.bundle(n_users=50, n_items=20, seed=3), redis_client,
                   PublishSettings(top_n=5, filter_already_liked=True, batch_size=100,
                                   keep_versions=2, similar_items=False, explain_items=0,
                                   max_age_hours=36), run_date=old, progress=False)
    env = {**mailbox.env(), "REDIS_URL": redis_server.url}
    day = dt.date(2026, 11, 20)
    repo.fail("train", day)
    failed = repo.daily("--date", str(day), extra_env=env)
    assert failed.returncode != 0
    served = [line for line in failed.stdout.splitlines() if line.startswith(f"[{day}] served")]
    assert len(served) == 1 and "STALE" in served[0] and f"{old}.1" in served[0], failed.stdout
    subjects = [" ".join(m["Subject"].split()) for m in mailbox.messages]
    assert any("served recommendations are stale" in s and f"{old}.1" in s for s in subjects), \
        subjects
    stale = next(m for m in mailbox.messages if "stale" in m["Subject"])
    body = stale.get_body(("plain",)).get_content()
    assert "max_age_hours: 36" in body and f"served_run_date: {old}" in body

    (repo.path / f"fail-train-{day}").unlink()
    mailbox.messages.clear()
    good = repo.daily("--date", str(dt.date(2026, 11, 21)), extra_env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    report = next(m for m in mailbox.messages if "ALERT" not in m["Subject"])
    text = report.get_body(("plain",)).get_content()
    assert f"WARNING: Served now: version {old}.1, built from the data of {old}" in \
        " ".join(text.split()), text


def _cache_objects(repo) -> set[str]:
    cache = repo.path / ".dvc" / "cache" / "files"
    return {p.parent.name + p.name for p in cache.rglob("*") if p.is_file()}


def _models_md5(repo, rev: str) -> str:
    lock = yaml.safe_load(repo.run("git", "show", f"{rev}:dvc.lock").stdout)
    return next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models")


def test_the_local_cache_keeps_the_workspace_and_the_remote_keeps_every_day(repo):
    """retention.dvc_cache: workspace. After each pushed day the local cache holds only what the
    workspace uses, so the machine's disk stays bounded; every day's data and model stay on the
    remote, and an older day's commit still pulls whole from it."""
    commits = []
    for k in range(3):
        day = dt.date(2026, 11, 20) + dt.timedelta(days=k)
        done = repo.daily("--date", str(day), "--commit")
        assert done.returncode == 0, done.stdout + done.stderr
        [line] = [x for x in done.stdout.splitlines() if x.startswith(f"[{day}] dvc gc ")]
        assert "MiB freed from the local cache" in line, done.stdout
        commits.append(repo.run("git", "rev-parse", "HEAD").stdout.strip())
    models = [_models_md5(repo, sha).removesuffix(".dir") for sha in commits]
    assert len(set(models)) == 3
    cached, remote = _cache_objects(repo), _remote_objects(repo)
    assert {m + ".dir" for m in models} <= remote
    assert models[2] + ".dir" in cached
    assert not {m + ".dir" for m in models[:2]} & cached, "older days stayed in the local cache"
    # The cache holds nothing the workspace does not use: a second collection finds nothing.
    dry = repo.run(sys.executable, "-m", "dvc", "gc", "--workspace", "--force", "--dry")
    assert "No unused 'repo' cache to remove." in dry.stdout, dry.stdout
    # Day 1 rebuilt from its commit: its dvc.lock pulls its model back from the remote.
    repo.run("git", "checkout", "-q", commits[0], "--", "dvc.lock")
    repo.run(sys.executable, "-m", "dvc", "pull", "train")
    assert (repo.path / "models" / "part.txt").read_text() == "train 2026-11-20\n"


def test_the_cache_is_not_collected_while_an_earlier_push_is_pending(repo):
    """A day whose data the remote has not received is only in the local cache: while any push is
    pending, the cache is left whole, even on a day whose own push succeeded."""
    day1, day2 = dt.date(2026, 11, 20), dt.date(2026, 11, 21)
    assert repo.daily("--date", str(day1), "--commit").returncode == 0
    day1_models = _models_md5(repo, "HEAD")
    state = Path(repo.env["DAILYREC_STATE_DIR"]) / "daily.json"
    # A pending push that cannot succeed (its commit is unknown): it stays pending.
    state.write_text(json.dumps({**json.loads(state.read_text()), "pending_push": ["0" * 40]}))
    done = repo.daily("--date", str(day2), "--commit")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[{day2}] dvc push           done" in done.stdout, done.stdout
    assert f"[{day2}] dvc gc             skipped: the DVC remote does not hold every day yet" in \
        done.stdout.splitlines(), done.stdout
    assert day1_models in _cache_objects(repo)
    assert json.loads(state.read_text())["pending_push"] == ["0" * 40]


def test_mlflow_retention_that_fails_is_alerted_and_does_not_fail_the_day(repo, mailbox):
    """Pruning old model versions runs after the day is pushed and committed: an MLflow that does
    not answer then is alerted and noted in the report, and the day stands."""
    day = dt.date(2026, 11, 20)
    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    done = repo.daily("--date", str(day), "--commit", extra_env={**mailbox.env(), **down})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[{day}] mlflow versions    FAILED (ServiceUnavailable); the next run prunes" in \
        done.stdout.splitlines(), done.stdout
    assert repo.run("git", "log", "-1", "--format=%s").stdout.strip() == f"daily run {day}"
    subjects = [m["Subject"] for m in mailbox.messages]
    assert any("MLflow retention failed, the next run prunes" in s for s in subjects), subjects
    report = (repo.path / "reports" / "daily" / f"{day}.txt").read_text()
    assert "MLflow retention failed (ServiceUnavailable)" in report


def test_the_cache_keeps_the_outputs_of_dvc_experiments(repo):
    """An engineer's `dvc exp run` on the scheduler's machine is not the workspace, and the
    runner never pushes it: its outputs stay in the local cache for `dvc exp apply`."""
    day1, day2 = dt.date(2026, 11, 20), dt.date(2026, 11, 21)
    assert repo.daily("--date", str(day1), "--commit").returncode == 0
    repo.run(sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "tried",
             "-S", "run.date=2026-11-25")
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())  # the experiment's, applied
    tried = next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models")
    done = repo.daily("--date", str(day2), "--commit")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MiB freed from the local cache" in done.stdout, done.stdout
    assert tried in _cache_objects(repo) and _models_md5(repo, "HEAD") != tried
    assert _models_md5(repo, "HEAD~1") not in _cache_objects(repo)  # day 1's: collected
    repo.run(sys.executable, "-m", "dvc", "exp", "apply", "tried")
    assert (repo.path / "models" / "part.txt").read_text() == "train 2026-11-25\n"


def test_a_bad_retention_setting_is_named_and_alerted_and_the_day_stands(repo, mailbox):
    """retention is read after the day is done: a value it cannot use is said (which key, what it
    must be), alerted and noted, the day stands, and nothing is collected."""
    raw = yaml.safe_load((repo.path / "params.yaml").read_text())
    raw["retention"]["dvc_cache"] = "nothing"
    (repo.path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    day = dt.date(2026, 11, 20)
    done = repo.daily("--date", str(day), "--commit", extra_env=mailbox.env())
    assert done.returncode == 0, done.stdout + done.stderr
    said = "retention.dvc_cache must be one of ['workspace', 'all'], got 'nothing'"
    [line] = [x for x in done.stdout.splitlines() if x.startswith(f"[{day}] retention ")]
    assert "skipped: " in line and said in line, done.stdout
    assert not any(x.startswith(f"[{day}] dvc gc ") for x in done.stdout.splitlines())
    subjects = [m["Subject"] for m in mailbox.messages]
    assert any("retention skipped, params.yaml is not valid" in s for s in subjects), subjects
    assert said in (repo.path / "reports" / "daily" / f"{day}.txt").read_text()


def _state(repo) -> dict:
    return json.loads((Path(repo.env["DAILYREC_STATE_DIR"]) / "daily.json").read_text())


def test_a_rejected_day_is_recorded_and_never_blocks_later_nights(repo, mailbox):
    """validate rejecting a day is a verdict, like the gate: the day is pushed, committed,
    alerted and reported, and counts as done, so the next nights run their own day (before: each
    retried the rejected day first, was rejected again, and exited 65, night after night)."""
    days = [dt.date(2026, 11, 20) + dt.timedelta(days=i) for i in range(3)]
    assert repo.daily("--date", str(days[0]), "--commit").returncode == 0
    repo.run("touch", f"rejects-{days[1]}")
    rejected = repo.daily("--date", str(days[1]), "--commit", extra_env=mailbox.env())
    assert rejected.returncode == 65, rejected.stdout + rejected.stderr
    line = next(x for x in rejected.stdout.splitlines() if x.startswith(f"[{days[1]}] filter_n"))
    assert "REJECTED: day 2026-11-20 is rejected" in line and "later days leave" in line, line
    assert not any(x.startswith(f"[{days[1]}] train ") for x in rejected.stdout.splitlines())
    assert "was rejected by validate: left out of training" in rejected.stderr
    assert repo.run("git", "log", "-1", "--format=%s").stdout.strip() == f"daily run {days[1]}"
    assert _state(repo)["last_completed"] == str(days[1])
    [alert, report] = mailbox.messages
    assert alert["Subject"] == (f"[dailyrec] ALERT: daily run {days[1]}: the data of {days[0]} "
                                "was rejected, nothing trained or published")
    assert f"python -m stages.validate admit {days[0]}" in text_of(alert)
    assert "REJECTED" in report["Subject"]

    later = repo.daily("--date", str(days[2]), "--commit")
    assert later.returncode == 0, later.stdout + later.stderr
    assert "catching up" not in later.stdout and f"[{days[1]}]" not in later.stdout
    assert f"[{days[2]}] publish            ran in" in later.stdout, later.stdout


def test_a_rejected_day_does_not_stop_a_backfill(repo):
    days = [dt.date(2026, 11, 20) + dt.timedelta(days=i) for i in range(3)]
    repo.run("touch", f"rejects-{days[1]}")
    proc = repo.daily("--from", str(days[0]), "--to", str(days[2]), "--commit")
    assert proc.returncode == 65, proc.stdout + proc.stderr
    assert "backfill stopped" not in proc.stderr
    assert f"[{days[2]}] publish            ran in" in proc.stdout, proc.stdout
    subjects = repo.run("git", "log", "--format=%s").stdout.splitlines()
    assert subjects[:3] == [f"daily run {d}" for d in reversed(days)]


def test_a_future_date_is_refused_and_changes_nothing(repo):
    params = (repo.path / "params.yaml").read_text()
    ahead = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=2)
    for args in (("--date", str(ahead)), ("--from", "2026-11-20", "--to", str(ahead))):
        proc = repo.daily(*args, "--commit")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{ahead} is in the future" in proc.stderr and "Nothing was changed" in \
            proc.stderr, proc.stderr
    assert (repo.path / "params.yaml").read_text() == params
    assert not (repo.path / "dvc.lock").exists()
    tomorrow = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1)
    assert repo.daily("--date", str(tomorrow), "--no-catch-up").returncode == 0


def test_rebuilding_a_past_day_keeps_the_newer_state_and_branch(repo):
    """A past day run again is rebuilt (its outputs, its push) but neither rewinds the runner's
    last completed day nor moves the branch back to it; the next night goes on from the newest."""
    days = [dt.date(2026, 11, 20) + dt.timedelta(days=i) for i in range(4)]
    for day in days[1:3]:
        assert repo.daily("--date", str(day), "--commit").returncode == 0
    tip = repo.run("git", "rev-parse", "HEAD").stdout
    past = repo.daily("--date", str(days[0]), "--commit")
    assert past.returncode == 0, past.stdout + past.stderr
    assert f"rebuilding {days[0]}, older than the last day run ({days[2]})" in past.stdout
    assert f"[{days[0]}] git commit         skipped: {days[0]} is older" in past.stdout
    assert repo.run("git", "rev-parse", "HEAD").stdout == tip
    assert _state(repo)["last_completed"] == str(days[2])
    nxt = repo.daily("--date", str(days[3]), "--commit")
    assert nxt.returncode == 0 and "catching up" not in nxt.stdout, nxt.stdout


def test_a_hung_stage_is_stopped_at_its_deadline(repo, mailbox):
    raw = yaml.safe_load((repo.path / "params.yaml").read_text())
    raw["run"]["stage_timeout_minutes"] = 0.05  # 3 s
    (repo.path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (repo.path / "hold").touch()  # fetch_delta waits (up to 120 s) while this exists
    proc = repo.daily("--date", "2026-11-20", extra_env=mailbox.env())
    assert proc.returncode == 69, proc.stdout + proc.stderr
    assert "killed after 0.05 minutes (run.stage_timeout_minutes)" in proc.stdout, proc.stdout
    assert any("failed at stage fetch_delta (unavailable)" in m["Subject"]
               for m in mailbox.messages)


def test_a_full_disk_is_named_not_a_bug(repo, tmp_path):
    """DVC fails to save into a full cache (exit 255): the runner says the disk is full and
    where, and counts it as unavailable (69: retry once there is space), not as a bug."""
    cache = repo.path / ".dvc" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {cache} && "
         f"dd if=/dev/zero of={cache}/filler bs=1k count=16 2>/dev/null; "
         f"exec {sys.executable} -m stages.daily --date 2026-11-20"],
        cwd=repo.path, env=repo.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 69, proc.stdout + proc.stderr
    assert "no space left on the device of" in proc.stdout, proc.stdout
    assert "bug" not in next(x for x in proc.stdout.splitlines() if "FAILED" in x)


def _damage_cache_object(repo, stage: str, path: str) -> Path:
    """Overwrite the cache object of the one file of a directory output (a disk error, say)."""
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    digest = next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)
    listing = repo.path / ".dvc/cache/files/md5" / digest[:2] / digest[2:]
    inner = json.loads(listing.read_text())[0]["md5"]
    damaged = repo.path / ".dvc/cache/files/md5" / inner[:2] / inner[2:]
    damaged.chmod(0o644)
    damaged.write_text("garbage\n")
    return damaged


def test_a_damaged_cache_object_is_repaired_and_reported_truthfully(repo, mailbox):
    """DVC says "not in cache" for an output whose cache object is damaged, whatever the
    workspace holds: a killed stage's half-written output hides behind it. The runner checks
    the workspace by hash, restores it from the remote, and says what it found."""
    day1, day2, day3 = (dt.date(2026, 11, 20) + dt.timedelta(days=k) for k in range(3))
    assert repo.daily("--date", str(day1), "--commit").returncode == 0
    _damage_cache_object(repo, "train", "models")
    (repo.path / "models" / "part.txt").chmod(0o644)
    (repo.path / "models" / "part.txt").write_text("half writt")  # and a killed train's output
    second = repo.daily("--date", str(day2), "--commit", extra_env=mailbox.env())
    assert second.returncode == 0, second.stdout + second.stderr
    assert "restored models to what dvc.lock records" in second.stdout, second.stdout

    # The workspace intact, the cache's copy damaged, the remote down: said as it is.
    _damage_cache_object(repo, "train", "models")
    repo.run(sys.executable, "-m", "dvc", "remote", "add", "-d", "--local", "--force", "store",
             f"http://127.0.0.1:{free_port()}/nowhere")
    third = repo.daily("--date", str(day3), "--commit", extra_env=mailbox.env())
    assert third.returncode == 0, third.stdout + third.stderr
    assert ("the local DVC cache's copy of models is missing or damaged and the remote could "
            "not replace it; the workspace holds what dvc.lock records (checked by hash)") in \
        third.stdout, third.stdout
