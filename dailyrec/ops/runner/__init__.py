"""The daily run: the one command a scheduler calls (`python -m stages.daily`).

    python -m stages.daily [--date YYYY-MM-DD] [--commit]        one day (default: today, UTC)
    python -m stages.daily --from 2026-11-15 --to 2026-11-21     backfill, in order

Per day (day.DayRun): set run.date in params.yaml, make the workspace whole, `dvc pull`, each
stage of dvc.yaml in data-flow order with `dvc repro --single-item`, `dvc push`, optionally commit
params.yaml + dvc.lock (so the day's model can be rebuilt from that commit), keep the disk bounded,
then say what is served and write the business owner's report. One progress line per step with
its duration; the full output goes to logs/daily/DATE.log.

    cli        the command line: arguments, the lock, catch-up and backfill, the exit status
    day        one day's run: its log, progress, alerts, steps and outcome
    commands   running dvc and the stages: environment, deadlines, output, what a failure was
    stages     one pipeline stage, and how it ended, from the stage's own status file
    workspace  DVC and git: recovery, pull, push (and pending pushes), the day's commit
    state      the runner's memory and dvc.lock's: the last day done, catch-up
    retention  the bounded disk: dvc gc and MLflow's model versions
    served     how old the lists the API serves are
    lock       one run at a time

Any failure mails an alert naming the failing step and its error kind with the last lines of its
output, stops a backfill, and exits with that kind's status (docs/operations.md). A verdict (the
quality gate keeping the model back, validate rejecting the day) is not a failure: the day is
pushed, committed, alerted and reported, a backfill goes on, and later nights do not retry it.

Run it from the project root, with the venv's Python: its bin/ goes first on the stages' PATH.
"""

from dailyrec.ops.runner.cli import main

__all__ = ["main"]
