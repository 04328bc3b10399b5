"""train.engine: spark: Spark MLlib's implicit ALS on the confidence matrix, returned as implicit's
CPU model, so models/ has one format whoever fitted it (pip install '.[spark]').

    fit(matrix, config) -> fitting.FitResult    matrix: the users x items confidence matrix
                                                (float32 CSR) that implicit would be given

The same objective as implicit's, up to the regularisation (docs/scaling.md):

- Confidence. implicit (given alpha=1, as dailyrec.model.fitting always does) takes the matrix values
  as the confidences c_ui (p_ui = 1 where a value is stored, c = 1 elsewhere). MLlib builds
  c_ui = 1 + alpha * |r_ui| from a rating r_ui, with p_ui = 1 when r_ui > 0. So MLlib is given
  r_ui = c_ui - 1 and alpha = 1: exactly our confidences (c - 1 of a float32 c >= 1 is exact in
  float32, and MLlib widens it to double). A c of exactly 1 (a strength so small that
  1 + alpha * log1p(r) rounds to 1 in float32) would become r = 0, which MLlib reads as p = 0
  ("not liked"); it is sent as the smallest positive float instead: p = 1, c = 1, as implicit has it.
- Regularisation. implicit adds `regularization` * I to every user's and item's normal equations;
  MLlib (ALS-WR, Zhou et al. 2008) adds regParam * n * I, n the row's number of positive ratings.
  regParam = train.regularization: the two agree only for a row with one nonzero; MLlib
  regularises heavy users and popular items more. No single regParam maps one onto the other
  (n differs per row), so the setting keeps its value and the model differs.
- The solver: MLlib solves each row's equations exactly (Cholesky); implicit's CPU fit takes 3
  conjugate-gradient steps per row per iteration from the previous value. And a different random
  start: the same seed gives a different model.

rank = factors, maxIter = iterations, seed = random_state, numUserBlocks = numItemBlocks =
spark_blocks. MLlib draws its random start per block, so the block count is a result setting.

Determinism: the same matrix and settings give the same factors bit for bit in local[2] (tested
with 2 blocks; 10 blocks gave identical factors in three fits too). Not promised on a cluster: MLlib
sums Y^T Y over the blocks in the order their tasks end (RDD.aggregate), so with more than 2 blocks
the last bits, and models/'s bytes, can differ between runs.

A user whose row is empty (every event decayed to 0) has no rating, so MLlib gives it no factors;
it gets zeros: the exact solution of its equations (b = 0), which implicit approaches.
The training loss, when train.track_loss is on, is implicit's own loss function on the final
factors (one value: MLlib reports none per iteration), so the engines' losses compare.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from dailyrec.core.errors import ConfigError
from dailyrec.model import fitting
from dailyrec.model.settings import TrainConfig

PYSPARK_MISSING = ("train.engine is 'spark' but PySpark is not installed: pip install '.[spark]' "
                   "(and Java 17), or set train.engine to local")


def require_pyspark() -> None:
    """ConfigError naming the extra when PySpark is missing."""
    try:
        import pyspark.ml.recommendation  # noqa: F401
    except ImportError:
        raise ConfigError(PYSPARK_MISSING) from None


def ratings(matrix: sp.csr_matrix) -> pa.Table:
    """The matrix as MLlib's ratings: user (row), item (column), rating = c - 1 (float32), row-major
    order."""
    coo = matrix.tocoo()
    c = np.asarray(coo.data, dtype=np.float32)
    r = np.maximum(c - np.float32(1.0), np.finfo(np.float32).tiny)  # c - 1 is exact for c >= 1
    if np.any(c < 1):
        raise ConfigError("train.engine spark: a confidence below 1 (MLlib's c = 1 + alpha * r "
                          "cannot express it)")
    return pa.table({"user": pa.array(coo.row.astype(np.int32)),
                     "item": pa.array(coo.col.astype(np.int32)),
                     "rating": pa.array(r)})


def estimator(config: TrainConfig):
    from pyspark.ml.recommendation import ALS

    return ALS(rank=config.factors, maxIter=config.iterations, regParam=config.regularization,
               implicitPrefs=True, alpha=1.0, nonnegative=False, seed=config.random_state,
               numUserBlocks=config.spark_blocks, numItemBlocks=config.spark_blocks,
               userCol="user", itemCol="item", ratingCol="rating")


def factors_of(frame, rows: int, rank: int) -> np.ndarray:
    """MLlib's factors DataFrame (id, features) as a rows x rank float32 array in id order; rows
    without factors are 0."""
    table = frame.toArrow()
    ids = table.column("id").to_numpy()
    features = table.column("features").combine_chunks()
    values = features.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    out = np.zeros((rows, rank), dtype=np.float32)
    out[ids] = values.reshape(len(ids), rank)
    return out


def fit(matrix: sp.csr_matrix, config: TrainConfig, spark=None) -> fitting.FitResult:
    """Fit MLlib ALS (implicitPrefs) on the confidence matrix; an implicit CPU model back."""
    require_pyspark()
    from dailyrec.core import spark as SP

    spark = spark or SP.session()
    start = time.perf_counter()
    users, items = matrix.shape
    with SP.arrow_only():
        frame = spark.createDataFrame(ratings(matrix))
    fitted = estimator(config).fit(frame)
    user_factors = factors_of(fitted.userFactors, users, config.factors)
    item_factors = factors_of(fitted.itemFactors, items, config.factors)
    seconds = time.perf_counter() - start
    model = fitting.make_model(config, "cpu")
    model.user_factors, model.item_factors = user_factors, item_factors
    result = fitting.FitResult(model=model, device="spark", seconds=seconds)
    if config.track_loss:
        result.losses.append(loss(matrix, model, config.regularization))
    return result


def loss(matrix: sp.csr_matrix, model, regularization: float) -> float:
    """implicit's training loss of these factors on the confidence matrix."""
    from implicit.cpu import _als
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        return float(_als.calculate_loss(matrix.astype(np.float32), model.user_factors,
                                         model.item_factors, regularization, num_threads=0))
