"""merge_history: add the day's delta to the rolling, day-partitioned history.

    python -m stages.merge_history [--params params.yaml]

Inputs   data/delta/events.parquet, data/delta/quarantine.parquet (fetch_delta)
Outputs  data/history/day=YYYY-MM-DD/*.parquet   the history (layout: dailyrec.ingest.history)
         data/quarantine/date=YYYY-MM-DD.parquet  each run's quarantined rows, kept
         metrics/history.json                     days, rows, and what this run added

A re-run of a day replaces what that run wrote (so a day re-fetched after the source was fixed
keeps none of its rejected rows); an event already in another run's file of its day is a duplicate
(skipped), one already in another day up to fetch.max_late_days back was re-sent (quarantined as
event_id:resent). Partitions older than history.days before run.date are removed; a run that
would remove more than history.max_removed_share of the history's events is refused first.
"""

from __future__ import annotations

import argparse
import sys

from dailyrec.core import cli, metrics, paths, settings
from dailyrec.ingest import history
from dailyrec.core.errors import ConfigError
from dailyrec.ingest import settings as ingest


def main_body(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description="Merge data/delta/ into data/history/.")
    ap.add_argument("--params", default=None, help="params file (default params.yaml)")
    args = ap.parse_args(argv)
    params = settings.load(args.params)
    day, keep = settings.run_date(params), ingest.history_days(params)
    dedupe = ingest.max_late(params).days  # a re-send arrives within the late window
    for path in (paths.DELTA_EVENTS, paths.DELTA_QUARANTINE):
        if not path.exists():
            raise ConfigError(f"{path} not found: run fetch_delta first")
    history.check_removal(paths.HISTORY_DIR, day, keep, ingest.max_removed_share(params))
    counts, resent = history.merge(paths.DELTA_EVENTS, paths.HISTORY_DIR, day, keep, dedupe)
    counts["quarantined"] = history.archive_quarantine(
        paths.DELTA_QUARANTINE, paths.QUARANTINE_DIR, day, keep, history.resent_rows(resent))
    metrics.HISTORY.write({"run_date": day.isoformat(), **counts})
    print(f"merge_history {day}: added {counts['added']} ({counts['duplicates_skipped']} already "
          f"present); history {counts['days']} days, {counts['rows']} events")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_stage("merge_history", main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
