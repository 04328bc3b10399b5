"""train: fit implicit ALS on the clean window and save the model.

    input   data/clean/events.parquet   canonical events of the training window (filter_noise)
            params.yaml                 run.date, train (and mlflow for tracking)
    output  models/                     via stages.artifacts: als.npz, ids.npz, user_items.npz,
                                        meta.json (data hash, params, device; byte-identical for the
                                        same data and params on CPU)
            metrics/train.json          durations, loss, device, counts (what varies between runs)
            metrics/mlflow.json         {"run_id", "experiment", "model_name", "model_version"}

The confidence matrix is built by stages.confidence. `train.device`: `auto` fits on the GPU when
implicit was built with CUDA (`pip install .[gpu]`) and on the CPU otherwise; `gpu` fails with a clear
error when there is no CUDA. BLAS is pinned to one thread during the fit (implicit parallelises
itself; a multi-threaded BLAS underneath only oversubscribes the cores). With an int random_state a
CPU fit is bit-reproducible whatever the thread count.

Every run is one MLflow run (stages.tracking); DAILYREC_MLFLOW=off skips tracking.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from stages import artifacts
from stages import confidence as C
from stages import params as P
from stages.params import file_md5  # noqa: F401  (re-exported: callers use it from here)
from stages import schema as S

CLEAN_FILE = Path("data/clean/events.parquet")
METRICS_FILE = Path("metrics/train.json")
DEVICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class TrainConfig:
    confidence: C.ConfidenceConfig
    factors: int
    regularization: float
    iterations: int
    random_state: int
    device: str
    track_loss: bool

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainConfig":
        return cls.from_section(P.section(params, "train"))

    @classmethod
    def from_section(cls, train: dict[str, Any]) -> "TrainConfig":
        device = train.get("device", "auto")
        if device not in DEVICES:
            raise P.ConfigError(f"params.yaml: train.device must be one of {list(DEVICES)}, "
                                f"got {device!r}")
        track_loss = P.flag(train.get("track_loss", True), "train.track_loss")
        return cls(
            confidence=C.ConfidenceConfig.from_section(train),
            factors=P.positive_int(train.get("factors", 64), "train.factors"),
            regularization=C._number(train.get("regularization", 0.01), "train.regularization",
                                     minimum=0.0),
            iterations=P.positive_int(train.get("iterations", 15), "train.iterations"),
            random_state=P.integer(train.get("random_state", 42), "train.random_state"),
            device=device,
            track_loss=track_loss,
        )

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some settings changed (tune's trials); confidence keys are accepted too."""
        conf = {k: changes.pop(k) for k in list(changes) if k in C.ConfidenceConfig.__annotations__}
        confidence = C.ConfidenceConfig(**{**self.confidence.as_dict(), **conf})
        return TrainConfig(**{**self.__dict__, "confidence": confidence, **changes})

    def as_dict(self) -> dict[str, Any]:
        """Flat and JSON-ready, in the shape of params.yaml's train section."""
        out = {k: v for k, v in self.__dict__.items() if k != "confidence"}
        conf = self.confidence.as_dict()
        conf["confidence"] = conf.pop("transform")
        return {**out, **conf}


def has_cuda() -> bool:
    import implicit.gpu

    return bool(implicit.gpu.HAS_CUDA)


def resolve_device(requested: str) -> str:
    """auto -> gpu when implicit has CUDA, else cpu; gpu without CUDA is an error, not a fallback."""
    if requested == "cpu":
        return "cpu"
    if has_cuda():
        return "gpu"
    if requested == "gpu":
        raise P.ConfigError(
            "train.device is 'gpu' but implicit has no CUDA support here: install the GPU build "
            "with `pip install .[gpu]` (implicit[gpu], CUDA 13 runtime libraries) on a machine with "
            "an NVIDIA GPU, or set train.device to auto or cpu")
    return "cpu"


def model_class(device: str):
    if device == "gpu":
        from implicit.gpu.als import AlternatingLeastSquares
    else:
        from implicit.cpu.als import AlternatingLeastSquares
    return AlternatingLeastSquares


def make_model(config: TrainConfig, device: str):
    extra: dict[str, Any] = {} if device == "gpu" else {"num_threads": 0}
    # alpha=1: the matrix already holds the confidence (stages.confidence explains why).
    return model_class(device)(
        factors=config.factors, regularization=config.regularization, alpha=1.0,
        iterations=config.iterations, calculate_training_loss=config.track_loss,
        random_state=config.random_state, **extra)


@dataclass
class FitResult:
    model: Any  # implicit.cpu.als.AlternatingLeastSquares (a GPU fit is copied to the CPU)
    device: str
    losses: list[float] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0


def fit(matrix: sp.csr_matrix, config: TrainConfig, device: str | None = None,
        on_iteration: Callable[[int, float, float | None], None] | None = None) -> FitResult:
    """Fit ALS on a users x items confidence matrix (float32 CSR)."""
    from threadpoolctl import threadpool_limits

    device = device or resolve_device(config.device)
    result = FitResult(model=None, device=device)

    def record(iteration: int, seconds: float, loss: float | None) -> None:
        result.iteration_seconds.append(float(seconds))
        if loss is not None:
            result.losses.append(float(loss))
        if on_iteration is not None:
            on_iteration(iteration, seconds, loss)

    start = time.perf_counter()
    model_class(device)  # import first: a BLAS library loaded inside the block would escape the limit
    with threadpool_limits(1, "blas"):  # implicit warns and crawls with a threaded BLAS
        model = make_model(config, device)
        model.fit(matrix, show_progress=False, callback=record)
    result.seconds = time.perf_counter() - start
    result.model = model.to_cpu() if device == "gpu" else model
    return result


