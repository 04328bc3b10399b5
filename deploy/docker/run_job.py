"""The training image's entry point: check out the project, run the scheduler's command in it,
push the day's commit back.

    run_job.py [COMMAND ...]        default (the image's CMD): python -m stages.daily --commit

Every Cloud Run execution starts from the same image on an empty disk, while the daily runner
expects what a scheduler's machine has: a git checkout whose params.yaml and dvc.lock say what the
last run did (`dvc pull` restores the history they record, catch-up reads the last run.date from
them) and where `--commit` records the day. So, in order:

1. clone DAILYREC_GIT_URL, branch DAILYREC_GIT_BRANCH (main), into DAILYREC_WORKDIR; the token
   (DAILYREC_GIT_TOKEN) reaches git through GIT_ASKPASS, never in a URL, a file or the log;
2. refuse (exit 2) when the checkout's requirements.lock differs from the one the image was built
   from (DAILYREC_IMAGE_LOCK): the code would run on dependencies it was not pinned to;
3. with DAILYREC_REQUIRE_GPU=true, refuse (exit 2, with an alert) when implicit cannot use CUDA,
   instead of training on the CPU until the task's time limit;
4. make the DVC remote DAILYREC_DVC_REMOTE (gcs) the checkout's default, at DAILYREC_DVC_URL when
   set (a bucket other than the committed one), in .dvc/config.local;
5. with DAILYREC_MLFLOW_AUDIENCE set, get an ID token for the MLflow server (a Cloud Run service
   that admits only callers with the invoker role) from the metadata server, as
   MLFLOW_TRACKING_TOKEN;
6. run the command in the checkout, then push what it committed, whatever its exit status (a day
   the quality gate kept back, exit 3, is committed too). When the branch moved meanwhile, rebase
   once and push again; a push that still fails is alerted and ends the job with status 69.

Exit status: the command's (3, a day the quality gate kept back, becomes 0: a verdict the runner
has mailed, not a failed execution), or 2 (a refusal above), or 69 (the push failed).
Alerts go through dailyrec.ops.notify (DAILYREC_SMTP_* settings), like the runner's own.
"""

from __future__ import annotations

import filecmp
import os
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_COMMAND = ["python", "-m", "stages.daily", "--commit"]
EXIT_CONFIG = 2  # dailyrec.core.errors.ConfigError's status
EXIT_UNAVAILABLE = 69  # dailyrec.core.errors.ServiceUnavailable's status
# Statuses of the runner that are verdicts, not failures of the job: the execution succeeds, so
# the trigger's deadline check does not alert a second time (the runner has mailed already).
DONE_STATUSES = {3: "the quality gate kept the day's model back (status 3, alerted by the "
                    "runner): the execution counts as done"}
# Metadata server of the Cloud Run instance; GCE_METADATA_HOST is the name Google's own client
# libraries read, so a test can point it at a loopback server.
METADATA_HOST = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
# Git asks this for the user name and the password; the answer is read from the environment at
# that moment, so the token is never written anywhere.
ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "${DAILYREC_GIT_USER:-x-access-token}" ;;
  *) printf '%s\\n' "$DAILYREC_GIT_TOKEN" ;;
