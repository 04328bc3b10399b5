"""make demo: simulate a week of production traffic, then run the pipeline one day at a time.

Each day runs the scheduler's own command, `python -m stages.daily --date DAY --commit --branch
dailyrec-demo` (set run.date, dvc pull, dvc repro, dvc push, a commit, the daily report under
reports/daily/); at the end it prints what each day fetched, kept and quarantined.
`python -m tools.demo --next-steps` (make demo's last step) prints, as commands that work right
away, the ways the project is used: the MLflow UI, rebuilding a past model from its commit,
rolling back and forward, DVC's plots and experiments, where the reports are.

The days are committed as a scheduler with --commit would commit them, but onto a branch the demo
owns (dailyrec-demo, reset to HEAD when a demo starts) through a private git index: the user's own
branch, index and working tree are untouched, while `make reproduce` finds the commits (it searches
every branch) and the DVC remote (dvc-remote/) holds their data. With no SMTP settings in the
environment, reports are saved, not mailed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from dailyrec.core import env, paths, settings
from tools import simulate

FIRST_DAY = dt.date(2026, 11, 14)
BRANCH = "dailyrec-demo"
# Used only when git has no identity configured, so the demo's commits can be made.
IDENTITY = {"GIT_AUTHOR_NAME": "dailyrec demo", "GIT_AUTHOR_EMAIL": "demo@dailyrec.invalid",
            "GIT_COMMITTER_NAME": "dailyrec demo", "GIT_COMMITTER_EMAIL": "demo@dailyrec.invalid"}


# stages.daily exits 3 when the quality gate kept a day's model back (on the first day there is
# no history before the held-out day to evaluate on): the run itself succeeded.
DAILY_OK = (0, 3)


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def in_git() -> bool:
    return git("rev-parse", "--is-inside-work-tree").stdout.strip() == "true"


def run_day(day: dt.date, target: str | None, commit: bool) -> None:
    if target:  # only part of the pipeline, for a quick look at ingestion
        settings.set_run_date(day)
        subprocess.run(["dvc", "repro", target], check=True)
        return
    extra = ["--commit", "--branch", BRANCH] if commit else []
    child = dict(os.environ)
    if commit and git("var", "GIT_COMMITTER_IDENT").returncode:
        child.update(IDENTITY)
    status = subprocess.run([sys.executable, "-m", "stages.daily", "--date", day.isoformat(),
                             *extra], env=child).returncode
    if status not in DAILY_OK:
        raise SystemExit(f"demo: the daily run for {day} failed (exit {status}); see logs/daily/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--events-per-day", type=int, default=50_000)
    ap.add_argument("--target", default=None, help="dvc repro target (default: the whole pipeline)")
    ap.add_argument("--next-steps", action="store_true",
                    help="only print the next steps after a demo, as commands that work now")
    args = ap.parse_args(argv)
    if args.next_steps:
        print(next_steps())
        return 0
    commit = in_git() and args.target is None
    if commit:  # the demo's own branch starts again from the user's HEAD
        git("update-ref", f"refs/heads/{BRANCH}", "HEAD")
    original_params = Path("params.yaml").read_bytes()
    url = env.source_url()
    print(f"simulating {args.days} days of production traffic into {url} ...", flush=True)
    simulate.write(url, FIRST_DAY, args.days, seed=7, users=20_000, items=5_000,
                   events_per_day=args.events_per_day)
    rows = []
    for offset in range(1, args.days + 1):
        day = FIRST_DAY + dt.timedelta(days=offset)
        print(f"\n=== run.date {day} ===", flush=True)
        run_day(day, args.target, commit)
        fetch = json.loads(Path("metrics/fetch.json").read_text())
        history = json.loads(Path("metrics/history.json").read_text())
        rows.append((day.isoformat(), fetch["fetched"], fetch["kept"], fetch["duplicates"],
                     fetch["quarantined"], history["days"], history["rows"]))
    header = ("run.date", "fetched", "kept", "duplicates", "quarantined", "history days",
              "history rows")
    print("\n" + format_table(header, rows))
    reasons = json.loads(Path("metrics/fetch.json").read_text())["quarantined_by_reason"]
    print("\nquarantined on the last day, by reason: "
          + ", ".join(f"{k}={v}" for k, v in reasons.items()))
    if commit and Path("params.yaml").read_bytes() != original_params:
        # The runs set run.date in params.yaml; their commits on the demo branch keep it. The
        # user's tracked files stay as they were.
        Path("params.yaml").write_bytes(original_params)
    return 0


def next_steps() -> str:
    """What to try after the demo, each a command that works now, with what it shows."""
    from dailyrec.publish import connection, writer
    from dailyrec.publish import keys as K

    log = git("log", "--format=%H %s", BRANCH).stdout.splitlines() if in_git() else []
    days = [(line.split()[0], line.split()[-1]) for line in log if " daily run " in f" {line}"]
    try:
        rows = writer.version_table(connection.client(timeout=5.0), K.Layout.from_env())
    except Exception:  # noqa: BLE001 - Redis gone since the demo: say so, print the rest
        rows = []
    complete = [r["version"] for r in rows if r.get("status") == "complete"]
    served = next((r["version"] for r in rows if r["served"]), None)
    lines = ["", "Next steps (each works now, from this directory):", ""]

    def step(command: str, what: str) -> None:
        lines.extend([f"  {what}", f"    $ {command}", ""])

    step("make mlflow-ui",
         "Compare runs: the MLflow UI on http://127.0.0.1:5000. Open the experiment 'dailyrec', "
         "tick the runs of the last two days, press Compare (params, NDCG@20, loss curves).")
    if len(days) >= 2:
        sha, day = days[1]  # the day before the last: a published day with a day after it
        step(f"make reproduce COMMIT={sha}",
             f"Rebuild the model of {day} from its commit (on branch {BRANCH}) and check it is "
             "byte-identical to the one recorded in its dvc.lock.")
    if served and served in complete and complete.index(served) > 0:
        before = complete[complete.index(served) - 1]
        step(".venv/bin/python -m stages.publish rollback",
             f"Roll back: serve yesterday's lists ({before}) instead of {served}, in one switch.")
        step(f".venv/bin/python -m stages.publish rollback --to {served}",
             "Roll forward again to today's lists.")
    step(".venv/bin/dvc metrics show",
         "the day's headline numbers, one row per stage (events kept, removed per rule, "
         "NDCG@20 against most-popular, users published).")
    if len(days) >= 2:
        step(f".venv/bin/dvc metrics diff {BRANCH}~1 {BRANCH}",
             "how those numbers moved between the last two days.")
    step(".venv/bin/dvc plots show",
         "evaluate's recall/NDCG/precision curves at k = 1..20 (ALS, most-popular, published), "
         "written to dvc_plots/index.html; it draws offline (Vega is inside the page).")
    step(".venv/bin/dvc exp show --drop '.*' --keep 'Experiment|Created|.*/(eval|popular)"
         "\\.json:ndcg@20|.*/gate\\.json:passed|train\\.(factors|regularization)'",
         "experiments as a table: the model's NDCG@20 against most-popular's, the gate and the "
         "settings tried (`dvc exp show` alone lists every param and metric); "
         "`dvc exp run -S train.factors=16` tries a change.")
    if days:
        step(f"git log --oneline {BRANCH}", "the demo's daily commits (your branch is untouched).")
    reports = sorted(Path("reports/daily").glob("*.html")) if Path("reports/daily").is_dir() \
        else []
    if reports:
        lines.append(f"  The business owner's daily report: {reports[-1]}")
    if paths.VALIDATION_REPORTS.is_dir():
        lines.append(f"  Data-quality reports: {paths.VALIDATION_REPORTS / 'index.html'}")
    return "\n".join(lines)


def format_table(header, rows) -> str:
    cells = [tuple(map(str, header))] + [tuple(map(str, r)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    sys.exit(main())
