"""The daily run: the one command a scheduler calls.

    python -m stages.daily [--date YYYY-MM-DD] [--commit]        one day (default: today, UTC)
    python -m stages.daily --from 2026-11-15 --to 2026-11-21     backfill, in order

Per day: set run.date in params.yaml, `dvc pull` (when a default remote is set; an empty remote
on the first day is fine), `dvc repro`, `dvc push`, optionally commit params.yaml + dvc.lock (so
the day's model can be rebuilt from that commit), then the business owner's report. One progress
line per stage with its duration; the full output goes to logs/daily/DATE.log. Any failure mails
an alert naming the failing stage with the last lines of its output, stops a backfill, and exits 1.
A day whose quality gate fails (publish refuses) is not a failure of the run: it is pushed and
committed, alerted and reported ("nothing published"), a backfill goes on, and the exit status is 3.

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
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import yaml

from stages import notify
from stages import params as P

PARAMS_PATH = Path("params.yaml")  # the file DVC tracks and --commit records
LOCK_PATH = Path(".dvc/tmp/daily-run.lock")
LOG_DIR = Path("logs/daily")
# 3: every day ran but the quality gate kept at least one day's model back (nothing published);
# 75 = EX_TEMPFAIL: another run holds the lock, try again later.
EXIT_FAILED, EXIT_USAGE, EXIT_NOT_PUBLISHED, EXIT_BUSY = 1, 2, 3, 75
DEFAULT_TAIL_LINES = 50

# What `dvc repro` prints around each stage (dvc 3.x, stage/run.py, stage/__init__.py, cache.py).
RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)':\s*$")
UNCHANGED = re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping\s*$")
RESTORED = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run, checking out outputs")
STAGE_FAILED = re.compile(
    r"failed to reproduce '(?P<stage>[^']+)'(?:.*exited with (?P<code>-?\d+))?")
REPRO_DONE = re.compile(r"^(Use `dvc push`|To track the changes with git|"
                        r"Data and pipelines are up to date)")


class StepFailed(Exception):
    """A step of the daily run (a pipeline stage, dvc pull/push, git commit) failed."""

    def __init__(self, step: str, status: int, tail: list[str], seconds: float):
        self.why = "stopped by SIGTERM" if status == -signal.SIGTERM else f"exit status {status}"
        super().__init__(f"{step} failed ({self.why})")
        self.step, self.status, self.tail, self.seconds = step, status, tail, seconds


# --------------------------------------------------------------------------- the lock

class RunBusy(Exception):
    """Another daily run holds the lock."""


class RunLock:
    """An exclusive, non-blocking flock; the file holds who took it, for the refusal message."""

    def __init__(self, path: Path = LOCK_PATH):
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
            raise RunBusy(info) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
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
    return (f"daily: another daily run is in progress ({who}); not starting a second one. "
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


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def stream(cmd: list[str], env: dict, log: TextIO, on_line: Callable[[str], None]) -> int:
    """Run cmd with stdout+stderr merged, each line to the log and to on_line; its exit status."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    # Its own process group, so a stop reaches dvc and the stage command it started.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, errors="replace", bufsize=1, start_new_session=True)
    assert proc.stdout is not None
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
        log.flush()
    return proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


