"""One day's run (DayRun): set run.date, recover what an earlier fault left, pull, run each stage
of dvc.yaml in data-flow order, push, commit, keep the disk bounded, then say what is served and
report. The DayRun holds what every step of it needs (the day, the options, the log, the notes
for the report) and says things in one voice: a progress line, the log, an alert.

Outcomes: PUBLISHED; NOT_PUBLISHED (the quality gate kept the model back); REJECTED (validate
rejected the day's data); REBUILT (a past day run again: newer lists stay served); FAILED. Only
FAILED is retried by the next night: the others are verdicts, and running the day again would
give the same answer.
"""

from __future__ import annotations

import collections
import datetime as dt
import io
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from dailyrec.core import paths, settings
from dailyrec.ops import notify, pipeline
from dailyrec.ops.runner import retention, served, stages, state, workspace
from dailyrec.ops.runner.commands import (Command, Finished, StepFailed, Terminated, child_env,
                                          stream)

PUBLISHED, NOT_PUBLISHED, REJECTED, FAILED = "published", "not published", "rejected", "failed"
REBUILT = "rebuilt, not served"  # a past day run again: newer lists stay served
# Used only when params.yaml itself cannot be read (the run must still alert on that).
FALLBACK_TAIL_LINES = 50
FALLBACK_THROTTLE_MINUTES = 60.0
FALLBACK_STAGE_TIMEOUT_MINUTES = 180.0


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


@dataclass
class DayResult:
    outcome: str
    failure: StepFailed | None = None


