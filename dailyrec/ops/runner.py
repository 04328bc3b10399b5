"""The daily run: the one command a scheduler calls (`python -m stages.daily`).

    python -m stages.daily [--date YYYY-MM-DD] [--commit]        one day (default: today, UTC)
    python -m stages.daily --from 2026-11-15 --to 2026-11-21     backfill, in order

Per day: set run.date in params.yaml, `dvc pull` (when a default remote is set; an empty remote
on the first day is fine), each stage of dvc.yaml in data-flow order with `dvc repro --single-item`,
`dvc push`, optionally commit params.yaml + dvc.lock (so the day's model can be rebuilt from that
commit), then the business owner's report. One progress line per stage with its duration; the full
output goes to logs/daily/DATE.log.

How the runner knows what happened, without reading DVC's console text: dvc.yaml gives the stages
and their order (dailyrec.ops.pipeline); each stage it starts writes how it ended to the file named by
DAILYREC_STAGE_STATUS (dailyrec.core.cli), so a stage that ran, its exit status and its error kind
(dailyrec.core.errors) come from the stage itself; a stage that wrote nothing did not run (DVC found it
unchanged, or restored it from the run-cache: its entry in dvc.lock says which).

Any failure mails an alert naming the failing stage and its error kind with the last lines of its
output, stops a backfill, and exits with that kind's status (docs/operations.md). A day whose
quality gate fails (publish refuses) is not a failure of the run: it is pushed and committed,
alerted and reported ("nothing published"), a backfill goes on, and the exit status is 3.

A lock (an flock on .dvc/tmp/daily-run.lock) keeps two runs from overlapping: a second run exits
with status 75 and says who holds it. The kernel drops the lock when its holder dies, so a crashed
run never blocks the next one.

Run it from the project root, with the venv's Python: its bin/ goes first on the stages' PATH.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import yaml

from dailyrec.core import env as env_settings
from dailyrec.core import errors, paths, settings
from dailyrec.ops import notify, pipeline
from dailyrec.core.env import STAGE_STATUS_FILE
from dailyrec.core.files import dvc_md5, parse_yaml
from dailyrec.ops import settings as ops

EXIT_NOT_PUBLISHED = errors.NotPublished.exit_code
EXIT_BUSY = errors.Busy.exit_code
EXIT_USAGE = errors.ConfigError.exit_code
# Used only when params.yaml itself cannot be read (the run must still alert on that).
FALLBACK_TAIL_LINES = 50
FALLBACK_THROTTLE_MINUTES = 60.0

PUBLISHED, NOT_PUBLISHED, REJECTED, FAILED = "published", "not published", "rejected", "failed"
REBUILT = "rebuilt, not served"  # a past day run again: newer lists stay served
# Used only when params.yaml itself cannot be read (as the two above).
FALLBACK_STAGE_TIMEOUT_MINUTES = 180.0
DEADLINE_KEY = ops.STAGE_TIMEOUT_KEY
# What a full disk looks like in the output of a process that did not say it in words (DVC's own
# writes end as "exit status 255").
NO_SPACE_MARKERS = ("No space left on device", "[Errno 28]", "Disk quota exceeded")
# Where DVC keeps its cache by default: what `dvc gc`'s progress line measures (a cache moved
# elsewhere reads 0 there; it is collected all the same).
DVC_CACHE = Path(".dvc/cache")


class StepFailed(Exception):
    """A step of the daily run (a pipeline stage, dvc pull/push, git commit) failed."""

    def __init__(self, step: str, status: int, tail: list[str], seconds: float,
                 kind: str | None = None, message: str = ""):
        if status == -signal.SIGTERM:
            self.why = "stopped by SIGTERM"
        elif status < 0:
            self.why = f"killed by signal {-status}"
        else:
            self.why = f"exit status {status}"
        self.kind = kind or ("unavailable" if step.startswith("dvc ") else errors.kind_of(status))
        super().__init__(f"{step} failed ({self.why}, {self.kind})"
                         + (f": {message}" if message else ""))
        self.step, self.status, self.tail, self.seconds = step, status, tail, seconds
        self.message = message

    @property
    def exit_code(self) -> int:
        """The runner's exit status for this failure: its error kind's."""
        by_kind = {kind: code for code, kind in errors.EXIT_CODES.items()}
        return by_kind.get(self.kind, 1) if self.kind not in ("ok", "not_published") else 1


# --------------------------------------------------------------------------- the lock

class RunLock:
    """An exclusive, non-blocking flock; the file holds who took it, for the refusal message."""

    def __init__(self, path: Path = paths.RUN_LOCK):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, holder: dict) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise errors.Busy(busy_message(self.path, info)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd = fd
        global _INHERITED_FDS
        _INHERITED_FDS = (fd,)
        return self

    def release(self) -> None:
        global _INHERITED_FDS
        _INHERITED_FDS = ()
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def busy_message(path: Path, info: str) -> str:
    try:
        holder = json.loads(info)
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
               f", for {holder.get('dates')}")
    except ValueError:
        who = "holder unknown"
    return (f"another daily run is in progress ({who}); not starting a second one. "
            f"Lock: {path.resolve()}")


# --------------------------------------------------------------------------- running commands

def child_env() -> dict[str, str]:
    """The environment for dvc and the stages: this venv first on PATH, telemetry off, and
    unbuffered Python so stage output arrives line by line, in order."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Terminated(Exception):
    """The runner got SIGTERM (systemd's TimeoutStartSec, `systemctl stop`, kill)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


# The run lock's descriptor, handed to every command the runner starts: a runner killed with
# SIGKILL leaves dvc (and the stage it waits for) running in its own session, and the flock stays
# held until they end, so no second runner can start on top of them.
_INHERITED_FDS: tuple[int, ...] = ()


def stream(cmd: list[str], env: dict, log: TextIO, on_line: Callable[[str], None],
           deadline_s: float | None = None, timed_out: threading.Event | None = None) -> int:
    """Run cmd with stdout+stderr merged, each line to the log and to on_line; its exit status.
    Past deadline_s seconds its process group is stopped (SIGTERM, then SIGKILL) and timed_out
    is set."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    # Its own process group, so a stop reaches dvc and the stage command it started.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, errors="replace", bufsize=1, start_new_session=True,
                            pass_fds=_INHERITED_FDS)
    assert proc.stdout is not None
    timer = None
    if deadline_s is not None:
        timer = threading.Timer(deadline_s, _stop_at_deadline, (proc, timed_out))
        timer.daemon = True
        timer.start()
    try:
        for line in proc.stdout:
            log.write(line)
            on_line(line.rstrip("\n"))
    except BaseException as stop:  # SIGTERM (Terminated), Ctrl-C: stop dvc and its stage too
        _signal_group(proc, signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        log.write(f"=== stopped ({type(stop).__name__}) ===\n")
        raise
    finally:
        if timer is not None:
            timer.cancel()
        log.flush()
    status = proc.wait()
    if timed_out is not None and timed_out.is_set():
        log.write(f"=== stopped at its deadline ({DEADLINE_KEY}) ===\n")
    return status


def _stop_at_deadline(proc: subprocess.Popen, timed_out: threading.Event | None) -> None:
    if proc.poll() is not None:
        return
    if timed_out is not None:
        timed_out.set()
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)