class Terminated(Exception):
    """The runner got SIGTERM (systemd's TimeoutStartSec, `systemctl stop`, kill)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def default_remote(env: dict) -> str | None:
    proc = subprocess.run(dvc("remote", "default"), env=env, capture_output=True, text=True)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


# --------------------------------------------------------------------------- progress

@dataclass
class StageTracker:
    """Follows `dvc repro` output: which stage is running, its lines, and each stage's outcome."""
    report: Callable[[str, str], None]
    tail_lines: int = DEFAULT_TAIL_LINES
    current: str | None = None
    how: str = ""
    started: float = 0.0
    lines: collections.deque = field(default_factory=collections.deque)
    all_lines: collections.deque = field(default_factory=collections.deque)
    outcomes: list[tuple[str, str, float]] = field(default_factory=list)
    failed: str | None = None
    failed_status: int | None = None

    def __post_init__(self) -> None:
        self.lines = collections.deque(maxlen=self.tail_lines)
        self.all_lines = collections.deque(maxlen=self.tail_lines)

    def feed(self, line: str) -> None:
        self.all_lines.append(line)
        if match := RUNNING.match(line):
            self._start(match["stage"], "ran")
        elif match := RESTORED.match(line):
            self._start(match["stage"], "restored from the run-cache")
        elif match := UNCHANGED.match(line):
            self.finish()
            self.outcomes.append((match["stage"], "unchanged", 0.0))
            self.report(match["stage"], "unchanged, skipped")
        elif REPRO_DONE.match(line):
            self.finish()
        else:
            if match := STAGE_FAILED.search(line):
                self.failed = match["stage"]
                self.failed_status = int(match["code"]) if match["code"] else None
            if self.current is not None:
                self.lines.append(line)

    def _start(self, stage: str, how: str) -> None:
        self.finish()
        self.current, self.how, self.started = stage, how, time.monotonic()
        self.lines.clear()
        self.lines.append(f"[{stage}]")

    def finish(self) -> None:
        if self.current is None:
            return
        seconds = time.monotonic() - self.started
        self.outcomes.append((self.current, self.how, seconds))
        self.report(self.current, f"{self.how} in {seconds:.1f} s")
        self.current = None

    def fail(self, status: int) -> StepFailed:
        """The failure of `dvc repro`: the stage it names (or the one running), with its output."""
        stage = self.failed or self.current or "dvc repro"
        seconds = time.monotonic() - self.started if self.current else 0.0
        tail = list(self.lines) if self.current == stage else list(self.all_lines)
        self.current = None
        return StepFailed(stage, self.failed_status or status, tail, seconds)


# --------------------------------------------------------------------------- one day

@dataclass
class Options:
    commit: bool = False
    verbose: bool = False
    mail_report: bool = True
    tail_lines: int = DEFAULT_TAIL_LINES
    out: TextIO = sys.stdout


