"""The two images, tested on a machine that cannot build them (no Docker daemon, no registry).

- deploy/install.sh, the one install step of both Dockerfiles, runs here in a fresh virtualenv
  with the training image's set (the base set plus implicit's CUDA build, which installs without
  a GPU);
- hadolint lints both Dockerfiles and reports nothing, and every rule they silence has its
  reason written above it;
- the Dockerfiles hold what the images promise (the CUDA 13 runtime, the scheduler's command,
  a user without privileges, the API server (serving/server.py), a health check on /healthz),
  and copy only files that exist;
- deploy/docker/run_job.py, the training image's entry point, runs against a real git
  repository: it checks the project out, runs the command, pushes the day's commit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.mailbox import Mailbox
from tests.servers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
TRAIN, SERVE = DOCKER / "train.Dockerfile", DOCKER / "serve.Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
RUN_JOB = DOCKER / "run_job.py"


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version
    return pins


# --------------------------------------------------------------------------- the install script

def test_install_script_installs_the_training_set_in_a_fresh_virtualenv(tmp_path):
    venv = tmp_path / "venv"
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "install.sh"), "--venv", str(venv),
                           "--extra", "gpu", "--python", sys.executable],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"installed {ROOT}[gpu] into {venv}" in proc.stdout
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json",
                             "--disable-pip-version-check"], capture_output=True, text=True,
                            check=True).stdout
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(freeze)}
    pins = lock_pins()
    unpinned = {n: v for n, v in installed.items()
                if n not in {"pip", "setuptools", "wheel", "dailyrec"} and pins.get(n) != v}
    assert unpinned == {}
    # The GPU build is there: implicit's CUDA support and the memory manager it needs.
    assert installed["rmm-cu13"] == pins["rmm-cu13"]
    assert installed["implicit"] == pins["implicit"]
    # Not editable: the image gets a copy of the package, with its data files.
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import dailyrec, serving; print(dailyrec.__file__); "
                           "print(serving.__file__)"], cwd="/", capture_output=True, text=True,
                          check=True).stdout.split()
    assert all(str(venv) in path for path in site)
    assert list((Path(site[0]).parent / "templates").glob("daily.*.j2"))


# --------------------------------------------------------------------------- hadolint

def hadolint(*paths: Path) -> list[dict]:
    # Every level counts (error, warning, info, style): anything reported fails the test.
    proc = subprocess.run([str(HADOLINT), "--no-color", "-f", "json", "--failure-threshold",
                           "style", *map(str, paths)], capture_output=True, text=True, timeout=60)
    findings = json.loads(proc.stdout or "[]")
    assert (proc.returncode == 0) == (findings == []), proc.stderr
    return findings


def test_hadolint_reports_nothing_on_both_dockerfiles():
    assert hadolint(TRAIN, SERVE) == []


def test_every_silenced_rule_is_justified_above_it():
    for dockerfile in (TRAIN, SERVE):
        lines = dockerfile.read_text().splitlines()
        for number, line in enumerate(lines):
            if "hadolint ignore=" not in line:
                continue
            reason = []
            for above in reversed(lines[:number]):
                if not above.startswith("#"):
                    break
                reason.append(above.lstrip("# "))
            assert len(" ".join(reason).split()) >= 8, \
                f"{dockerfile.name}:{number + 1}: {line.strip()} has no reason written above it"


def test_the_linter_is_live_without_the_justified_ignores(tmp_path):
    """Drop the pragmas: the rules they silence are reported, so the clean result above is the
    linter's verdict, not a linter that checks nothing."""
    for dockerfile in (TRAIN, SERVE):
        text = dockerfile.read_text()
        silenced = set(re.findall(r"hadolint ignore=([\w,]+)", text))
        if not silenced:
            continue
        bare = tmp_path / dockerfile.name
        bare.write_text(re.sub(r"^# hadolint ignore=.*\n", "", text, flags=re.M))
        reported = {f["code"] for f in hadolint(bare)}
        assert {code for group in silenced for code in group.split(",")} <= reported


# --------------------------------------------------------------------------- what the images hold