def no_space_in(lines) -> bool:
    return any(marker in line for line in lines for marker in NO_SPACE_MARKERS)


def no_space_message() -> str:
    """The words for a step that failed on a full disk (the workspace's device)."""
    free = shutil.disk_usage(Path.cwd()).free / 2**20
    return (f"no space left on the device of {Path.cwd()} ({free:,.1f} MiB free there): free "
            "some space; the next run retries")


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def default_remote(env: dict) -> str | None:
    proc = subprocess.run(pipeline.dvc("remote", "default"), env=env, capture_output=True,
                          text=True)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


# --------------------------------------------------------------------------- one stage

@dataclass
class StageOutcome:
    stage: str
    how: str  # ran, unchanged, restored, failed
    seconds: float
    exit_code: int = 0
    kind: str = "ok"
    message: str = ""
    tail: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None  # the stage process's own peak, as it reported it
    verdict: bool = False  # the stage said no on purpose (dailyrec.core.errors.DailyrecError.verdict)


def lock_entry(stage: str) -> dict | None:
    """The stage's entry in dvc.lock (what DVC recorded for its last successful run)."""
    try:
        lock = parse_yaml(paths.DVC_LOCK.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return (lock.get("stages") or {}).get(stage)


def run_stage(stage: str, env: dict, log: TextIO, opts: "Options",
              echo: Callable[[str], None]) -> StageOutcome:
    """`dvc repro --single-item STAGE`: DVC runs it if its deps, params or outs changed."""
    tail_lines, deadline_minutes = opts.tail_lines, opts.stage_timeout_minutes
    timed_out = threading.Event()
    tail: collections.deque = collections.deque(maxlen=tail_lines)
    fd, status_path = tempfile.mkstemp(prefix=f"dailyrec-{stage}-", suffix=".json")
    os.close(fd)
    os.unlink(status_path)  # the stage creates it: no file = the command did not run
    before = lock_entry(stage)
    started = time.monotonic()

    def on_line(line: str) -> None:
        tail.append(line)
        echo(line)

    try:
        code = stream(pipeline.dvc("repro", "--single-item", stage),
                      {**env, STAGE_STATUS_FILE: status_path}, log, on_line,
                      deadline_minutes * 60, timed_out)
    except Terminated:
        code = -signal.SIGTERM
    seconds = time.monotonic() - started
    try:
        record = json.loads(Path(status_path).read_text())
        Path(status_path).unlink()
    except (OSError, ValueError):
        record = None
    if code == 0:
        if record is not None:
            how = "ran"
        else:
            how = "unchanged" if lock_entry(stage) == before else "restored"
        peak = record.get("peak_rss_mb") if record is not None else None
        return StageOutcome(stage, how, seconds, tail=list(tail), peak_rss_mb=peak)
    verdict = False
    if record is not None and record.get("exit_code"):
        exit_code, kind = int(record["exit_code"]), str(record.get("kind") or "bug")
        message, verdict = str(record.get("message") or ""), bool(record.get("verdict"))
    else:  # the stage never reported (DVC refused to start it, or it was killed)
        exit_code, kind, message = code, "bug" if code > 0 else "stopped", ""
        if timed_out.is_set():
            exit_code, kind = errors.ServiceUnavailable.exit_code, "unavailable"
            message = f"killed after {deadline_minutes:g} minutes ({DEADLINE_KEY})"
        elif no_space_in(tail):
            exit_code, kind, message = errors.ServiceUnavailable.exit_code, "unavailable", \
                no_space_message()
    if code == -signal.SIGTERM and not timed_out.is_set():
        exit_code, kind = code, "stopped"
    return StageOutcome(stage, "failed", seconds, exit_code, kind, message, list(tail),
                        verdict=verdict)


# --------------------------------------------------------------------------- one day

@dataclass
class Options:
    commit: bool = False
    branch: str | None = None  # --commit onto this branch, not the checked-out one
    verbose: bool = False
    mail_report: bool = True
    tail_lines: int = FALLBACK_TAIL_LINES
    throttle_minutes: float = FALLBACK_THROTTLE_MINUTES
    stage_timeout_minutes: float = FALLBACK_STAGE_TIMEOUT_MINUTES
    check_stale: bool = True  # False for a backfill of past days: their lists are old by design
    out: TextIO = sys.stdout


def commit_paths() -> list[str]:
    """What --commit records: params.yaml, dvc.lock, git-tracked outputs, and the .gitignore
    files dvc writes beside its outputs."""
    found = pipeline.load()
    ignores = sorted({str(Path(o.path).parent / ".gitignore") for o in found.outputs()})
    candidates = [str(paths.DVC_LOCK), "params.yaml", *found.git_tracked(), *ignores]
    return [p for p in dict.fromkeys(candidates) if Path(p).exists()]


def git_commit(day: dt.date, env: dict, log: TextIO, branch: str | None = None
               ) -> tuple[str, str | None]:
    """Commit the day's record; returns (what was done, in words; the commit, or None).

    With `branch`, the commit goes onto that branch (created from HEAD if it does not exist)
    through a private index: the checked-out branch, the index and the working tree stay as they
    are (the demo's runs, or a team that keeps the nightly commits off its own branch)."""
    files = commit_paths()
    ignored = subprocess.run(["git", "check-ignore", "--", *files], env=env,
                             capture_output=True, text=True).stdout.split()
    files = [p for p in files if p not in set(ignored)]
    message = f"daily run {day.isoformat()}"
    if branch is None:
        _git(["git", "add", "--", *files], env, log)
        staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *files], env=env)
        if staged.returncode == 0:
            return "nothing to commit", None
        _git(["git", "commit", "-q", "-m", message, "--", *files], env, log)
        sha = _git(["git", "rev-parse", "HEAD"], env, log).strip()
        return f"committed {sha[:7]}", sha
    ref = f"refs/heads/{branch}"
    parent = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                            env=env, capture_output=True, text=True).stdout.strip()
    parent = parent or _git(["git", "rev-parse", "HEAD"], env, log).strip()
    with tempfile.TemporaryDirectory(prefix="dailyrec-index-") as tmp:
        private = {**env, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(["git", "read-tree", parent], private, log)
        _git(["git", "add", "--", *files], private, log)
        tree = _git(["git", "write-tree"], private, log).strip()
    if tree == _git(["git", "rev-parse", f"{parent}^{{tree}}"], env, log).strip():
        return f"nothing to commit on {branch}", None
    sha = _git(["git", "commit-tree", tree, "-p", parent, "-m", message], env, log).strip()
    old = subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref], env=env,
                         capture_output=True, text=True).stdout.strip()
    _git(["git", "update-ref", "-m", message, ref, sha, *([old] if old else [])], env, log)
    return f"committed {sha[:7]} on {branch}", sha


