"""MLflow: one run per daily train + evaluate, and the model registry.

    tracking URI   env MLFLOW_TRACKING_URI, default sqlite:///mlflow.db (artifacts under ./mlruns)
    switch off     env DAILYREC_MLFLOW=off (metrics/mlflow.json is then written with nulls)
    params.yaml    mlflow.experiment, mlflow.model_name, mlflow.alias

train opens the run: every train.* param and run.date, the loss per iteration as the stepped metric
`train_loss`, durations and counts, the device; tags with the git commit (and whether the tree was
dirty) and the DVC md5 of each of the stage's inputs (as DVC computes them, so they can be matched
with dvc.lock); the model bundle registered as a new version of mlflow.model_name, a pyfunc that
returns top-N for user ids (dailyrec.model.pyfunc). It writes metrics/mlflow.json:
{"run_id", "experiment", "model_name", "model_version", "alias"}. evaluate adds its metrics and the gate
verdict to the same run, so one run holds a day's model and how good it was (the session
protocol's metrics prefixed session_<model>_, e.g. session_fold_in_ndcg_at_20). publish moves
mlflow.alias to the version it serves; evaluate reads that version as the "published" baseline.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

from dailyrec.core import env, paths
from dailyrec.ops import pipeline
from dailyrec.core.errors import ServiceUnavailable
from dailyrec.core.files import dvc_md5
from dailyrec.ops.settings import MlflowSettings

BUNDLE_ARTIFACT = "bundle"
LIBRARY_DIR = Path(__file__).parent  # logged with the model: the pyfunc imports dailyrec


def disabled_record(settings: MlflowSettings) -> dict[str, Any]:
    """metrics/mlflow.json when tracking is off."""
    return {"run_id": None, "experiment": settings.experiment, "model_name": settings.model_name,
            "model_version": None, "alias": settings.alias}


def unavailable(func):
    """MLflow that cannot be reached (a tracking server down, a database locked) is
    ServiceUnavailable: worth retrying, not a bug."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            return func(*args, **kwargs)
        except OSError as err:
            raise ServiceUnavailable(f"MLflow at {env.mlflow_uri()}: {err}") from err
        except MlflowException as err:
            text = str(err)
            if "API request" in text or "database is locked" in text or "connect" in text.lower():
                raise ServiceUnavailable(f"MLflow at {env.mlflow_uri()}: {text[:500]}") from err
            raise
    return wrapper


# --- lineage: git commit and DVC hashes -------------------------------------------------------

def git_info(cwd: Path | str = ".") -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git.commit": "unknown"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "mlflow.source.git.commit": commit,
            "git.dirty": "unknown" if dirty is None else str(bool(dirty)).lower()}


def stage_deps(stage: str) -> list[str]:
    """The deps dvc.yaml lists for a stage (empty when there is no dvc.yaml or no such stage)."""
    found = pipeline.load_or_none()
    return list(found.stages[stage].deps) if found and stage in found.stages else []


def lineage_tags(stage: str, extra_paths: list[str] = (), git: bool = True) -> dict[str, str]:
    tags = git_info() if git else {}
    for dep in dict.fromkeys([*stage_deps(stage), *extra_paths]):
        if dep == str(paths.MLFLOW_RECORD):
            continue  # the run's own record, not an input
        digest = dvc_md5(dep)
        if digest:
            tags[f"dvc.dep.{dep}"] = digest
    return tags


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


# --- runs ---------------------------------------------------------------------------------------

def preload() -> None:
    """Import MLflow, and its SQL stores for a database URI: about 2.5 s of one core's Python
    here, with no connection made and nothing written."""
    import mlflow  # noqa: F401

    if env.mlflow_uri().split(":", 1)[0] not in ("http", "https", "databricks", "file"):
        from mlflow.store.model_registry import sqlalchemy_store  # noqa: F401
        from mlflow.store.tracking import sqlalchemy_store as _  # noqa: F401


@contextlib.contextmanager
def ahead(call: Callable[[], Any] = preload) -> Iterator[Future | None]:
    """Run call() on a thread while the block runs (a stage's own work, mostly NumPy that leaves
    a core or the GIL free) and yield its Future; None, and no thread, when MLflow is off. An
    error stays in the Future for whoever asks for the result (preload's is raised again by the
    logging that follows)."""
    if not env.mlflow_enabled():
        yield None
        return
    with ThreadPoolExecutor(1, thread_name_prefix="mlflow") as pool:
        yield pool.submit(call)


