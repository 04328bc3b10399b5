"""make demo: simulate a week of production traffic, then run the pipeline one day at a time.

Each day runs the scheduler's own command, `python -m stages.daily --date DAY` (set run.date,
dvc pull, dvc repro, dvc push, the daily report under reports/daily/); at the end it prints what
each day fetched, kept and quarantined. With no SMTP settings in the environment, reports are saved,
not mailed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from dailyrec import env, settings
from tools import simulate

FIRST_DAY = dt.date(2026, 11, 14)


# stages.daily exits 3 when the quality gate kept a day's model back (on the first day there is
# no history before the held-out day to evaluate on): the run itself succeeded.
DAILY_OK = (0, 3)


def run_day(day: dt.date, target: str | None) -> None:
    if target:  # only part of the pipeline, for a quick look at ingestion
        settings.set_run_date(day)
        subprocess.run(["dvc", "repro", target], check=True)
        return
    status = subprocess.run([sys.executable, "-m", "stages.daily", "--date", day.isoformat()]
                            ).returncode
    if status not in DAILY_OK:
        raise SystemExit(f"demo: the daily run for {day} failed (exit {status}); see logs/daily/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--events-per-day", type=int, default=50_000)
    ap.add_argument("--target", default=None, help="dvc repro target (default: the whole pipeline)")
    args = ap.parse_args(argv)
    url = env.source_url()
    print(f"simulating {args.days} days of production traffic into {url} ...", flush=True)
    simulate.write(url, FIRST_DAY, args.days, seed=7, users=20_000, items=5_000,
                   events_per_day=args.events_per_day)
    rows = []
    for offset in range(1, args.days + 1):
        day = FIRST_DAY + dt.timedelta(days=offset)
        print(f"\n=== run.date {day} ===", flush=True)
        run_day(day, args.target)
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
    return 0


def format_table(header, rows) -> str:
    cells = [tuple(map(str, header))] + [tuple(map(str, r)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    sys.exit(main())