def _git(cmd: list[str], env: dict, log: TextIO) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode:
        raise StepFailed("git commit", proc.returncode,
                         (proc.stdout + proc.stderr).splitlines(), 0.0, kind="bug")
    return proc.stdout


def gate_reason() -> str:
    from dailyrec.core import metrics

    gate = metrics.GATE.read()
    return gate["reason"] if gate else "unknown"


# --------------------------------------------------------------------------- state and recovery

def _state_file() -> Path:
    return env_settings.state_dir() / "daily.json"


def load_state() -> dict:
    """The runner's own memory (.state/daily.json): the last day that ran to its end, and the
    commits whose data the DVC remote has not received yet."""
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def save_state(**changes) -> None:
    from dailyrec.core.files import write_json

    write_json(_state_file(), {**load_state(), **changes})


def last_completed() -> dt.date | None:
    """The last run.date that ran to its end (published, or kept back by the gate): from the
    runner's state, or else the run.date evaluate last completed for, in dvc.lock."""
    raw = load_state().get("last_completed")
    if raw is None:
        entry = lock_entry("evaluate") or {}
        raw = ((entry.get("params") or {}).get("params.yaml") or {}).get("run.date")
    try:
        return dt.date.fromisoformat(str(raw)) if raw else None
    except ValueError:
        return None


def recorded_outputs(stage: str) -> set[str]:
    """The outputs of a stage that dvc.lock records a hash for (what a checkout can restore)."""
    entry = lock_entry(stage) or {}
    return {o.get("path") for o in entry.get("outs") or [] if o.get("md5") or o.get("hash")}


def recorded_hash(stage: str, path: str) -> str | None:
    """The hash dvc.lock records for one output of a stage."""
    for out in (lock_entry(stage) or {}).get("outs") or []:
        if out.get("path") == path:
            return out.get("md5") or out.get("hash")
    return None


def workspace_holds(stage: str, path: str) -> bool:
    """The workspace's copy of an output is, byte for byte, what dvc.lock records (hashed as DVC
    hashes it: a damaged cache makes `dvc status` say "not in cache" whatever the workspace
    holds, so its word is not enough)."""
    recorded = recorded_hash(stage, path)
    return recorded is not None and dvc_md5(path) == recorded