def _connect(settings: MlflowSettings):
    import logging
    import warnings

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # predict takes a DataFrame or a list: MLflow's type-hint validation does not apply.
    warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method")
    warnings.filterwarnings("ignore", message=r".*An input example was not provided")
    mlflow.set_tracking_uri(env.mlflow_uri())
    experiment = mlflow.set_experiment(settings.experiment)
    return mlflow, experiment


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "user_id")]),
        outputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "rank"),
                        ColSpec("string", "item_id"), ColSpec("float", "score"),
                        ColSpec("string", "source")]),
        params=ParamSchema([ParamSpec("n", "long", 20)]))


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in
            ("implicit", "numpy", "scipy", "pandas", "pyarrow", "mlflow")]


@unavailable
def log_training(settings: MlflowSettings, metrics: dict[str, Any], result, meta: dict[str, Any],
                 models_dir: Path = paths.MODELS_DIR,
                 data_path: Path = paths.CLEAN_DIR) -> dict[str, Any]:
    """One MLflow run for a train: params, stepped loss, metrics, lineage tags, registered model."""
    mlflow, experiment = _connect(settings)
    from mlflow.entities import Metric

    from dailyrec.model import pyfunc  # logged as code: the file itself, no pickle

    run_date = meta["run_date"]
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name=f"train {run_date}") as run:
        run_id = run.info.run_id
        mlflow.log_params({**flatten("train", meta["params"]), "run.date": run_date})
        tags = {**lineage_tags("train", [str(data_path.parent)]),
                "dailyrec.stage": "train", "dailyrec.run_date": run_date,
                "device": result.device, "dvc.models.md5": dvc_md5(models_dir) or "",
                "data.md5": meta["data"]["md5"]}
        mlflow.set_tags(tags)
        from dailyrec.ops import datasets  # imports mlflow.data

        data = meta["data"]
        mlflow.log_input(datasets.training_window(
            str(data_path), data["md5"], pipeline.default_remote(), rows=data["events"],
            first_event=data["first_event"], last_event=data["last_event"],
            users=meta["matrix"]["users"], items=meta["matrix"]["items"],
            nonzeros=meta["matrix"]["nonzeros"]), context="training")
        now_ms = int(time.time() * 1000)
        stepped = [Metric("train_loss", loss, now_ms, step) for step, loss in
                   enumerate(result.losses)]
        stepped += [Metric("train_iteration_s", s, now_ms, step) for step, s in
                    enumerate(result.iteration_seconds)]
        for start in range(0, len(stepped), 900):  # log_batch takes at most 1000 metrics
            client.log_batch(run_id, metrics=stepped[start:start + 900])
        flat = flatten("", {k: v for k, v in metrics.items() if k != "run_date"})
        mlflow.log_metrics({k.replace("durations_s.", "duration_s_"): v
                            for k, v in _numeric(flat).items()})
        info = mlflow.pyfunc.log_model(
            name="model", python_model=pyfunc.__file__,
            artifacts={BUNDLE_ARTIFACT: str(models_dir)}, code_paths=[str(LIBRARY_DIR)],
            registered_model_name=settings.model_name, pip_requirements=_requirements(),
            signature=_signature())
        version = int(info.registered_model_version)
        client.set_model_version_tag(settings.model_name, str(version), "run_date", run_date)
        client.set_model_version_tag(settings.model_name, str(version), "device", result.device)
        client.set_model_version_tag(settings.model_name, str(version), "git.commit",
                                     tags["git.commit"])
    return {"run_id": run_id, "experiment": experiment.name, "model_name": settings.model_name,
            "model_version": version, "alias": settings.alias}


