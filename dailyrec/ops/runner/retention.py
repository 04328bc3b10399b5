"""The scheduler's disk stays bounded (params.yaml `retention`), once the day is pushed and
committed: the local DVC cache keeps what the workspace (and DVC experiments) use while the remote
holds every day, and MLflow keeps the files of the newest model versions and every aliased one.
Never fails the day: what could not be done is logged, alerted (throttled) and noted in the
report, and the next run does it."""

from __future__ import annotations

import time
from pathlib import Path

from dailyrec.core import env, errors, settings
from dailyrec.ops import pipeline
from dailyrec.ops import settings as ops
from dailyrec.ops.runner.commands import DayContext, StepFailed
from dailyrec.ops.runner.state import load_state

# Where DVC keeps its cache by default: what `dvc gc`'s progress line measures (a cache moved
# elsewhere reads 0 there; it is collected all the same).
DVC_CACHE = Path(".dvc/cache")


def retain(run: DayContext, remote: str | None, pushed: bool) -> list[str]:
    """Collect the local cache (only while the remote holds every day: today's push succeeded and
    no earlier one is pending; without a remote the cache is the only copy) and prune MLflow's
    model versions. Returns the report's notes."""
    try:
        params = settings.load()
        cfg = ops.retention(params)
    except errors.ConfigError as err:  # the day is done; left alone, the disk would fill
        run.progress("retention", f"skipped: {err}")
        run.alert(f"daily run {run.day}: retention skipped, params.yaml is not valid",
                  error=err.with_traceback(None), context=run.context(stage="retention"))
        return [f"retention skipped: {err}"]
    notes: list[str] = []
    if cfg.dvc_cache == "all":
        pass  # every object kept
    elif not remote:
        run.progress("dvc gc", "skipped: no default DVC remote (the local cache is the only copy)")
    elif not pushed or load_state().get("pending_push"):
        run.progress("dvc gc", "skipped: the DVC remote does not hold every day yet")
    else:
        notes += collect_cache(run)
    if cfg.mlflow_model_versions and env.mlflow_enabled():
        notes += prune_mlflow(run, ops.mlflow(params), cfg.mlflow_model_versions)
    return notes


def collect_cache(run: DayContext) -> list[str]:
    before, started = tree_bytes(DVC_CACHE), time.monotonic()
    try:
        # --all-experiments: an engineer's `dvc exp run` on this machine keeps its outputs
        # until `dvc exp remove` (they are never pushed by the runner).
        run.step("dvc gc", pipeline.dvc("gc", "--workspace", "--all-experiments", "--force"),
                 say=False)
    except StepFailed as failure:
        run.progress("dvc gc", f"FAILED ({failure.why}); the next run collects it")
        run.alert_failure(f"daily run {run.day}: dvc gc failed, the next run collects the cache",
                          failure)
        return ["dvc gc failed: the local DVC cache was not collected"]
    after = tree_bytes(DVC_CACHE)
    run.progress("dvc gc", f"{(before - after) / 2**20:,.1f} MiB freed from the local cache, "
                           f"{after / 2**20:,.1f} MiB kept, in "
                           f"{time.monotonic() - started:.1f} s")
    return []


def prune_mlflow(run: DayContext, registry: ops.MlflowSettings, keep: int) -> list[str]:
    started = time.monotonic()
    try:
        from dailyrec.ops import tracking

        removed = tracking.prune_versions(registry, keep)
    except Exception as err:  # noqa: BLE001 - the day is done; the next run prunes
        run.log.write(f"=== MLflow retention failed: {err!r} ===\n")
        run.progress("mlflow versions", f"FAILED ({type(err).__name__}); the next run prunes")
        run.alert(f"daily run {run.day}: MLflow retention failed, the next run prunes",
                  error=err, context=run.context(stage="mlflow versions"))
        return [f"MLflow retention failed ({type(err).__name__}): old model versions were not "
                "removed"]
    run.log.write(f"=== MLflow model versions removed: {removed} ===\n")
    run.progress("mlflow versions", f"removed {', '.join(map(str, removed)) or 'none'} (keeping "
                                    f"the newest {keep}) in {time.monotonic() - started:.1f} s")
    return []


def tree_bytes(path: Path | str) -> int:
    """Bytes of the regular files under a folder (links not followed; none there: 0). Here, not
    in dailyrec.core.files: every stage depends on that file, and this is the runner's (and
    bench's)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*")
               if p.is_file() and not p.is_symlink())