def interrupted_outputs(env: dict) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({stage: [paths]} of cached outputs that differ from what dvc.lock records (a stage killed
    mid-write, or one that wrote its outputs and then failed), {stage: [paths]} of outputs the
    workspace holds rightly but whose copy in the local DVC cache is damaged or gone), from
    `dvc status --json` and, for "not in cache", the workspace's own hash.

    Only outputs dvc.lock has a hash for: one it does not record (a history brought in before
    the first run, or a dvc.lock that was lost) has nothing to be restored to, and a forced
    checkout of it would delete it."""
    found = pipeline.load()
    cached = {o.path for o in found.outputs() if o.cache}
    changed: dict[str, list[str]] = {}
    damaged: dict[str, list[str]] = {}
    for stage, entries in pipeline.status(env).items():
        recorded = recorded_outputs(stage)
        for entry in entries if isinstance(entries, list) else []:
            outs = entry.get("changed outs", {}) if isinstance(entry, dict) else {}
            for path, how in outs.items():
                if path not in cached or path not in recorded or \
                        how not in ("modified", "not in cache"):
                    continue
                intact = how == "not in cache" and workspace_holds(stage, path)
                (damaged if intact else changed).setdefault(stage, []).append(path)
    return changed, damaged


def recover(env: dict, log: TextIO, remote: str | None) -> list[str]:
    """Bring the workspace and the local DVC cache back to what dvc.lock records before the day
    runs, so an earlier fault cannot wedge this run (`dvc pull` refuses to overwrite unsaved
    outputs) nor a damaged cache object go unnoticed. Returns what was done, in words (empty
    when nothing was needed)."""
    changed, damaged = interrupted_outputs(env)
    done = repair_cache(env, log, remote, damaged) if damaged else []
    if not changed:
        return done
    return done + restore(env, log, remote, changed)


def repair_cache(env: dict, log: TextIO, remote: str | None,
                 damaged: dict[str, list[str]]) -> list[str]:
    """The workspace holds these outputs rightly (checked by hash) but the local cache's copy is
    damaged or gone: fetch it again from the remote, or say plainly that it cannot be."""
    stages = sorted(damaged)
    what = ", ".join(p for s in stages for p in damaged[s])
    if remote and stream(pipeline.dvc("fetch", *stages), env, log, lambda line: None) == 0 \
            and not interrupted_outputs(env)[1]:
        return [f"the local DVC cache's copy of {what} was missing or damaged; fetched it again from the "
                "remote (the workspace held what dvc.lock records)"]
    where = "the remote could not replace it" if remote else "no DVC remote holds another copy"
    return [f"the local DVC cache's copy of {what} is missing or damaged and {where}; the workspace holds "
            "what dvc.lock records (checked by hash), and the stage that writes it saves a new "
            "copy when it next runs"]


def restore(env: dict, log: TextIO, remote: str | None,
            changed: dict[str, list[str]]) -> list[str]:
    """Outputs that differ from dvc.lock: checked out from the cache, else pulled from the
    remote, else removed so the pipeline rebuilds them."""
    stages = sorted(changed)
    what = ", ".join(p for s in stages for p in changed[s])
    for cmd in ([pipeline.dvc("checkout", "--force", *stages)] +
                ([pipeline.dvc("pull", "--force", *stages)] if remote else [])):
        if stream(cmd, env, log, lambda line: None) == 0 and not interrupted_outputs(env)[0]:
            return [f"restored {what} to what dvc.lock records (left changed by an interrupted "
                    f"or failed run)"]
    # Not in the cache nor on the remote: outputs a stage rebuilds are removed, the rebuild
    # follows; a persistent one (the history) is kept, and merge_history's re-run replaces what
    # the interrupted run wrote.
    found = pipeline.load()
    removed = []
    for stage in stages:
        for out in found.stages[stage].outputs:
            if out.path in changed[stage] and not out.persist:
                target = Path(out.path)
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                removed.append(out.path)
    return [f"{what} differed from dvc.lock and could not be restored; removed {removed or 'none'}"
            " so the pipeline rebuilds them"]


def push_pending(env: dict, log: TextIO) -> list[str]:
    """Push the data of earlier commits whose `dvc push` failed; returns what it did, in words."""
    pending = load_state().get("pending_push") or []
    if not pending:
        return []
    cmd = [sys.executable, "-m", "dailyrec.ops.pipeline", "push", *pending]
    if stream(cmd, env, log, lambda line: None) == 0:
        save_state(pending_push=[])
        return [f"pushed the data of {len(pending)} earlier run(s) whose push had failed"]
    return [f"the data of {len(pending)} earlier run(s) is still not on the DVC remote "
            "(will retry)"]


@dataclass
class DayResult:
    outcome: str
    failure: StepFailed | None = None


def run_day(day: dt.date, opts: Options, last: bool = True) -> DayResult:
    """One day, start to finish: PUBLISHED; NOT_PUBLISHED (the pipeline ran, the quality gate
    kept the model back: alerted and reported); REJECTED (validate rejected the day's data:
    recorded, alerted, reported, and left out of training from now on); or FAILED (alerted).
    last: the last day of this run (a backfill mails its last report, and checks what is served
    once, at its end)."""
    env = child_env()
    send_report = last
    paths.DAILY_LOGS.mkdir(parents=True, exist_ok=True)
    log_path = paths.DAILY_LOGS / f"{day.isoformat()}.log"
    t0 = time.monotonic()
    # the report's imports, while this process only waits for DVC and the stages
    threading.Thread(target=_preload_report, name="report-imports").start()

    def progress(step: str, what: str) -> None:
        print(f"[{day}] {step:<18} {what}", file=opts.out, flush=True)

    def echo(line: str) -> None:
        if opts.verbose:
            print(f"    {line}", file=opts.out, flush=True)

    def context(**extra) -> dict:
        return {"run_date": day.isoformat(), **extra, "host": socket.gethostname(),
                "workdir": str(Path.cwd()), "log": str(log_path.resolve())}

    def alert(subject: str, **kwargs) -> None:
        notify.alert(subject, throttle_minutes=opts.throttle_minutes, **kwargs)

    outcome = PUBLISHED
    notes: list[str] = []
    newest = last_completed()
    # A day older than one already run is a rebuild: it must not replace newer served lists,
    # rewind the runner's memory, or move the branch back to an older day.
    rebuild = newest is not None and day < newest
    with log_path.open("a") as log:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n=== daily run {day} started {now} UTC on {socket.gethostname()} "
                  f"(pid {os.getpid()}) ===\n")
        try:
            settings.set_run_date(day)
            progress("params.yaml", f"run.date = {day}")
            if rebuild:
                progress("past day", f"rebuilding {day}, older than the last day run ({newest}): "
                                     "the newer served lists, the runner's state and the branch "
                                     "stay as they are")
            remote = default_remote(env)
            recovered = recover(env, log, remote)
            if recovered:
                notes += recovered
                progress("recover", "; ".join(recovered))
                log.write("=== recovered: " + "; ".join(recovered) + " ===\n")
                alert(f"daily run {day}: recovered from an earlier fault",
                      context=context(recovered="; ".join(recovered)))
            if remote:
                notes += pull(env, log, opts, progress, echo, alert, context)
                notes += push_pending(env, log)
            for stage in pipeline.load().order():
                done = run_stage(stage, env, log, opts, echo)
                if done.how != "failed":
                    peak = f", peak {done.peak_rss_mb:,.0f} MB" if done.peak_rss_mb else ""
                    what = {"ran": f"ran in {done.seconds:.1f} s{peak}",
                            "unchanged": "unchanged, skipped",
                            "restored": f"restored from the run-cache in {done.seconds:.1f} s"}
                    progress(stage, what[done.how])
                    continue
                if not done.verdict:
                    raise StepFailed(stage, done.exit_code, done.tail, done.seconds, done.kind,
                                     done.message)
                # A verdict: the stage did its job and said no. The day's data (and model) are
                # recorded (push, commit), the day is alerted and reported, and counts as done:
                # running it again would give the same answer, so no later night retries it.
                said = done.message.splitlines()[0][:300] if done.message else ""
                if done.kind == "not_published" and rebuild:
                    outcome = REBUILT
                    progress(stage, f"refused: {said}")
                    continue
                if done.kind == "not_published":
                    outcome = NOT_PUBLISHED
                    progress(stage, "refused: the quality gate failed; the served version stays")
                    log.write("=== quality gate failed: nothing published ===\n")
                    alert(f"daily run {day}: quality gate failed, nothing published",
                          context=context(stage=stage, gate=gate_reason()),
                          log_tail="\n".join(done.tail))
                    continue
                outcome = REJECTED
                progress(stage, f"REJECTED: {said}; nothing trained or published today, the "
                                "served version stays, and later days leave this day out")
                log.write("=== the day's data was rejected: nothing trained or published ===\n")
                alert(f"daily run {day}: the data of {day - dt.timedelta(days=1)} was rejected, "
                      "nothing trained or published",
                      context=context(stage=stage, kind=done.kind,
                                      admit="python -m stages.validate admit "
                                            f"{day - dt.timedelta(days=1)} --by NAME --note WHY"),
                      log_tail="\n".join(done.tail))
                break
            pushed = True
            if remote:
                try:
                    simple_step("dvc push", pipeline.dvc("push"), env, log, opts, progress, echo)
                except StepFailed as failure:
                    # What was served stays served and is committed; the next run pushes it.
                    pushed = False
                    progress("dvc push", f"FAILED ({failure.why}); the next run pushes it")
                    notes.append("dvc push failed: the day's data is not on the DVC remote yet; "
                                 "the next run pushes it")
                    alert(f"daily run {day}: dvc push failed, the next run retries",
                          error=failure.with_traceback(None), context=context(stage="dvc push"),
                          log_tail="\n".join(failure.tail[-opts.tail_lines:]))
            else:
                progress("dvc push", "skipped (no default DVC remote)")
            if opts.commit and rebuild:
                progress("git commit", f"skipped: {day} is older than the last day run "
                                       f"({newest}); the branch keeps the newer day")
            elif opts.commit:
                started = time.monotonic()
                committed, sha = git_commit(day, env, log, opts.branch)
                progress("git commit", f"{committed} in {time.monotonic() - started:.1f} s")
                if not pushed and sha:
                    save_state(pending_push=[*(load_state().get("pending_push") or []), sha])
            notes += retain(day, env, log, opts, progress, echo, remote, pushed, alert, context)
            save_state(last_completed=max(day, newest or day).isoformat())
        except StepFailed as failure:
            log.write(f"=== FAILED at {failure.step} ({failure.why}, {failure.kind}) ===\n")
            said = f": {failure.message.splitlines()[0][:200]}" if failure.message else ""
            progress(failure.step, f"FAILED after {failure.seconds:.1f} s ({failure.why}, "
                                   f"{failure.kind}){said}; full output: {log_path}")
            # The runner's own traceback says nothing; the stage's is in the log tail.
            found = pipeline.load_or_none()
            command = found.stages[failure.step].cmd if found and failure.step in found.stages \
                else failure.step
            alert(f"daily run {day} failed at stage {failure.step} ({failure.kind})",
                  error=failure.with_traceback(None),
                  context=context(stage=failure.step, command=command, kind=failure.kind,
                                  exit_status=failure.status),
                  log_tail="\n".join(failure.tail[-opts.tail_lines:]))
            if last:
                check_served(day, progress, log, alert, context, opts.check_stale)
            return DayResult(FAILED, failure)
        except Exception as err:  # noqa: BLE001 - a bug in the runner is a failed run, alerted
            log.write(f"=== FAILED in the runner: {err!r} ===\n")
            progress("runner", f"FAILED: {type(err).__name__}: {err}")
            alert(f"daily run {day} failed in the runner", error=err, context=context())
            kind = err.kind if isinstance(err, errors.DailyrecError) else "bug"
            return DayResult(FAILED, StepFailed("runner", getattr(err, "exit_code", 1), [], 0.0,
                                                kind, str(err)))
        served = check_served(day, progress, log, alert, context, opts.check_stale) if last \
            else None
        make_report(day, send_report and opts.mail_report, progress, log, opts, notes, served,
                    outcome)
        log.write(f"=== {outcome} in {time.monotonic() - t0:.1f} s ===\n")
    progress("done", f"{outcome} in {time.monotonic() - t0:.1f} s")
    return DayResult(outcome)


def retain(day: dt.date, env: dict, log: TextIO, opts: Options, progress, echo,
           remote: str | None, pushed: bool, alert, context) -> list[str]:
    """Keep the machine's disk bounded (params.yaml retention), once the day is pushed and
    committed. The local DVC cache is collected only while the remote holds every day: today's
    push succeeded and no earlier one is pending (without a remote the cache is the only copy).
    Never fails the day: what could not be done is logged, alerted (throttled) and noted in the
    report, and the next run does it."""
    try:
        params = settings.load()
        cfg = ops.retention(params)
    except errors.ConfigError as err:  # the day is done; left alone, the disk would fill
        progress("retention", f"skipped: {err}")
        alert(f"daily run {day}: retention skipped, params.yaml is not valid",
              error=err.with_traceback(None), context=context(stage="retention"))
        return [f"retention skipped: {err}"]
    notes: list[str] = []
    if cfg.dvc_cache == "all":
        pass  # every object kept
    elif not remote:
        progress("dvc gc", "skipped: no default DVC remote (the local cache is the only copy)")
    elif not pushed or load_state().get("pending_push"):
        progress("dvc gc", "skipped: the DVC remote does not hold every day yet")
    else:
        before, started = tree_bytes(DVC_CACHE), time.monotonic()
        try:
            # --all-experiments: an engineer's `dvc exp run` on this machine keeps its outputs
            # until `dvc exp remove` (they are never pushed by the runner).
            simple_step("dvc gc", pipeline.dvc("gc", "--workspace", "--all-experiments",
                                               "--force"), env, log, opts,
                        lambda step, what: None, echo)
            after = tree_bytes(DVC_CACHE)
            progress("dvc gc", f"{(before - after) / 2**20:,.1f} MiB freed from the local cache, "
                               f"{after / 2**20:,.1f} MiB kept, in "
                               f"{time.monotonic() - started:.1f} s")
        except StepFailed as failure:
            progress("dvc gc", f"FAILED ({failure.why}); the next run collects it")
            notes.append("dvc gc failed: the local DVC cache was not collected")
            alert(f"daily run {day}: dvc gc failed, the next run collects the cache",
                  error=failure.with_traceback(None), context=context(stage="dvc gc"),
                  log_tail="\n".join(failure.tail[-opts.tail_lines:]))
    if cfg.mlflow_model_versions and env_settings.mlflow_enabled():
        started = time.monotonic()
        try:
            from dailyrec.ops import tracking

            removed = tracking.prune_versions(ops.mlflow(params), cfg.mlflow_model_versions)
            log.write(f"=== MLflow model versions removed: {removed} ===\n")
            progress("mlflow versions",
                     f"removed {', '.join(map(str, removed)) or 'none'} (keeping the newest "
                     f"{cfg.mlflow_model_versions}) in {time.monotonic() - started:.1f} s")
        except Exception as err:  # noqa: BLE001 - the day is done; the next run prunes
            log.write(f"=== MLflow retention failed: {err!r} ===\n")
            progress("mlflow versions", f"FAILED ({type(err).__name__}); the next run prunes")
            notes.append(f"MLflow retention failed ({type(err).__name__}): old model versions "
                         "were not removed")
            alert(f"daily run {day}: MLflow retention failed, the next run prunes", error=err,
                  context=context(stage="mlflow versions"))
    return notes


def tree_bytes(path: Path | str) -> int:
    """Bytes of the regular files under a folder (links not followed; none there: 0). Here, not
    in dailyrec.core.files: every stage depends on that file, and this is the runner's (and bench's)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*")
               if p.is_file() and not p.is_symlink())


