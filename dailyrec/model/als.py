"""ALS, whichever engine fits it: the factory on top of the two (as implicit's own
`AlternatingLeastSquares` picks its GPU or CPU class). Neither engine imports it.

`train.engine`: `local` fits with implicit in this process (dailyrec.model.fitting, on
`train.device`); `spark` with Spark MLlib's implicit ALS (dailyrec.model.spark_als, imported only
then), whose factors come back as the same implicit CPU model: train, evaluate's refits and tune
all fit through `fit` here, so each uses the engine configured, and models/ has one format.
"""

from __future__ import annotations

from typing import Callable

import scipy.sparse as sp

from dailyrec.model.fitting import FitResult, fit_local, has_cuda, resolve_device
from dailyrec.model.settings import TrainConfig

__all__ = ["FitResult", "fit", "has_cuda", "resolve", "resolve_device"]


def resolve(config: TrainConfig) -> str:
    """Where the fit runs: "spark" for train.engine spark (PySpark checked, not started), else
    the device (fitting.resolve_device)."""
    if config.engine == "spark":
        from dailyrec.model import spark_als

        spark_als.require_pyspark()
        return "spark"
    return resolve_device(config.device)


def fit(matrix: sp.csr_matrix, config: TrainConfig, device: str | None = None,
        on_iteration: Callable[[int, float, float | None], None] | None = None) -> FitResult:
    """Fit ALS on a users x items confidence matrix (float32 CSR), with the engine configured
    (`device` is implicit's; the spark engine fits where Spark runs and reports device "spark")."""
    if config.engine == "spark":
        from dailyrec.model import spark_als

        return spark_als.fit(matrix, config)
    return fit_local(matrix, config, device, on_iteration)
