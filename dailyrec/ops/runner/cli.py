"""The command line of the daily run (`python -m stages.daily`): its arguments, the lock, the days
to run (catch-up, backfill) and the exit status of the whole run."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from dailyrec.core import errors, paths, settings
from dailyrec.ops import settings as ops
from dailyrec.ops.runner import day as D
from dailyrec.ops.runner.commands import on_sigterm
from dailyrec.ops.runner.lock import RunLock
from dailyrec.ops.runner.state import catch_up

EXIT_NOT_PUBLISHED = errors.NotPublished.exit_code
EXIT_BUSY = errors.Busy.exit_code
EXIT_USAGE = errors.ConfigError.exit_code


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


def options(args: argparse.Namespace, days: list[dt.date]) -> D.Options:
    """The run's options: the arguments, and params.yaml's alert and deadline settings (their
    fallbacks when it is unreadable: the run goes on to fail on it, and must be able to say so)."""
    opts = D.Options(commit=args.commit, branch=args.branch, verbose=args.verbose,
                     mail_report=not args.no_report_mail,
                     check_stale=not (args.first and historical(days)))
    try:
        params = settings.load()
        found = ops.alerts(params)
        opts.tail_lines, opts.throttle_minutes = found.log_tail_lines, found.throttle_minutes
        opts.stage_timeout_minutes = ops.stage_timeout_minutes(params)
    except errors.ConfigError:
        pass
    return opts


def main(argv: list[str] | None = None) -> int:
    args, days = parse_args(argv)
    if not paths.DVC_FILE.exists():
        print(f"daily: error: no dvc.yaml in {Path.cwd()}: run from the project root",
              file=sys.stderr)
        return EXIT_USAGE
    opts = options(args, days)
    # A stop (systemd timeout, kill) becomes a failure of the running stage, alerted like any.
    signal.signal(signal.SIGTERM, on_sigterm)
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
        return run_days(days, opts)
    finally:
        lock.release()


def run_days(days: list[dt.date], opts: D.Options) -> int:
    """Each day in order; the first failed day stops a backfill. The exit status: the failure's;
    else 65 when a day's data was rejected, 3 when a day's model was kept back, else 0."""
    held_back, rejected = [], []
    for i, day in enumerate(days):
        result = D.DayRun(day, opts, last=(i == len(days) - 1)).run()
        if result.outcome == D.FAILED:
            if len(days) > 1:
                left = days[i + 1:]
                print(f"daily: backfill stopped at {day}"
                      + (f"; not run: {left[0]}..{left[-1]}" if left else ""), file=sys.stderr)
            return result.failure.exit_code if result.failure else 1
        if result.outcome == D.NOT_PUBLISHED:
            held_back.append(day.isoformat())
        if result.outcome == D.REJECTED:
            rejected.append(day.isoformat())
    if rejected:
        print(f"daily: the data of the day before {', '.join(rejected)} was rejected by validate: "
              "left out of training until a person admits it (python -m stages.validate status)",
              file=sys.stderr)
    if held_back:
        print(f"daily: nothing published for {', '.join(held_back)}: the quality gate failed",
              file=sys.stderr)
    if rejected:
        return errors.DayRejected.exit_code
    return EXIT_NOT_PUBLISHED if held_back else 0