def _preload_report() -> None:
    from dailyrec.ops import report

    report.preload()


def simple_step(name: str, cmd: list[str], env: dict, log: TextIO, opts: Options,
                progress: Callable[[str, str], None], echo: Callable[[str], None]) -> None:
    tail: collections.deque = collections.deque(maxlen=opts.tail_lines)
    started = time.monotonic()

    def on_line(line: str) -> None:
        tail.append(line)
        echo(line)

    timed_out = threading.Event()
    try:
        status = stream(cmd, env, log, on_line, opts.stage_timeout_minutes * 60, timed_out)
    except Terminated:
        status = -signal.SIGTERM
    seconds = time.monotonic() - started
    if status != 0:
        if timed_out.is_set():
            raise StepFailed(name, status, list(tail), seconds, "unavailable",
                             f"killed after {opts.stage_timeout_minutes:g} minutes "
                             f"({DEADLINE_KEY})")
        if no_space_in(tail):
            raise StepFailed(name, status, list(tail), seconds, "unavailable",
                             no_space_message())
        raise StepFailed(name, status, list(tail), seconds)
    progress(name, f"done in {seconds:.1f} s")


def pull(env: dict, log: TextIO, opts: Options, progress, echo, alert, context) -> list[str]:
    """`dvc pull`. A remote that does not answer is not fatal when the workspace already holds
    what dvc.lock records (the usual case on the machine that ran yesterday): the day runs on it,
    with an alert; on a fresh machine it is (exit 69, the next run retries).

    Only the stages dvc.lock records outputs of: DVC's checkout deletes a workspace output it has
    no hash for, and such an output (a history brought in before the first run, or kept while a
    dvc.lock was lost) is data, not debris. With none recorded there is nothing to pull; with
    every stage recorded (the usual day), no targets: the same outputs, and DVC parses dvc.yaml
    and dvc.lock once instead of twice per target (1 s less at 7 stages)."""
    order = pipeline.load().order()
    recorded = [s for s in order if recorded_outputs(s)]
    if not recorded:
        progress("dvc pull", "skipped (dvc.lock records no outputs yet)")
        return []
    targets = [] if recorded == order else recorded
    try:
        simple_step("dvc pull", pipeline.dvc("pull", "--allow-missing", *targets), env, log,
                    opts, progress, echo)
        return []
    except StepFailed as failure:
        cached = {o.path for o in pipeline.load().outputs() if o.cache}
        lacking = [p for s in recorded for p in sorted(recorded_outputs(s) & cached)
                   if not workspace_holds(s, p)]  # checked by hash, not by DVC's word
        if lacking and last_completed() is not None:
            raise
        said = "the workspace holds what dvc.lock records (each output checked by hash)" \
            if not lacking else f"the workspace lacks {', '.join(lacking)}: the stages rebuild it"
        progress("dvc pull", f"failed; {said}: going on")
        alert(f"dvc pull failed; the day runs on the local workspace ({said})",
              error=failure.with_traceback(None), context=context(stage="dvc pull"),
              log_tail="\n".join(failure.tail[-opts.tail_lines:]))
        return ["dvc pull failed (the DVC remote did not answer); the day ran on the local "
                "workspace"]


