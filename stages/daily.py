"""The daily run, the one command a scheduler calls (not a DVC stage: it runs them).

    python -m stages.daily [--date YYYY-MM-DD] [--commit]        one day (default: today, UTC)
    python -m stages.daily --from 2026-11-15 --to 2026-11-21     backfill, in order

What it does, its exit statuses and its alerts: dailyrec.ops.runner and docs/operations.md.
"""

import sys

from dailyrec.ops.runner import main

if __name__ == "__main__":
    sys.exit(main())