def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    joined, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                joined.append((word.upper(), rest.strip()))
            current = ""
    return joined


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_the_training_image_runs_the_schedulers_command_on_cuda_13():
    steps = instructions(TRAIN)
    base = [rest for word, rest in steps if word == "FROM"]
    assert len(base) == 1 and re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-runtime-ubuntu\d+\.\d+",
                                           base[0])
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "deploy/install.sh --venv /opt/dailyrec/venv --extra gpu --python python3.11" in runs
    assert "python3.11" in runs and "git" in runs
    last = dict(final_stage(TRAIN)[::-1])  # the last of each instruction wins
    assert json.loads(last["CMD"]) == ["python", "-m", "stages.daily", "--commit"]
    assert json.loads(last["ENTRYPOINT"]) == ["/opt/dailyrec/venv/bin/python",
                                              "/opt/dailyrec/run_job.py"]
    assert re.fullmatch(r"\d+:\d+", last["USER"]) and not last["USER"].startswith("0")


def test_the_serving_image_is_slim_unprivileged_and_checks_its_health():
    stage = final_stage(SERVE)
    last = dict(stage[::-1])
    assert re.fullmatch(r"python:3\.11-slim-\w+", last["FROM"])
    assert re.fullmatch(r"\d+:\d+", last["USER"]) and not last["USER"].startswith("0")
    assert "/healthz" in last["HEALTHCHECK"] and last["HEALTHCHECK"].startswith("--interval")
    assert json.loads(last["CMD"]) == ["python", "-m", "serving.server"]
    build_runs = " ".join(rest for word, rest in instructions(SERVE) if word == "RUN")
    assert "deploy/install.sh --venv /opt/dailyrec/venv --python python3.11" in build_runs
    assert "--extra" not in build_runs  # the serving set has no CUDA


def test_every_copied_file_exists():
    for dockerfile in (TRAIN, SERVE):
        for word, rest in instructions(dockerfile):
            if word != "COPY" or rest.startswith("--from"):
                continue
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such file"


# --------------------------------------------------------------------------- run_job.py

def git(*args, cwd=None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def origin(tmp_path):
    """A bare repository holding a small DVC project with the committed remotes, as the job's
    git server would."""
    bare = tmp_path / "origin.git"
    git("init", "--quiet", "--bare", "--initial-branch", "main", str(bare))
    seed = tmp_path / "seed"
    git("clone", "--quiet", str(bare), str(seed))
    shutil.copy(ROOT / "requirements.lock", seed / "requirements.lock")
    (seed / "params.yaml").write_text("run:\n  date: '2026-11-30'\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--quiet"], cwd=seed, check=True)
    (seed / ".dvc" / "config").write_text((ROOT / ".dvc" / "config").read_text())
    git("add", "-A", cwd=seed)
    git("-c", "user.name=t", "-c", "user.email=t@example.test", "commit", "--quiet", "-m", "seed",
        cwd=seed)
    git("push", "--quiet", "origin", "main", cwd=seed)
    return bare


def job_env(tmp_path, origin, **extra) -> dict:
    image_lock = tmp_path / "image-requirements.lock"
    shutil.copy(ROOT / "requirements.lock", image_lock)
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
            "DAILYREC_GIT_URL": f"file://{origin}", "DAILYREC_GIT_BRANCH": "main",
            "DAILYREC_WORKDIR": str(tmp_path / "work" / "project"),
            "DAILYREC_IMAGE_LOCK": str(image_lock), "DAILYREC_STATE_DIR": str(tmp_path / "state"),
            "DVC_NO_ANALYTICS": "1", **extra}


# A stand-in for `python -m stages.daily --commit`: it records the day as the runner does
# (params.yaml's run.date, one commit) and ends with the status given.
DAY = ("import subprocess, sys, os\n"
       "open('params.yaml', 'w').write(\"run:\\n  date: '2026-12-01'\\n\")\n"
       "open('seen-env.txt', 'w').write(os.environ.get('MLFLOW_TRACKING_TOKEN', ''))\n"
       "subprocess.run(['git', 'commit', '-q', '-m', 'daily run 2026-12-01', '--', "
       "'params.yaml'], check=True)\n"
       "sys.exit(int(sys.argv[1]))\n")


def run_job(env: dict, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_JOB), *command], env=env, capture_output=True,
                          text=True, timeout=180)