def check_served(day: dt.date, progress: Callable[[str, str], None], log: TextIO,
                 alert: Callable[..., None], context: Callable[..., dict],
                 alert_stale: bool = True) -> dict:
    """How old the lists the API serves now are (dailyrec.publish.reader.Freshness), against
    params.yaml's serving.max_age_hours; alerts when they are stale, whatever today's run did
    (a week of failed runs must not go unnoticed), unless alert_stale is False (a backfill of
    past days, whose lists are old by design). Returns what the report shows."""
    from dailyrec.publish.settings import max_age_hours
    from dailyrec.publish import connection
    from dailyrec.publish import keys as K
    from dailyrec.publish.reader import (Freshness, NotPublished, RecommendationStore,
                                       RedisUnavailable, freshness)

    try:
        store = RecommendationStore(connection.client(connection.settings_from_env(),
                                                      timeout=10.0), K.Layout.from_env())
        fresh = freshness(store.ready())
    except (NotPublished, RedisUnavailable) as err:
        progress("served", f"unknown ({err})")
        log.write(f"served: unknown: {err!r}\n")
        return {"error": str(err)}
    except Exception as err:  # noqa: BLE001 - a check must never end the run it reports on
        progress("served", f"unknown ({type(err).__name__}: {err})")
        log.write(f"served: check failed: {err!r}\n")
        return {"error": f"{type(err).__name__}: {err}"}
    try:
        limit = max_age_hours(settings.load())
    except errors.ConfigError:
        limit = fresh.max_age_hours  # what it was published with
    fresh = Freshness(fresh.version, fresh.run_date, fresh.age_hours, limit)
    age = "age unknown" if fresh.age_hours is None else f"data {fresh.age_hours:.1f} h old"
    stale = "" if not fresh.stale else \
        f" (STALE: over serving.max_age_hours {limit:g})" if alert_stale else \
        f" (over serving.max_age_hours {limit:g}, as a backfill of past days leaves it: not alerted)"
    progress("served", f"version {fresh.version}, {age}{stale}")
    log.write(f"served: {json.dumps(fresh.as_dict())}\n")
    if fresh.stale and alert_stale:
        alert(f"served recommendations are stale: data {fresh.age_hours:.0f} h old "
              f"(version {fresh.version})",
              context=context(served_version=fresh.version, served_run_date=fresh.run_date,
                              age_hours=round(fresh.age_hours, 1), max_age_hours=limit),
              log_tail=f"The API serves version {fresh.version}, built from the data of "
                       f"{fresh.run_date}; serving.max_age_hours is {limit:g}. Daily runs since "
                       f"then did not publish: see their alerts and logs/daily/.")
    return fresh.as_dict()