@unavailable
def log_evaluation(settings: MlflowSettings, eval_settings: dict[str, Any], report: dict[str, Any],
                   gate: dict[str, Any], curves: dict[str, list[float]], fit_losses: list[float],
                   record: dict[str, Any] | None, holdout: dict[str, Any] | None = None) -> str:
    """Add the evaluation to the train run of metrics/mlflow.json (or a run of its own when there
    is none, or when that run already holds different eval.* params: MLflow params are immutable).

    holdout: {"path", "md5", "window_end"} of the events evaluated on, logged as the run's
    dataset input with context `eval` (its bounds and counts from the report).
    """
    mlflow, _ = _connect(settings)
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    eval_params = {**flatten("eval", eval_settings), "run.date": report["run_date"]}
    eval_params = {k: str(v) for k, v in eval_params.items()}
    run_id = (record or {}).get("run_id")
    if run_id:
        try:
            existing = client.get_run(run_id).data.params
        except MlflowException:
            run_id = None
        else:
            if any(k in existing and existing[k] != v for k, v in eval_params.items()):
                run_id = None
    run_kwargs = {"run_id": run_id} if run_id else {"run_name": f"evaluate {report['run_date']}"}
    with mlflow.start_run(**run_kwargs) as run:
        mlflow.log_params({k: v for k, v in eval_params.items()
                           if k not in client.get_run(run.info.run_id).data.params})
        metrics = {k: v for k, v in report.items() if not isinstance(v, dict)}
        for name, block in (report.get("baselines") or {}).items():
            if isinstance(block, dict):
                metrics.update({f"{name}_{k}": v for k, v in block.items()})
        sessions = report.get("sessions")
        if isinstance(sessions, dict):  # the session protocol: session_fold_in_ndcg_at_20, ...
            for name, block in (sessions.get("models") or {}).items():
                if isinstance(block, dict):
                    metrics.update({f"session_{name}_{k}": v for k, v in block.items()})
            metrics["session_cases"] = (sessions.get("counts") or {}).get("cases")
            metrics["session_lift_over_most_popular"] = sessions.get("lift_over_most_popular")
        metrics["gate_passed"] = 1.0 if gate["passed"] else 0.0
        for key in ("lift", "drop"):
            if isinstance(gate.get(key), (int, float)):
                metrics[f"gate_{key}"] = gate[key]
        mlflow.log_metrics(_numeric(metrics))
        if holdout is not None and report.get("holdout_start"):
            from dailyrec.ops import datasets  # imports mlflow.data

            mlflow.log_input(datasets.holdout(
                holdout["path"], holdout["md5"], pipeline.default_remote(),
                report["holdout_start"], holdout["window_end"], report.get("counts") or {}),
                context="eval")
        now_ms = int(time.time() * 1000)
        stepped = [Metric(f"{name}_at_k", v, now_ms, k) for name, values in curves.items()
                   for k, v in enumerate(values, start=1)]
        stepped += [Metric("eval_fit_loss", v, now_ms, i) for i, v in enumerate(fit_losses)]
        for start in range(0, len(stepped), 900):
            client.log_batch(run.info.run_id, metrics=stepped[start:start + 900])
        # In train's run, git tags stay train's: they are what rebuilds the model.
        tags = {**lineage_tags("evaluate", git=run_id is None),
                "gate.passed": str(gate["passed"]).lower(),
                "gate.reason": gate["reason"][:4000],
                "gate.protocol": str(gate.get("protocol"))}
        published = (report.get("baselines") or {}).get("published")
        if isinstance(published, dict):
            tags["published.version"] = str(published.get("model_version"))
            tags["published.mode"] = str(published.get("mode"))
        if run_id is None and record and record.get("run_id"):
            tags["dailyrec.train_run_id"] = record["run_id"]
        mlflow.set_tags(tags)
        version = (record or {}).get("model_version")
        if version and record.get("model_name") == settings.model_name:
            try:
                client.set_model_version_tag(settings.model_name, str(version), "gate",
                                             "passed" if gate["passed"] else "failed")
            except MlflowException:
                pass  # the version was deleted from the registry: the run still has the verdict
        return run.info.run_id


@unavailable
def published_version(settings: MlflowSettings) -> Any | None:
    """The registry's model version carrying mlflow.alias, or None when nothing is published."""
    mlflow, _ = _connect(settings)
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(settings.model_name,
                                                                settings.alias)
    except MlflowException as err:
        if getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE",
                                              "NOT_FOUND"):
            return None
        raise


