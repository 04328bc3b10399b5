"""Fitting ALS where this process runs (implicit, on the GPU or the CPU), and what every engine's
fit gives back: the result (FitResult) and the implicit CPU model it holds (make_model). Both
engines import this module (dailyrec.model.spark_als builds its model with make_model); the choice
between them is dailyrec.model.als, on top, which neither imports.

`train.device`: `auto` fits on the GPU when implicit was built with CUDA (`pip install .[gpu]`) and
on the CPU otherwise; `gpu` fails with a clear error when there is no CUDA. BLAS is pinned to one
thread during the fit (implicit parallelises itself; a multi-threaded BLAS underneath only
oversubscribes the cores). With an int random_state a CPU fit is bit-reproducible whatever the
thread count. implicit is always given alpha=1: the matrix already holds the confidence
(dailyrec.model.confidence explains why).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import scipy.sparse as sp

from dailyrec.core.errors import ConfigError
from dailyrec.model.settings import TrainConfig


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
        raise ConfigError(
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
    from threadpoolctl import threadpool_limits

    extra: dict[str, Any] = {} if device == "gpu" else {"num_threads": 0}
    # alpha=1: the matrix already holds the confidence (dailyrec.model.confidence explains why).
    with threadpool_limits(1, "blas"):  # implicit checks the BLAS threads when it is created
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


def fit_local(matrix: sp.csr_matrix, config: TrainConfig, device: str | None = None,
              on_iteration: Callable[[int, float, float | None], None] | None = None
              ) -> FitResult:
    """Fit implicit's ALS on a users x items confidence matrix (float32 CSR) in this process."""
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