def make_report(day: dt.date, send: bool, progress: Callable[[str, str], None],
                log: TextIO, opts: Options, notes: list[str] = (),
                served: dict | None = None, outcome: str | None = None) -> None:
    """The business owner's report. Its failure is alerted but does not fail the run: the
    pipeline itself succeeded and its outputs are published."""
    from dailyrec.ops import report

    started = time.monotonic()
    try:
        built, mailed = report.daily_report(day, send=send, notes=list(notes), served=served,
                                            outcome=outcome)
    except Exception as err:  # noqa: BLE001
        log.write(f"report failed: {err!r}\n")
        progress("report", f"FAILED: {type(err).__name__}: {err}")
        notify.alert(f"daily report for {day} could not be built", error=err,
                     context={"run_date": day.isoformat(), "host": socket.gethostname()},
                     throttle_minutes=opts.throttle_minutes)
        return
    where = paths.DAILY_REPORTS / f"{day.isoformat()}.html"
    state = "mailed" if mailed else ("not mailed" if send else "saved only")
    progress("report", f"{where} ({state}) in {time.monotonic() - started:.1f} s")
    log.write(f"report: {built.subject}\n")


# --------------------------------------------------------------------------- entry point

def _date(raw: str) -> dt.date:
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a date (YYYY-MM-DD)") from None


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[dt.date]]:
    ap = argparse.ArgumentParser(prog="python -m stages.daily",
                                 description="Run the daily pipeline for one day or a range.")
    ap.add_argument("--date", type=_date, help="run.date to run for (default: today, UTC)")
    ap.add_argument("--from", dest="first", type=_date, help="backfill from this day ...")
    ap.add_argument("--to", dest="last", type=_date, help="... to this day (default: today, UTC)")
    ap.add_argument("--commit", action="store_true",
                    help="git-commit params.yaml, dvc.lock and the metrics after each good day")
    ap.add_argument("--branch", metavar="NAME",
                    help="with --commit: commit onto this branch (created from HEAD), leaving "
                         "the checked-out branch, the index and the working tree as they are")
    ap.add_argument("--no-report-mail", action="store_true",
                    help="save the daily report under reports/daily/ but do not mail it")
    ap.add_argument("--no-catch-up", action="store_true",
                    help="run only the day asked for, not the days missed since the last one "
                         "that ran to its end")
    ap.add_argument("--lock-file", type=Path, default=paths.RUN_LOCK)
    ap.add_argument("-v", "--verbose", action="store_true", help="echo every line of output")
    args = ap.parse_args(argv)
    today = dt.datetime.now(dt.timezone.utc).date()
    if args.date and (args.first or args.last):
        ap.error("give either --date or --from/--to, not both")
    if args.last and not args.first:
        ap.error("--to needs --from")
    if args.branch and not args.commit:
        ap.error("--branch needs --commit")
    if args.branch and subprocess.run(["git", "check-ref-format", "--branch", args.branch],
                                      capture_output=True).returncode:
        ap.error(f"--branch {args.branch!r} is not a valid branch name")
    if args.first:
        last = args.last or today
        if args.first > last:
            ap.error(f"--from {args.first} is after --to {last}")
        days = [args.first + dt.timedelta(days=i) for i in range((last - args.first).days + 1)]
    else:
        days = [args.date or today]
    try:
        settings.check_not_future(days[-1], "--to" if args.first else "--date")
    except errors.ConfigError as err:
        ap.error(str(err))
    return args, days


