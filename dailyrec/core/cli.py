"""How a stage entry point ends: one clear line and an exit status per error kind (dailyrec.core.errors).

    sys.exit(cli.run_stage("train", body, argv))

When the daily runner starts a stage it sets DAILYREC_STAGE_STATUS to a file; the stage writes
{"stage", "exit_code", "kind", "message", "peak_rss_mb"} there as it ends, so the runner learns
which stage ran, how it ended and how much memory it took from the stage itself, not from DVC's
console text.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import sys
import traceback
from typing import Callable

from dailyrec.core import env
from dailyrec.core.errors import DailyrecError, ServiceUnavailable

# A full disk (or quota): not a bug. The next run retries once space is freed.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _record(stage: str, exit_code: int, kind: str, message: str, verdict: bool = False) -> None:
    path = os.environ.get(env.STAGE_STATUS_FILE)
    if not path:
        return
    try:
        with open(path, "w") as fh:
            json.dump({"stage": stage, "exit_code": exit_code, "kind": kind, "verdict": verdict,
                       "message": message[:2000], "peak_rss_mb": peak_rss_mb()}, fh)
    except OSError:  # the runner falls back on the exit status
        pass


def no_space(err: OSError) -> ServiceUnavailable:
    """A full disk, in words: which path (or the device of the working directory, when the
    library did not say), how much is free there, what to do."""
    where = os.path.abspath(err.filename) if err.filename else None
    folder = where if where and os.path.isdir(where) else \
        os.path.dirname(where) if where else os.getcwd()
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    what = where or f"the device of {folder}"
    return ServiceUnavailable(f"no space left on {what} ({free}): free some space; the next run "
                              "retries")


def run_stage(name: str, body: Callable[[list[str] | None], int | None],
              argv: list[str] | None = None) -> int:
    """Run a stage's body. A DailyrecError becomes one line on stderr and its exit status; any other
    exception is a bug: its traceback, exit status 1."""
    try:
        try:
            status = body(argv) or 0
        except OSError as err:
            if err.errno not in NO_SPACE_ERRNOS:
                raise
            raise no_space(err) from None
    except DailyrecError as err:
        print(f"{name}: {'error: ' if err.exit_code != 3 else ''}{err}", file=sys.stderr)
        _record(name, err.exit_code, err.kind, str(err), err.verdict)
        return err.exit_code
    except KeyboardInterrupt:
        _record(name, 130, "interrupted", "interrupted")
        raise
    except Exception as err:  # noqa: BLE001 - recorded, then re-raised with its traceback
        _record(name, 1, "bug", "".join(traceback.format_exception_only(type(err), err)).strip())
        raise
    _record(name, status, "ok" if status == 0 else "error", "")
    return status