esac
"""


class Refused(Exception):
    """The job cannot run as configured; its message says why."""

    def __init__(self, message: str, exit_code: int = EXIT_CONFIG):
        super().__init__(message)
        self.exit_code = exit_code


def say(message: str) -> None:
    print(f"run_job: {message}", flush=True)


def alert(subject: str, message: str) -> None:
    """Mail an alert through the project's notifier (it never raises; without SMTP settings it
    only logs)."""
    from dailyrec.ops import notify

    notify.alert(subject, context={"host": socket.gethostname(), "detail": message,
                                   "execution": os.environ.get("CLOUD_RUN_EXECUTION", "")})


def git(*args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, ["git", *args], proc.stdout,
                                            proc.stderr)
    return proc.stdout.strip()


def git_env(askpass: Path) -> dict[str, str]:
    return {**os.environ, "GIT_ASKPASS": str(askpass), "GIT_TERMINAL_PROMPT": "0"}


def clone(workdir: Path, env: dict) -> str:
    url = os.environ.get("DAILYREC_GIT_URL", "").strip()
    if not url:
        raise Refused("DAILYREC_GIT_URL is not set: the job needs the project's git repository")
    if "@" in urllib.parse.urlsplit(url).netloc:
        raise Refused("DAILYREC_GIT_URL carries credentials; put the token in DAILYREC_GIT_TOKEN")
    branch = os.environ.get("DAILYREC_GIT_BRANCH", "").strip() or "main"
    if workdir.exists() and any(workdir.iterdir()):
        raise Refused(f"{workdir} is not empty: each execution starts from a fresh checkout")
    try:
        # A short history is enough to commit on top of and to rebase onto a moved branch.
        git("clone", "--quiet", "--depth", "20", "--branch", branch, url, str(workdir), env=env)
    except subprocess.CalledProcessError as err:
        raise Refused(f"git clone of branch {branch} failed: {err.stderr.strip()}",
                      EXIT_UNAVAILABLE) from None
    git("config", "user.name", os.environ.get("DAILYREC_GIT_AUTHOR_NAME", "dailyrec job"),
        cwd=workdir)
    git("config", "user.email",
        os.environ.get("DAILYREC_GIT_AUTHOR_EMAIL", "dailyrec-job@localhost"), cwd=workdir)
    return branch


def check_lock(workdir: Path) -> None:
    image_lock = os.environ.get("DAILYREC_IMAGE_LOCK", "").strip()
    if not image_lock:
        return
    if not filecmp.cmp(image_lock, workdir / "requirements.lock", shallow=False):
        raise Refused("the checkout's requirements.lock differs from the one this image was built "
                      f"from ({image_lock}): build and push the training image from this commit")


def check_gpu() -> None:
    if os.environ.get("DAILYREC_REQUIRE_GPU", "").strip().lower() not in ("1", "true", "yes"):
        return
    import implicit.gpu

    if not implicit.gpu.HAS_CUDA:
        raise Refused("DAILYREC_REQUIRE_GPU is set but implicit cannot use CUDA here: no GPU "
                      "attached, or a driver older than CUDA 13 needs (580); see docs/deploy.md")


def use_dvc_remote(workdir: Path) -> None:
    remote = os.environ.get("DAILYREC_DVC_REMOTE", "gcs").strip()
    if not remote:
        return
    dvc = [sys.executable, "-m", "dvc"]
    url = os.environ.get("DAILYREC_DVC_URL", "").strip()
    if url:
        subprocess.run([*dvc, "remote", "modify", "--local", remote, "url", url], cwd=workdir,
                       check=True, capture_output=True)
    subprocess.run([*dvc, "remote", "default", "--local", remote], cwd=workdir, check=True,
                   capture_output=True)


def mlflow_token() -> str | None:
    audience = os.environ.get("DAILYREC_MLFLOW_AUDIENCE", "").strip()
    if not audience:
        return None
    query = urllib.parse.urlencode({"audience": audience})
    request = urllib.request.Request(
        f"http://{METADATA_HOST}/computeMetadata/v1/instance/service-accounts/default/identity"
        f"?{query}", headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.read().decode().strip()
    except OSError as err:
        raise Refused(f"no ID token for the MLflow server from the metadata server: {err}",
                      EXIT_UNAVAILABLE) from None


def push(workdir: Path, branch: str, start: str, env: dict) -> bool:
    """Push the commits the command made; rebase once onto a branch that moved. True when the
    remote has them (or there was nothing to push)."""
    if git("rev-parse", "HEAD", cwd=workdir) == start:
        say("nothing committed, nothing to push")
        return True
    for attempt in (1, 2):
        proc = subprocess.run(["git", "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"],
                              cwd=workdir, env=env, capture_output=True, text=True)
        if proc.returncode == 0:
            say(f"pushed {git('rev-parse', '--short', 'HEAD', cwd=workdir)} to {branch}")
            return True
        say(f"git push failed: {proc.stderr.strip()}")
        if attempt == 1:
            try:
                git("pull", "--quiet", "--rebase", "origin", branch, cwd=workdir, env=env)
            except subprocess.CalledProcessError as err:
                say(f"git pull --rebase failed: {err.stderr.strip()}")
                subprocess.run(["git", "rebase", "--abort"], cwd=workdir, capture_output=True)
                return False
    return False


def main(argv: list[str]) -> int:
    command = argv or DEFAULT_COMMAND
    workdir = Path(os.environ.get("DAILYREC_WORKDIR") or "/srv/dailyrec/project")
    with tempfile.TemporaryDirectory(prefix="dailyrec-git-") as tmp:
        askpass = Path(tmp) / "askpass"
        askpass.write_text(ASKPASS)
        askpass.chmod(stat.S_IRWXU)
        env = git_env(askpass)
        try:
            branch = clone(workdir, env)
            check_lock(workdir)
            check_gpu()
            use_dvc_remote(workdir)
            token = mlflow_token()
        except Refused as refused:
            say(f"not running: {refused}")
            alert("daily job refused to start", str(refused))
            return refused.exit_code
        start = git("rev-parse", "HEAD", cwd=workdir)
        say(f"running {' '.join(command)} in {workdir} at {start[:12]} ({branch})")
        command_env = {**os.environ, **({"MLFLOW_TRACKING_TOKEN": token} if token else {})}
        status = subprocess.run(command, cwd=workdir, env=command_env).returncode
        say(f"command ended with status {status}")
        if not push(workdir, branch, start, env):
            alert("daily job: the day's commit could not be pushed",
                  f"branch {branch}: the next run repeats the day from the last pushed commit")
            return status or EXIT_UNAVAILABLE
        if status in DONE_STATUSES:
            say(DONE_STATUSES[status])
            return 0
        return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