def historical(days: list[dt.date]) -> bool:
    """A backfill that ends before yesterday (UTC): the lists it serves are old by design, so
    their age is reported, not alerted."""
    return days[-1] < dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)


def catch_up(day: dt.date) -> list[dt.date]:
    """The days a run for `day` must run: every day since the last one that ran to its end, then
    `day` (a failed or missed night is made up by the next one, so no day's events are lost)."""
    last = last_completed()
    if last is None or last >= day - dt.timedelta(days=1):
        return [day]
    missed = [last + dt.timedelta(days=k) for k in range(1, (day - last).days + 1)]
    print(f"daily: catching up {len(missed) - 1} missed or failed day(s) since {last}: "
          f"{missed[0]}..{missed[-1]}", flush=True)
    return missed


def runner_settings() -> tuple[int, float, float]:
    """(log_tail_lines, throttle_minutes, stage_timeout_minutes) from params.yaml; the fallbacks
    when it is unreadable (the run goes on to fail on it, and must be able to say so)."""
    try:
        params = settings.load()
        found = ops.alerts(params)
        return found.log_tail_lines, found.throttle_minutes, ops.stage_timeout_minutes(params)
    except errors.ConfigError:
        return FALLBACK_TAIL_LINES, FALLBACK_THROTTLE_MINUTES, FALLBACK_STAGE_TIMEOUT_MINUTES


def main(argv: list[str] | None = None) -> int:
    args, days = parse_args(argv)
    if not paths.DVC_FILE.exists():
        print(f"daily: error: no dvc.yaml in {Path.cwd()}: run from the project root",
              file=sys.stderr)
        return EXIT_USAGE
    tail_lines, throttle, timeout = runner_settings()
    opts = Options(commit=args.commit, branch=args.branch, verbose=args.verbose,
                   mail_report=not args.no_report_mail,
                   tail_lines=tail_lines, throttle_minutes=throttle,
                   stage_timeout_minutes=timeout,
                   check_stale=not (args.first and historical(days)))
    # A stop (systemd timeout, kill) becomes a failure of the running stage, alerted like any.
    signal.signal(signal.SIGTERM, _on_sigterm)
    lock = RunLock(args.lock_file)
    try:
        lock.acquire({"pid": os.getpid(), "host": socket.gethostname(),
                      "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "dates": f"{days[0]}..{days[-1]}" if len(days) > 1 else str(days[0])})
    except errors.Busy as busy:
        print(f"daily: {busy}", file=sys.stderr)
        return EXIT_BUSY
    try:
        if not args.first and not args.no_catch_up:
            days = catch_up(days[-1])
        held_back, rejected = [], []
        for i, day in enumerate(days):
            # A backfill saves every day's report but mails only the last one.
            result = run_day(day, opts, last=(i == len(days) - 1))
            if result.outcome == FAILED:
                if len(days) > 1:
                    left = days[i + 1:]
                    print(f"daily: backfill stopped at {day}"
                          + (f"; not run: {left[0]}..{left[-1]}" if left else ""), file=sys.stderr)
                return result.failure.exit_code if result.failure else 1
            if result.outcome == NOT_PUBLISHED:
                held_back.append(day.isoformat())
            if result.outcome == REJECTED:
                rejected.append(day.isoformat())
        if rejected:
            print(f"daily: the data of the day before {', '.join(rejected)} was rejected by "
                  "validate: left out of training until a person admits it "
                  "(python -m stages.validate status)", file=sys.stderr)
        if held_back:
            print(f"daily: nothing published for {', '.join(held_back)}: the quality gate failed",
                  file=sys.stderr)
        if rejected:
            return errors.DayRejected.exit_code
        return EXIT_NOT_PUBLISHED if held_back else 0
    finally:
        lock.release()
