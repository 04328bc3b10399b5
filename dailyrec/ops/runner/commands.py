"""Running dvc and the stages for the daily run: their environment, their output (to the day's
log, the last lines kept for an alert), a deadline for each, and what a failure was."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TextIO

from dailyrec.core import errors
from dailyrec.ops import settings as ops

DEADLINE_KEY = ops.STAGE_TIMEOUT_KEY
# What a full disk looks like in the output of a process that did not say it in words (DVC's own
# writes end as "exit status 255").
NO_SPACE_MARKERS = ("No space left on device", "[Errno 28]", "Disk quota exceeded")

# The run lock's descriptor, handed to every command the runner starts: a runner killed with
# SIGKILL leaves dvc (and the stage it waits for) running in its own session, and the flock stays
# held until they end, so no second runner can start on top of them (runner.lock sets it).
_INHERITED_FDS: tuple[int, ...] = ()


def inherit(fds: tuple[int, ...]) -> None:
    global _INHERITED_FDS
    _INHERITED_FDS = fds


class Terminated(Exception):
    """The runner got SIGTERM (systemd's TimeoutStartSec, `systemctl stop`, kill)."""


def on_sigterm(signum, frame) -> None:
    raise Terminated()


@dataclass
class Finished:
    """How a command of the day ended: its status, its last lines, how long it took."""

    name: str
    status: int
    tail: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False
    deadline_minutes: float = 0.0

    def failure(self, kind: str | None = None, message: str = "") -> "StepFailed":
        """The StepFailed to raise for it: a deadline or a full disk said in words."""
        if self.timed_out:
            kind = "unavailable"
            message = f"killed after {self.deadline_minutes:g} minutes ({DEADLINE_KEY})"
        elif no_space_in(self.tail) and kind in (None, "bug"):
            kind, message = "unavailable", no_space_message()
        return StepFailed(self, kind, message)


class StepFailed(Exception):
    """A step of the daily run (a pipeline stage, dvc pull/push, git commit) failed."""

    def __init__(self, done: Finished, kind: str | None = None, message: str = ""):
        status = done.status
        if status == -signal.SIGTERM:
            self.why = "stopped by SIGTERM"
        elif status < 0:
            self.why = f"killed by signal {-status}"
        else:
            self.why = f"exit status {status}"
        self.kind = kind or ("unavailable" if done.name.startswith("dvc ")
                             else errors.kind_of(status))
        super().__init__(f"{done.name} failed ({self.why}, {self.kind})"
                         + (f": {message}" if message else ""))
        self.step, self.status, self.tail = done.name, status, done.tail
        self.seconds, self.message = done.seconds, message

    @property
    def exit_code(self) -> int:
        """The runner's exit status for this failure: its error kind's."""
        by_kind = {kind: code for code, kind in errors.EXIT_CODES.items()}
        return by_kind.get(self.kind, 1) if self.kind not in ("ok", "not_published") else 1


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


@dataclass
class Command:
    """One command of the day: what to run, in which environment, for how long at most."""

    argv: list[str]
    env: dict
    deadline_s: float | None = None
    timed_out: threading.Event = field(default_factory=threading.Event)


def stream(command: Command, log: TextIO, on_line: Callable[[str], None]) -> int:
    """Run the command with stdout+stderr merged, each line to the log and to on_line; its exit
    status. Past its deadline its process group is stopped (SIGTERM, then SIGKILL) and
    command.timed_out is set. A SIGTERM or Ctrl-C of the runner stops it too, and is raised."""
    log.write(f"$ {' '.join(command.argv)}\n")
    log.flush()
    # Its own process group, so a stop reaches dvc and the stage command it started.
    proc = subprocess.Popen(command.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=command.env, text=True, errors="replace", bufsize=1,
                            start_new_session=True, pass_fds=_INHERITED_FDS)
    assert proc.stdout is not None
    timer = None
    if command.deadline_s is not None:
        timer = threading.Timer(command.deadline_s, _stop_at_deadline, (proc, command.timed_out))
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
    if command.timed_out.is_set():
        log.write(f"=== stopped at its deadline ({DEADLINE_KEY}) ===\n")
    return status


def _stop_at_deadline(proc: subprocess.Popen, timed_out: threading.Event) -> None:
    if proc.poll() is not None:
        return
    timed_out.set()
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def no_space_in(lines) -> bool:
    return any(marker in line for line in lines for marker in NO_SPACE_MARKERS)


def no_space_message() -> str:
    """The words for a step that failed on a full disk (the workspace's device)."""
    free = shutil.disk_usage(Path.cwd()).free / 2**20
    return (f"no space left on the device of {Path.cwd()} ({free:,.1f} MiB free there): free "
            "some space; the next run retries")


class DayContext(Protocol):
    """What a step of the day (recovery, pull, a stage, retention...) needs from the day's run
    (runner.day.DayRun implements it): the day, its options, environment and log, its notes for
    the report, and one voice for progress lines, alerts and commands."""

    day: Any  # datetime.date
    opts: Any  # runner.day.Options
    env: dict
    log: TextIO
    notes: list[str]

    def progress(self, step: str, what: str) -> None: ...

    def context(self, **extra) -> dict: ...

    def alert(self, subject: str, **kwargs) -> None: ...

    def alert_failure(self, subject: str, failure: StepFailed) -> None: ...

    def execute(self, name: str, argv: list[str], extra_env: dict | None = None,
                quiet: bool = False) -> Finished: ...

    def step(self, name: str, argv: list[str], say: bool = True) -> Finished: ...