class DayRun:
    """One day of the daily run, start to finish (run())."""

    def __init__(self, day: dt.date, opts: Options, last: bool = True):
        self.day, self.opts = day, opts
        self.last = last  # the run's last day: it mails its report and checks what is served
        self.env = child_env()
        self.log_path = paths.DAILY_LOGS / f"{day.isoformat()}.log"
        self.log: TextIO = io.StringIO()  # the day's log once run() opens it
        self.notes: list[str] = []  # what the report's run notes say
        self.outcome = PUBLISHED
        self.newest = state.last_completed()
        # A day older than one already run is a rebuild: it must not replace newer served lists,
        # rewind the runner's memory, or move the branch back to an older day.
        self.rebuild = self.newest is not None and day < self.newest

    # --- saying things ---------------------------------------------------------------------

    def progress(self, step: str, what: str) -> None:
        print(f"[{self.day}] {step:<18} {what}", file=self.opts.out, flush=True)

    def echo(self, line: str) -> None:
        if self.opts.verbose:
            print(f"    {line}", file=self.opts.out, flush=True)

    def context(self, **extra) -> dict:
        return {"run_date": self.day.isoformat(), **extra, "host": socket.gethostname(),
                "workdir": str(Path.cwd()), "log": str(self.log_path.resolve())}

    def alert(self, subject: str, **kwargs) -> None:
        notify.alert(subject, throttle_minutes=self.opts.throttle_minutes, **kwargs)

    def alert_failure(self, subject: str, failure: StepFailed) -> None:
        self.alert(subject, error=failure.with_traceback(None),
                   context=self.context(stage=failure.step),
                   log_tail="\n".join(failure.tail[-self.opts.tail_lines:]))

    # --- running commands ------------------------------------------------------------------

    def execute(self, name: str, argv: list[str], extra_env: dict | None = None,
                quiet: bool = False) -> Finished:
        """Run a command of the day under its deadline, its output to the log (and, verbose, the
        console), its last lines kept."""
        tail: collections.deque = collections.deque(maxlen=self.opts.tail_lines)
        command = Command(argv, {**self.env, **(extra_env or {})},
                          self.opts.stage_timeout_minutes * 60)

        def on_line(line: str) -> None:
            tail.append(line)
            if not quiet:
                self.echo(line)

        started = time.monotonic()
        try:
            status = stream(command, self.log, on_line)
        except Terminated:
            status = -signal.SIGTERM
        return Finished(name, status, list(tail), time.monotonic() - started,
                        command.timed_out.is_set(), self.opts.stage_timeout_minutes)

    def step(self, name: str, argv: list[str], say: bool = True) -> Finished:
        """A command that must succeed (dvc pull, push, gc): StepFailed when it does not."""
        done = self.execute(name, argv)
        if done.status != 0:
            raise done.failure()
        if say:
            self.progress(name, f"done in {done.seconds:.1f} s")
        return done

    # --- the day ---------------------------------------------------------------------------

    def run(self) -> DayResult:
        paths.DAILY_LOGS.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        # the report's imports, while this process only waits for DVC and the stages
        threading.Thread(target=_preload_report, name="report-imports").start()
        with self.log_path.open("a") as self.log:
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            self.log.write(f"\n=== daily run {self.day} started {now} UTC on "
                           f"{socket.gethostname()} (pid {os.getpid()}) ===\n")
            try:
                remote = self.prepare()
                self.run_stages()
                self.record(remote)
            except StepFailed as failure:
                return self.failed(failure)
            except Exception as err:  # noqa: BLE001 - a bug in the runner is a failed run
                return self.failed_in_runner(err)
            self.finish()
            self.log.write(f"=== {self.outcome} in {time.monotonic() - t0:.1f} s ===\n")
        self.progress("done", f"{self.outcome} in {time.monotonic() - t0:.1f} s")
        return DayResult(self.outcome)

    def prepare(self) -> str | None:
        """run.date set, the workspace made whole, the day's inputs pulled; the default remote."""
        settings.set_run_date(self.day)
        self.progress("params.yaml", f"run.date = {self.day}")
        if self.rebuild:
            self.progress("past day", f"rebuilding {self.day}, older than the last day run "
                                      f"({self.newest}): the newer served lists, the runner's "
                                      "state and the branch stay as they are")
        remote = workspace.default_remote(self.env)
        recovered = workspace.recover(self, remote)
        if recovered:
            self.notes += recovered
            self.progress("recover", "; ".join(recovered))
            self.log.write("=== recovered: " + "; ".join(recovered) + " ===\n")
            self.alert(f"daily run {self.day}: recovered from an earlier fault",
                       context=self.context(recovered="; ".join(recovered)))
        if remote:
            self.notes += workspace.pull(self)
            self.notes += workspace.push_pending(self)
        return remote

    def run_stages(self) -> None:
        """Each stage of dvc.yaml in data-flow order; a verdict (the gate, a rejected day) ends
        the stages of the day without failing it."""
        for stage in pipeline.load().order():
            done = stages.run_stage(self, stage)
            if done.how != "failed":
                self.progress(stage, done.said())
                continue
            if not done.verdict:
                raise StepFailed(Finished(stage, done.exit_code, done.tail, done.seconds),
                                 done.kind, done.message)
            self.on_verdict(done)
            if self.outcome == REJECTED:
                break

    def on_verdict(self, done: stages.StageOutcome) -> None:
        """The stage did its job and said no. The day's data (and model) are recorded (push,
        commit), the day is alerted and reported, and counts as done: running it again would
        give the same answer, so no later night retries it."""
        said = done.message.splitlines()[0][:300] if done.message else ""
        if done.kind == "not_published" and self.rebuild:
            self.outcome = REBUILT
            self.progress(done.stage, f"refused: {said}")
        elif done.kind == "not_published":
            self.outcome = NOT_PUBLISHED
            self.progress(done.stage, "refused: the quality gate failed; the served version stays")
            self.log.write("=== quality gate failed: nothing published ===\n")
            self.alert(f"daily run {self.day}: quality gate failed, nothing published",
                       context=self.context(stage=done.stage, gate=stages.gate_reason()),
                       log_tail="\n".join(done.tail))
        else:
            self.outcome = REJECTED
            event_day = self.day - dt.timedelta(days=1)
            self.progress(done.stage, f"REJECTED: {said}; nothing trained or published today, "
                                      "the served version stays, and later days leave this day "
                                      "out")
            self.log.write("=== the day's data was rejected: nothing trained or published ===\n")
            self.alert(f"daily run {self.day}: the data of {event_day} was rejected, nothing "
                       "trained or published",
                       context=self.context(stage=done.stage, kind=done.kind,
                                            admit=f"python -m stages.validate admit {event_day} "
                                                  "--by NAME --note WHY"),
                       log_tail="\n".join(done.tail))

    def record(self, remote: str | None) -> None:
        """The day kept for good: pushed to the DVC remote, committed, the disk kept bounded,
        and remembered as done."""
        pushed = workspace.push(self, remote)
        if self.opts.commit and self.rebuild:
            self.progress("git commit", f"skipped: {self.day} is older than the last day run "
                                        f"({self.newest}); the branch keeps the newer day")
        elif self.opts.commit:
            workspace.commit(self, pushed)
        self.notes += retention.retain(self, remote, pushed)
        state.save_state(last_completed=max(self.day, self.newest or self.day).isoformat())

    def finish(self) -> None:
        what_is_served = served.check_served(self, self.opts.check_stale) if self.last else None
        make_report(self, what_is_served)

    def failed(self, failure: StepFailed) -> DayResult:
        self.log.write(f"=== FAILED at {failure.step} ({failure.why}, {failure.kind}) ===\n")
        said = f": {failure.message.splitlines()[0][:200]}" if failure.message else ""
        self.progress(failure.step, f"FAILED after {failure.seconds:.1f} s ({failure.why}, "
                                    f"{failure.kind}){said}; full output: {self.log_path}")
        # The runner's own traceback says nothing; the stage's is in the log tail.
        found = pipeline.load_or_none()
        command = found.stages[failure.step].cmd if found and failure.step in found.stages \
            else failure.step
        self.alert(f"daily run {self.day} failed at stage {failure.step} ({failure.kind})",
                   error=failure.with_traceback(None),
                   context=self.context(stage=failure.step, command=command, kind=failure.kind,
                                        exit_status=failure.status),
                   log_tail="\n".join(failure.tail[-self.opts.tail_lines:]))
        if self.last:
            served.check_served(self, self.opts.check_stale)
        return DayResult(FAILED, failure)

    def failed_in_runner(self, err: Exception) -> DayResult:
        from dailyrec.core import errors

        self.log.write(f"=== FAILED in the runner: {err!r} ===\n")
        self.progress("runner", f"FAILED: {type(err).__name__}: {err}")
        self.alert(f"daily run {self.day} failed in the runner", error=err,
                   context=self.context())
        kind = err.kind if isinstance(err, errors.DailyrecError) else "bug"
        return DayResult(FAILED, StepFailed(Finished("runner", getattr(err, "exit_code", 1)),
                                            kind, str(err)))


def _preload_report() -> None:
    from dailyrec.ops import report

    report.preload()


def make_report(run: DayRun, what_is_served: dict | None) -> None:
    """The business owner's report. Its failure is alerted but does not fail the run: the
    pipeline itself succeeded and its outputs are published."""
    from dailyrec.ops import report

    started = time.monotonic()
    send = run.last and run.opts.mail_report  # a backfill mails its last day's report only
    try:
        built, mailed = report.daily_report(run.day, send=send, notes=list(run.notes),
                                            served=what_is_served, outcome=run.outcome)
    except Exception as err:  # noqa: BLE001
        run.log.write(f"report failed: {err!r}\n")
        run.progress("report", f"FAILED: {type(err).__name__}: {err}")
        notify.alert(f"daily report for {run.day} could not be built", error=err,
                     context={"run_date": run.day.isoformat(), "host": socket.gethostname()},
                     throttle_minutes=run.opts.throttle_minutes)
        return
    where = paths.DAILY_REPORTS / f"{run.day.isoformat()}.html"
    said = "mailed" if mailed else ("not mailed" if send else "saved only")
    run.progress("report", f"{where} ({said}) in {time.monotonic() - started:.1f} s")
    run.log.write(f"report: {built.subject}\n")
