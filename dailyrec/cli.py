"""How a stage entry point ends: one clear line and an exit status per error kind (dailyrec.errors).

    sys.exit(cli.run_stage("train", body, argv))

When the daily runner starts a stage it sets DAILYREC_STAGE_STATUS to a file; the stage writes
{"stage", "exit_code", "kind", "message", "peak_rss_mb"} there as it ends, so the runner learns
which stage ran, how it ended and how much memory it took from the stage itself, not from DVC's
console text.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
from typing import Callable

from dailyrec import env
from dailyrec.errors import DailyrecError


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _record(stage: str, exit_code: int, kind: str, message: str) -> None:
    path = os.environ.get(env.STAGE_STATUS_FILE)
    if not path:
        return
    try:
        with open(path, "w") as fh:
            json.dump({"stage": stage, "exit_code": exit_code, "kind": kind,
                       "message": message[:2000], "peak_rss_mb": peak_rss_mb()}, fh)
    except OSError:  # the runner falls back on the exit status
        pass


def run_stage(name: str, body: Callable[[list[str] | None], int | None],
              argv: list[str] | None = None) -> int:
    """Run a stage's body. A DailyrecError becomes one line on stderr and its exit status; any other
    exception is a bug: its traceback, exit status 1."""
    try:
        status = body(argv) or 0
    except DailyrecError as err:
        print(f"{name}: {'error: ' if err.exit_code != 3 else ''}{err}", file=sys.stderr)
        _record(name, err.exit_code, err.kind, str(err))
        return err.exit_code
    except KeyboardInterrupt:
        _record(name, 130, "interrupted", "interrupted")
        raise
    except Exception as err:  # noqa: BLE001 - recorded, then re-raised with its traceback
        _record(name, 1, "bug", "".join(traceback.format_exception_only(type(err), err)).strip())
        raise
    _record(name, status, "ok" if status == 0 else "error", "")
    return status