def test_run_job_checks_out_runs_and_pushes_the_day(tmp_path, origin):
    env = job_env(tmp_path, origin)
    proc = run_job(env, sys.executable, "-c", DAY, "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert git("log", "-1", "--format=%s", "main", cwd=origin) == "daily run 2026-12-01"
    workdir = Path(env["DAILYREC_WORKDIR"])
    local = (workdir / ".dvc" / "config.local").read_text()
    assert "remote = gcs" in local  # the day pulls from and pushes to the cloud remote


def test_run_job_rebases_onto_a_branch_that_moved(tmp_path, origin):
    other = tmp_path / "other"
    git("clone", "--quiet", str(origin), str(other))
    (other / "README").write_text("a change pushed while the job ran\n")
    git("add", "README", cwd=other)
    git("-c", "user.name=t", "-c", "user.email=t@example.test", "commit", "-q", "-m", "meanwhile",
        cwd=other)
    # The command pushes the other change first, as a person pushing during the run would.
    moved = ("import subprocess\n"
             f"subprocess.run(['git', '-C', {str(other)!r}, 'push', '-q', 'origin', 'main'],"
             " check=True)\n" + DAY)
    proc = run_job(job_env(tmp_path, origin), sys.executable, "-c", moved, "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert git("log", "--format=%s", "-2", "main", cwd=origin).splitlines() == [
        "daily run 2026-12-01", "meanwhile"]


def test_a_day_the_gate_kept_back_is_pushed_and_ends_the_execution_well(tmp_path, origin):
    proc = run_job(job_env(tmp_path, origin), sys.executable, "-c", DAY, "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "quality gate" in proc.stdout
    assert git("log", "-1", "--format=%s", "main", cwd=origin) == "daily run 2026-12-01"


def test_a_failed_day_keeps_its_status(tmp_path, origin):
    proc = run_job(job_env(tmp_path, origin), sys.executable, "-c", DAY, "65")
    assert proc.returncode == 65


def test_a_checkout_pinned_differently_from_the_image_is_refused_and_alerted(tmp_path, origin):
    env = job_env(tmp_path, origin)
    Path(env["DAILYREC_IMAGE_LOCK"]).write_text("numpy==1.0.0\n")
    with Mailbox() as box:
        proc = run_job({**env, **box.env()}, sys.executable, "-c", DAY, "0")
        assert proc.returncode == 2
        assert "requirements.lock differs" in proc.stdout
        assert [m["Subject"] for m in box.messages] == [
            "[dailyrec] ALERT: daily job refused to start"]
    assert git("log", "-1", "--format=%s", "main", cwd=origin) == "seed"  # nothing ran


def test_require_gpu_refuses_a_machine_without_cuda(tmp_path, origin):
    import implicit.gpu

    env = job_env(tmp_path, origin, DAILYREC_REQUIRE_GPU="true")
    with Mailbox() as box:
        proc = run_job({**env, **box.env()}, sys.executable, "-c", DAY, "0")
        if implicit.gpu.HAS_CUDA:  # a machine with a usable GPU runs the day
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return
        assert proc.returncode == 2
        assert "cannot use CUDA" in proc.stdout
        assert len(box.messages) == 1


def test_the_mlflow_token_comes_from_the_metadata_server(tmp_path, origin):
    audience = "https://dailyrec-mlflow-123.europe-west4.run.app"
    asked = []

    class Metadata(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's hook name
            asked.append((self.path, self.headers.get("Metadata-Flavor")))
            body = b"id-token-for-mlflow"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = job_env(tmp_path, origin, DAILYREC_MLFLOW_AUDIENCE=audience,
                      GCE_METADATA_HOST=f"127.0.0.1:{server.server_address[1]}")
        proc = run_job(env, sys.executable, "-c", DAY, "0")
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path, flavor = asked[0]
    assert path.startswith("/computeMetadata/v1/instance/service-accounts/default/identity?")
    assert "audience=https%3A%2F%2Fdailyrec-mlflow-123" in path and flavor == "Google"
    seen = Path(env["DAILYREC_WORKDIR"]) / "seen-env.txt"
    assert seen.read_text() == "id-token-for-mlflow"


def test_the_git_token_never_reaches_the_url_or_the_log(tmp_path, origin):
    env = job_env(tmp_path, origin, DAILYREC_GIT_TOKEN="ghp-secret-token-value")
    proc = run_job(env, sys.executable, "-c", DAY, "0")
    assert proc.returncode == 0
    assert "ghp-secret-token-value" not in proc.stdout + proc.stderr
    config = (Path(env["DAILYREC_WORKDIR"]) / ".git" / "config").read_text()
    assert "ghp-secret-token-value" not in config
    (tmp_path / "second").mkdir()
    refused = run_job({**job_env(tmp_path / "second", origin),
                       "DAILYREC_GIT_URL": "https://user:pw@git.example.test/r.git"},
                      sys.executable, "-c", DAY, "0")
    assert refused.returncode == 2 and "carries credentials" in refused.stdout