@unavailable
def prune_versions(settings: MlflowSettings, keep: int) -> list[int]:
    """Remove from the registry every version of mlflow.model_name but the newest `keep` and
    those an alias points at, deleting their logged models' files: a day's model bundle (models/
    and the library) is nearly all of what the MLflow store grows by. Their runs stay, with
    params, metrics, tags and lineage, so the UI still compares every day, and `make reproduce`
    rebuilds any of them from git and the DVC remote. The versions removed, oldest first.

    Files first, the registry entry last: a run stopped half-way leaves the version listed, and
    the next run finishes it."""
    if keep <= 0 or env.mlflow_store_missing():
        return []
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = MlflowClient(tracking_uri=env.mlflow_uri())  # no experiment made: nothing is logged
    try:
        aliased = {int(v) for v in client.get_registered_model(settings.model_name)
                   .aliases.values()}
    except MlflowException as err:
        if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{settings.model_name}'", page_token=token)
        versions += list(page)
        token = page.token
        if not token:
            break
    oldest_first = sorted(versions, key=lambda v: int(v.version))
    stale = [v for v in oldest_first[:-keep] if int(v.version) not in aliased]
    for version in stale:
        # MLflow 3 registers a logged model by its URI, models:/m-<id>
        model_id = version.model_id or (version.source.removeprefix("models:/")
                                        if version.source.startswith("models:/m-") else None)
        try:
            logged = client.get_logged_model(model_id) if model_id else None
        except MlflowException as err:
            if getattr(err, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            logged = None  # deleted by an earlier run that stopped before the registry entry
        if logged is not None:
            get_artifact_repository(logged.artifact_location).delete_artifacts()
            client.delete_logged_model(logged.model_id)
        client.delete_model_version(settings.model_name, version.version)
    return [int(v.version) for v in stale]


def bundle_path(model_dir: Path) -> str:
    """Where the logged model keeps the models/ bundle, as its MLmodel file records it."""
    import yaml

    spec = yaml.safe_load((model_dir / "MLmodel").read_text())
    return spec["flavors"]["python_function"]["artifacts"][BUNDLE_ARTIFACT]["path"]


@unavailable
def fetch_published(settings: MlflowSettings) -> tuple[Path, dict] | None:
    """The published model's bundle folder, downloaded from the registry, with {"model_version",
    "run_id"}; None when nothing is published. It sets nothing process-wide, so it may run on a
    thread (tracking.ahead) while the caller computes."""
    version = published_version(settings)
    if version is None:
        return None
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(
        f"models:/{settings.model_name}/{version.version}"))
    return local / bundle_path(local), {"model_version": int(version.version),
                                        "run_id": version.run_id}


def open_published(found: tuple[Path, dict] | None):
    """fetch_published's answer as (ModelBundle, info), or None. On the caller's own thread: the
    BLAS limit below is the whole process's while it lasts, and a fit running beside it would
    find it lifted when it ends."""
    if found is None:
        return None
    from dailyrec.model import artifacts

    path, info = found
    import implicit.cpu.als  # noqa: F401  loaded first: a BLAS loaded inside the limit escapes it
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit warns about a threaded BLAS when loading
        return artifacts.load(path), info


def move_alias(settings: MlflowSettings, model_version, throttle_minutes: float) -> dict:
    """Point the registered model's alias at model_version. Never fails the caller: Redis already
    serves the version, so a registry that cannot be reached is said loudly and alerted."""
    result = {"model_name": settings.model_name, "alias": settings.alias,
              "model_version": str(model_version)}
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=env.mlflow_uri()).set_registered_model_alias(
            settings.model_name, settings.alias, str(model_version))
    except Exception as err:  # noqa: BLE001 - reported, alerted, and the publish stands
        import sys

        from dailyrec.ops import notify

        result["error"] = f"{type(err).__name__}: {err}"
        print(f"publish: WARNING: MLflow alias {settings.model_name}@{settings.alias} not moved to "
              f"version {model_version}: {result['error']}", file=sys.stderr, flush=True)
        notify.alert(f"publish: MLflow alias {settings.model_name}@{settings.alias} not moved",
                     error=err, context=result, throttle_minutes=throttle_minutes)
    return result
