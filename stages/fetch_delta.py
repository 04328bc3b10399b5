"""fetch_delta: read the 24 hours before run.date from every source table, in canonical form.

    python -m stages.fetch_delta [--params params.yaml]

Outputs
    data/delta/events.parquet      canonical events (dailyrec.core.schema.EVENT_SCHEMA), deduplicated
    data/delta/quarantine.parquet  rows that could not be used, with the field, value and reason
    metrics/fetch.json             counts per table and per quarantine reason

The source database is DAILYREC_SOURCE_URL (default sqlite:///source.db); the tables and their
columns are params.yaml `source`. How rows are read and normalised: dailyrec.tables.source.
"""

from __future__ import annotations

import argparse
import sys

from dailyrec.core import cli, env, metrics, paths, settings
from dailyrec.ingest import source
from dailyrec.ingest import settings as ingest
from dailyrec.ingest import tables


def main_body(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description="Fetch the day's events into data/delta/.")
    ap.add_argument("--params", default=None, help="params file (default params.yaml)")
    args = ap.parse_args(argv)
    params = settings.load(args.params)
    day = settings.run_date(params)
    counts = source.fetch(tables.source(params), ingest.fetch_window(params), env.source_url(),
                          paths.DELTA_DIR)
    metrics.FETCH.write({"run_date": day.isoformat(), **counts})
    print(f"fetch_delta {day}: fetched {counts['fetched']}, kept {counts['kept']}, "
          f"quarantined {counts['quarantined']}, duplicates {counts['duplicates']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_stage("fetch_delta", main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
