"""train: fit ALS on the clean window and save the model.

    python -m stages.train [--params params.yaml]

Inputs   data/clean/ (filter_noise: a file per day); params.yaml run.date, train, mlflow
Outputs  models/              als.npz, ids.npz, user_items.npz, meta.json (dailyrec.model.artifacts;
                              byte-identical for the same data and params on CPU)
         metrics/train.json   durations, loss, device, counts (what varies between runs)
         metrics/mlflow.json  the MLflow run and registered model version of models/

The confidence matrix: dailyrec.model.confidence; the fit and train.device: dailyrec.model.als.
train.engine: spark fits Spark MLlib's implicit ALS instead (dailyrec.model.spark_als; PySpark is
imported only then), on the Spark that spark-submit, PYSPARK_SUBMIT_ARGS or SPARK_REMOTE names, and
saves the same models/ (docs/scaling.md).
Every run is one MLflow run (dailyrec.ops.tracking); DAILYREC_MLFLOW=off skips tracking.
"""

from __future__ import annotations

import argparse
import sys
import time

from dailyrec.core import cli, env, metrics, paths, settings
from dailyrec.ops import tracking
from dailyrec.model import training
from dailyrec.model import settings as model
from dailyrec.ops import settings as ops


def main_body(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description="Fit ALS on data/clean into models/.")
    ap.add_argument("--params", default=None, help="params file (default params.yaml)")
    args = ap.parse_args(argv)
    params = settings.load(args.params)
    config = model.train(params)
    mlflow_settings = ops.mlflow(params)  # checked before the fit, not after it
    day = settings.run_date(params)
    start = time.perf_counter()
    with tracking.ahead():  # MLflow's imports on a thread meanwhile: logging starts at once
        counts, result, meta = training.train(config, day, settings.window_end(params),
                                              paths.CLEAN_DIR, paths.MODELS_DIR)
    t = time.perf_counter()
    run = tracking.log_training(mlflow_settings, counts, result, meta) if env.mlflow_enabled() \
        else tracking.disabled_record(mlflow_settings)
    counts["durations_s"]["mlflow"] = round(time.perf_counter() - t, 4)
    counts["durations_s"]["total"] = round(time.perf_counter() - start, 4)
    counts["mlflow_run_id"] = run["run_id"]
    metrics.TRAIN.write(counts)
    metrics.MLFLOW.write(run)
    print(f"train {day}: {counts['users']} users x {counts['items']} items, {counts['nonzeros']} "
          f"nonzeros from {counts['events']} events; fit on {counts['device']} in "
          f"{counts['durations_s']['fit']:.2f}s"
          + (f", final loss {counts['final_loss']:.5f}" if counts["final_loss"] is not None else "")
          + (f"; MLflow run {run['run_id']}, {run['model_name']} v{run['model_version']}"
             if run["run_id"] else "; MLflow off"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_stage("train", main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