def read_events(path: Path = CLEAN_FILE, columns: list[str] | None = None) -> pa.Table:
    if not path.exists():
        raise P.ConfigError(f"{path} not found: run filter_noise first")
    columns = columns or C.MATRIX_COLUMNS
    missing = [c for c in columns if c not in pq.read_schema(path).names]
    if missing:
        raise P.ConfigError(f"{path}: not canonical events, missing columns {missing}")
    table = pq.read_table(path, columns=columns)
    try:
        return table.cast(pa.schema([S.EVENT_SCHEMA.field(n) for n in columns]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
        raise P.ConfigError(f"{path}: not canonical events ({err})") from None


def window_end(params: dict[str, Any]) -> dt.datetime:
    """The end of the data window (run.date 00:00 UTC): recency decay is measured from here."""
    return P.day_window(P.run_date(params))[1]


def build_meta(params: dict[str, Any], config: TrainConfig, device: str, events: pa.Table,
               interactions: C.Interactions, data_path: Path) -> dict[str, Any]:
    """What made the model. Deterministic: nothing here depends on time, machine or thread count."""
    import implicit

    ts = events["ts"]
    first = ts.combine_chunks().to_numpy().min() if len(ts) else None
    last = ts.combine_chunks().to_numpy().max() if len(ts) else None
    m = interactions.strength
    return {
        "format": 1,
        "run_date": P.run_date(params).isoformat(),
        "window_end": window_end(params).isoformat(),
        "data": {
            "path": str(data_path),
            "md5": file_md5(data_path),
            "events": interactions.events,
            "events_ignored": interactions.events_ignored,
            "first_event": None if first is None else _iso(first),
            "last_event": None if last is None else _iso(last),
        },
        "matrix": {"users": m.shape[0], "items": m.shape[1], "nonzeros": int(m.nnz)},
        "params": config.as_dict(),
        "device": device,
        "implicit_version": implicit.__version__,
    }


def _iso(value: np.datetime64) -> str:
    return np.datetime_as_string(value.astype("datetime64[us]"), unit="us") + "Z"


def train(params: dict[str, Any], data_path: Path = CLEAN_FILE,
          models_dir: Path = artifacts.MODELS_DIR) -> tuple[dict[str, Any], FitResult, dict]:
    """Read, build, fit, save. Returns (metrics, fit result, meta)."""
    config = TrainConfig.from_params(params)
    device = resolve_device(config.device)  # before the slow part: a gpu request fails at once
    durations: dict[str, float] = {}
    t = time.perf_counter()
    events = read_events(data_path)
    durations["read"] = time.perf_counter() - t
    t = time.perf_counter()
    interactions = C.aggregate(events, config.confidence, window_end(params))
    if interactions.strength.nnz == 0:
        raise P.ConfigError(f"{data_path}: no usable events ({events.num_rows} events, "
                            f"{interactions.events_ignored} of types weighted 0): nothing to train on")
    matrix = C.confidence(interactions, config.confidence)
    durations["build"] = time.perf_counter() - t
    result = fit(matrix, config, device)
    durations["fit"] = result.seconds
    t = time.perf_counter()
    meta = build_meta(params, config, device, events, interactions, data_path)
    artifacts.save(artifacts.ModelBundle(model=result.model, user_ids=interactions.user_ids,
                                         item_ids=interactions.item_ids, user_items=matrix,
                                         meta=meta), models_dir)
    durations["save"] = time.perf_counter() - t
    m = interactions.strength
    metrics = {
        "run_date": meta["run_date"],
        "device": device,
        "events": interactions.events,
        "events_ignored": interactions.events_ignored,
        "users": m.shape[0],
        "items": m.shape[1],
        "nonzeros": int(m.nnz),
        "density": float(m.nnz / max(1, m.shape[0] * m.shape[1])),
        "iterations": config.iterations,
        "final_loss": result.losses[-1] if result.losses else None,
        "durations_s": {k: round(v, 4) for k, v in durations.items()},
        "fit_s_per_iteration": round(result.seconds / config.iterations, 4),
        "implicit_version": meta["implicit_version"],
    }
    return metrics, result, meta


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description="Fit implicit ALS on data/clean into models/.")
    ap.add_argument("--params", default=str(P.PARAMS_FILE))
    args = ap.parse_args(argv)
    params = P.load(args.params)
    from stages import tracking

    settings = tracking.Settings.from_params(params)  # check the mlflow section before fitting
    start = time.perf_counter()
    metrics, result, meta = train(params)
    t = time.perf_counter()
    run = tracking.log_training(settings, params, metrics, result, meta) if tracking.enabled() \
        else tracking.disabled_record(settings)
    metrics["durations_s"]["mlflow"] = round(time.perf_counter() - t, 4)
    metrics["durations_s"]["total"] = round(time.perf_counter() - start, 4)
    metrics["mlflow_run_id"] = run["run_id"]
    P.write_json(METRICS_FILE, metrics)
    P.write_json(tracking.RECORD_FILE, run)
    print(f"train {metrics['run_date']}: {metrics['users']} users x {metrics['items']} items, "
          f"{metrics['nonzeros']} nonzeros from {metrics['events']} events; fit on "
          f"{metrics['device']} in {metrics['durations_s']['fit']:.2f}s"
          + (f", final loss {metrics['final_loss']:.5f}" if metrics["final_loss"] is not None else "")
          + (f"; MLflow run {run['run_id']}, {run['model_name']} v{run['model_version']}"
             if run["run_id"] else "; MLflow off"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return P.run_stage("train", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