def dvc_yaml_paths() -> tuple[list[str], list[str]]:
    """From dvc.yaml: the git-tracked metrics files (cache: false) and every output path."""
    try:
        stages = (yaml.safe_load(Path("dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return [], []
    git_tracked, outputs = [], []
    for stage in stages.values():
        if not isinstance(stage, dict):
            continue
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                path, opts = (next(iter(entry.items())) if isinstance(entry, dict)
                              else (entry, {}))
                outputs.append(str(path))
                if isinstance(opts, dict) and opts.get("cache") is False:
                    git_tracked.append(str(path))
    return git_tracked, outputs


def commit_paths() -> list[str]:
    """What --commit records: params.yaml, dvc.lock, git-tracked metrics, and the .gitignore
    files dvc writes beside its outputs."""
    git_tracked, outputs = dvc_yaml_paths()
    ignores = sorted({str(Path(out).parent / ".gitignore") for out in outputs})
    paths = ["params.yaml", "dvc.lock", *git_tracked, *ignores]
    return [p for p in dict.fromkeys(paths) if Path(p).exists()]


def git_commit(day: dt.date, env: dict, log: TextIO) -> str:
    paths = commit_paths()
    ignored = subprocess.run(["git", "check-ignore", "--", *paths], env=env,
                             capture_output=True, text=True).stdout.split()
    paths = [p for p in paths if p not in set(ignored)]
    _git(["git", "add", "--", *paths], env, log)
    staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *paths], env=env)
    if staged.returncode == 0:
        return "nothing to commit"
    _git(["git", "commit", "-q", "-m", f"daily run {day.isoformat()}", "--", *paths], env, log)
    return f"committed {_git(['git', 'rev-parse', '--short', 'HEAD'], env, log).strip()}"


def _git(cmd: list[str], env: dict, log: TextIO) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode:
        raise StepFailed("git commit", proc.returncode,
                         (proc.stdout + proc.stderr).splitlines(), 0.0)
    return proc.stdout


def stage_command(stage: str) -> str | None:
    try:
        stages = (yaml.safe_load(Path("dvc.yaml").read_text()) or {}).get("stages") or {}
        cmd = (stages.get(stage.split("@")[0]) or {}).get("cmd")
        return " && ".join(cmd) if isinstance(cmd, list) else cmd
    except (OSError, yaml.YAMLError, AttributeError):
        return None


PUBLISHED, NOT_PUBLISHED, FAILED = "published", "not published", "failed"


def run_day(day: dt.date, opts: Options, send_report: bool = True) -> str:
    """One day, start to finish: PUBLISHED; NOT_PUBLISHED (the pipeline ran, the quality gate
    kept the model back: alerted and reported); or FAILED (alerted)."""
    env = child_env()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{day.isoformat()}.log"
    t0 = time.monotonic()

    def progress(step: str, what: str) -> None:
        print(f"[{day}] {step:<18} {what}", file=opts.out, flush=True)

    def echo(line: str) -> None:
        if opts.verbose:
            print(f"    {line}", file=opts.out, flush=True)

    def context(**extra) -> dict:
        return {"run_date": day.isoformat(), **extra, "host": socket.gethostname(),
                "workdir": str(Path.cwd()), "log": str(log_path.resolve())}

    outcome = PUBLISHED
    with log_path.open("a") as log:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n=== daily run {day} started {now} UTC on {socket.gethostname()} "
                  f"(pid {os.getpid()}) ===\n")
        try:
            P.set_run_date(day, PARAMS_PATH)
            progress("params.yaml", f"run.date = {day}")
            remote = default_remote(env)
            if remote:
                simple_step("dvc pull", dvc("pull", "--allow-missing"), env, log, opts, progress,
                            echo)
            tracker = StageTracker(progress, opts.tail_lines)

            def on_repro_line(line: str) -> None:
                tracker.feed(line)
                echo(line)

            try:
                status = stream(dvc("repro"), env, log, on_repro_line)
            except Terminated:
                raise tracker.fail(-signal.SIGTERM) from None
            if status != 0:
                failure = tracker.fail(status)
                if failure.step != "publish" or not gate_failed(day):
                    raise failure
                # publish refused because the gate said no: the pipeline did its job; the day's
                # data and model are recorded (push, commit) and the day is alerted and reported.
                outcome = NOT_PUBLISHED
                progress("publish", "refused: the quality gate failed; the served version stays")
                log.write("=== quality gate failed: nothing published ===\n")
                notify.alert(f"daily run {day}: quality gate failed, nothing published",
                             context=context(stage="publish", gate=gate_reason()),
                             log_tail="\n".join(failure.tail[-opts.tail_lines:]))
            else:
                tracker.finish()
            if remote:
                simple_step("dvc push", dvc("push"), env, log, opts, progress, echo)
            else:
                progress("dvc push", "skipped (no default DVC remote)")
            if opts.commit:
                started = time.monotonic()
                committed = git_commit(day, env, log)
                progress("git commit", f"{committed} in {time.monotonic() - started:.1f} s")
        except StepFailed as failure:
            log.write(f"=== FAILED at {failure.step} ({failure.why}) ===\n")
            progress(failure.step, f"FAILED after {failure.seconds:.1f} s ({failure.why}); "
                                   f"full output: {log_path}")
            # The runner's own traceback says nothing; the stage's is in the log tail.
            notify.alert(f"daily run {day} failed at stage {failure.step}",
                         error=failure.with_traceback(None),
                         context=context(stage=failure.step,
                                         command=stage_command(failure.step) or failure.step,
                                         exit_status=failure.status),
                         log_tail="\n".join(failure.tail[-opts.tail_lines:]))
            return FAILED
        except Exception as err:  # noqa: BLE001 - a bug in the runner is a failed run, alerted
            log.write(f"=== FAILED in the runner: {err!r} ===\n")
            progress("runner", f"FAILED: {type(err).__name__}: {err}")
            notify.alert(f"daily run {day} failed in the runner", error=err, context=context())
            return FAILED
        make_report(day, send_report and opts.mail_report, progress, log)
        log.write(f"=== {outcome} in {time.monotonic() - t0:.1f} s ===\n")
    progress("done", f"{outcome} in {time.monotonic() - t0:.1f} s")
    return outcome


GATE_FILE = Path("metrics/gate.json")


def gate_failed(day: dt.date, path: Path = GATE_FILE) -> bool:
    """Whether today's quality gate said no (publish then refuses to run)."""
    try:
        gate = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(gate, dict) and gate.get("passed") is False
            and str(gate.get("run_date", day.isoformat()))[:10] == day.isoformat())


def gate_reason(path: Path = GATE_FILE) -> str:
    try:
        return str(json.loads(path.read_text()).get("reason") or "no reason given")
    except (OSError, ValueError, AttributeError):
        return "unknown"


