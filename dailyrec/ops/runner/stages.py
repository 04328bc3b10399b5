"""One pipeline stage of the day: `dvc repro --single-item STAGE`, and how it ended, learnt from
the stage itself rather than from DVC's console text. Each stage writes how it ended to the file
named by DAILYREC_STAGE_STATUS (dailyrec.core.cli): its exit status, its error kind, whether it
said no on purpose (a verdict), its peak memory. A stage that wrote nothing did not run: DVC found
it unchanged, or restored it from the run-cache (its entry in dvc.lock says which)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dailyrec.core import errors
from dailyrec.core.env import STAGE_STATUS_FILE
from dailyrec.ops import pipeline
from dailyrec.ops.runner.state import lock_entry
from dailyrec.ops.runner.commands import DayContext


@dataclass
class StageOutcome:
    stage: str
    how: str  # ran, unchanged, restored, failed
    seconds: float
    exit_code: int = 0
    kind: str = "ok"
    message: str = ""
    tail: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None  # the stage process's own peak, as it reported it
    verdict: bool = False  # it said no on purpose (dailyrec.core.errors.DailyrecError.verdict)

    def said(self) -> str:
        """The progress line of a stage that did not fail."""
        peak = f", peak {self.peak_rss_mb:,.0f} MB" if self.peak_rss_mb else ""
        return {"ran": f"ran in {self.seconds:.1f} s{peak}",
                "unchanged": "unchanged, skipped",
                "restored": f"restored from the run-cache in {self.seconds:.1f} s"}[self.how]


def run_stage(run: DayContext, stage: str) -> StageOutcome:
    """`dvc repro --single-item STAGE`: DVC runs it if its deps, params or outs changed."""
    fd, status_path = tempfile.mkstemp(prefix=f"dailyrec-{stage}-", suffix=".json")
    os.close(fd)
    os.unlink(status_path)  # the stage creates it: no file = the command did not run
    before = lock_entry(stage)
    done = run.execute(stage, pipeline.dvc("repro", "--single-item", stage),
                       {STAGE_STATUS_FILE: status_path})
    record = _status_record(Path(status_path))
    if done.status == 0:
        if record is not None:
            how = "ran"
        else:
            how = "unchanged" if lock_entry(stage) == before else "restored"
        peak = record.get("peak_rss_mb") if record is not None else None
        return StageOutcome(stage, how, done.seconds, tail=done.tail, peak_rss_mb=peak)
    if record is not None and record.get("exit_code"):
        return StageOutcome(stage, "failed", done.seconds, int(record["exit_code"]),
                            str(record.get("kind") or "bug"), str(record.get("message") or ""),
                            done.tail, verdict=bool(record.get("verdict")))
    # The stage never reported: DVC refused to start it, it was killed, it ran out of time, or
    # DVC itself failed (a full disk, say).
    if done.timed_out or (done.status > 0 and done.failure().kind == "unavailable"):
        failure = done.failure()
        return StageOutcome(stage, "failed", done.seconds, errors.ServiceUnavailable.exit_code,
                            "unavailable", failure.message, done.tail)
    if done.status == -signal.SIGTERM:
        return StageOutcome(stage, "failed", done.seconds, done.status, "stopped", "", done.tail)
    return StageOutcome(stage, "failed", done.seconds, done.status,
                        "bug" if done.status > 0 else "stopped", "", done.tail)


def _status_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError):
        return None
    return record


def gate_reason() -> str:
    from dailyrec.core import metrics

    gate = metrics.GATE.read()
    return gate["reason"] if gate else "unknown"