def simple_step(name: str, cmd: list[str], env: dict, log: TextIO, opts: Options,
                progress: Callable[[str, str], None], echo: Callable[[str], None]) -> None:
    tail: collections.deque = collections.deque(maxlen=opts.tail_lines)
    started = time.monotonic()

    def on_line(line: str) -> None:
        tail.append(line)
        echo(line)

    try:
        status = stream(cmd, env, log, on_line)
    except Terminated:
        status = -signal.SIGTERM
    seconds = time.monotonic() - started
    if status != 0:
        raise StepFailed(name, status, list(tail), seconds)
    progress(name, f"done in {seconds:.1f} s")


def make_report(day: dt.date, send: bool, progress: Callable[[str, str], None],
                log: TextIO) -> None:
    """The business owner's report. Its failure is alerted but does not fail the run: the
    pipeline itself succeeded and its outputs are published."""
    from stages import report

    started = time.monotonic()
    try:
        built, mailed = report.daily_report(day, send=send)
    except Exception as err:  # noqa: BLE001
        log.write(f"report failed: {err!r}\n")
        progress("report", f"FAILED: {type(err).__name__}: {err}")
        notify.alert(f"daily report for {day} could not be built", error=err,
                     context={"run_date": day.isoformat(), "host": socket.gethostname()})
        return
    where = report.REPORTS_DIR / f"{day.isoformat()}.html"
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
    ap.add_argument("--no-report-mail", action="store_true",
                    help="save the daily report under reports/daily/ but do not mail it")
    ap.add_argument("--lock-file", type=Path, default=LOCK_PATH)
    ap.add_argument("-v", "--verbose", action="store_true", help="echo every line of output")
    args = ap.parse_args(argv)
    today = dt.datetime.now(dt.timezone.utc).date()
    if args.date and (args.first or args.last):
        ap.error("give either --date or --from/--to, not both")
    if args.last and not args.first:
        ap.error("--to needs --from")
    if args.first:
        last = args.last or today
        if args.first > last:
            ap.error(f"--from {args.first} is after --to {last}")
        days = [args.first + dt.timedelta(days=i) for i in range((last - args.first).days + 1)]
    else:
        days = [args.date or today]
    return args, days


def tail_lines_setting() -> int:
    try:
        return int((P.load(PARAMS_PATH).get("alerts") or {}).get("log_tail_lines",
                                                                 DEFAULT_TAIL_LINES))
    except (P.ConfigError, ValueError, TypeError, AttributeError):
        return DEFAULT_TAIL_LINES


def main(argv: list[str] | None = None) -> int:
    args, days = parse_args(argv)
    if not Path("dvc.yaml").exists():
        print(f"daily: error: no dvc.yaml in {Path.cwd()}: run from the project root",
              file=sys.stderr)
        return EXIT_USAGE
    opts = Options(commit=args.commit, verbose=args.verbose, mail_report=not args.no_report_mail,
                   tail_lines=tail_lines_setting())
    # A stop (systemd timeout, kill) becomes a failure of the running stage, alerted like any.
    signal.signal(signal.SIGTERM, _on_sigterm)
    lock = RunLock(args.lock_file)
    try:
        lock.acquire({"pid": os.getpid(), "host": socket.gethostname(),
                      "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "dates": f"{days[0]}..{days[-1]}" if len(days) > 1 else str(days[0])})
    except RunBusy as busy:
        print(busy_message(args.lock_file, str(busy)), file=sys.stderr)
        return EXIT_BUSY
    try:
        held_back = []
        for i, day in enumerate(days):
            # A backfill saves every day's report but mails only the last one.
            outcome = run_day(day, opts, send_report=(i == len(days) - 1))
            if outcome == FAILED:
                if len(days) > 1:
                    left = days[i + 1:]
                    print(f"daily: backfill stopped at {day}"
                          + (f"; not run: {left[0]}..{left[-1]}" if left else ""), file=sys.stderr)
                return EXIT_FAILED
            if outcome == NOT_PUBLISHED:
                held_back.append(day.isoformat())
        if held_back:
            print(f"daily: nothing published for {', '.join(held_back)}: the quality gate failed",
                  file=sys.stderr)
            return EXIT_NOT_PUBLISHED
        return 0
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
