"""Training: clean events -> the confidence matrix -> ALS -> the saved model bundle.

ALS is implicit's (train.engine local, on train.device) or Spark MLlib's (train.engine spark,
dailyrec.model.spark_als: the same confidence matrix, the factors saved as implicit's model).

    train(config, run_date, window_end, data_path, models_dir) -> (metrics, fit result, meta)

models/ (dailyrec.model.artifacts) is byte-identical for the same data and settings on CPU: nothing
time- or machine-dependent goes into it; durations go to the returned metrics.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dailyrec.quality.filtering import clean
from dailyrec.core import schema as S
from dailyrec.core.errors import ConfigError, DataError
from dailyrec.core.files import dvc_md5
from dailyrec.model import als, artifacts
from dailyrec.model import confidence as C
from dailyrec.model.settings import TrainConfig


# The text columns read_events(dictionary=True) keeps as Parquet wrote them: codes and the values,
# not a string per row (data/clean's are dictionary pages: half the read, and ids not hashed again)
DICTIONARY_COLUMNS = ("user_id", "item_id", "event_type")


def read_events(path: Path, columns: list[str] | None = None, dictionary: bool = False
                ) -> pa.Table:
    """Canonical events (the key columns by default) from data/clean's day files (or one Parquet
    file); with dictionary, the DICTIONARY_COLUMNS dictionary-encoded (what confidence.aggregate
    and make_split take)."""
    if not Path(path).exists():
        raise ConfigError(f"{path} not found: run filter_noise first")
    try:
        names = clean.columns_of(path)
        columns = columns or C.MATRIX_COLUMNS + (["quantity"] if "quantity" in names else [])
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path}: not canonical events, missing columns {missing}")
        coded = [c for c in DICTIONARY_COLUMNS if c in columns] if dictionary else []
        table = clean.read(path, columns, read_dictionary=coded)
        fields = [S.EVENT_SCHEMA.field(n) for n in columns]
        return table.cast(pa.schema([f.with_type(pa.dictionary(pa.int32(), f.type))
                                     if f.name in coded else f for f in fields]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
        raise DataError(f"{path}: not canonical events ({err})") from None


def build_meta(run_date: dt.date, window_end: dt.datetime, config: TrainConfig, device: str,
               events: pa.Table, interactions: C.Interactions, data_path: Path) -> dict[str, Any]:
    """What made the model. Deterministic: nothing here depends on time, machine or thread count."""
    import implicit

    ts = events["ts"]
    first = ts.combine_chunks().to_numpy().min() if len(ts) else None
    last = ts.combine_chunks().to_numpy().max() if len(ts) else None
    m = interactions.strength
    return {
        "format": 1,
        "run_date": run_date.isoformat(),
        "window_end": window_end.isoformat(),
        "data": {
            "path": str(data_path),
            "md5": dvc_md5(data_path),
            "events": interactions.events,
            "events_ignored": interactions.events_ignored,
            "first_event": None if first is None else _iso(first),
            "last_event": None if last is None else _iso(last),
        },
        "matrix": {"users": m.shape[0], "items": m.shape[1], "nonzeros": int(m.nnz)},
        "params": config.as_dict(),
        "engine": config.engine,
        "device": device,
        "implicit_version": implicit.__version__,
        **({"pyspark_version": _pyspark_version()} if config.engine == "spark" else {}),
    }


def _pyspark_version() -> str:
    import pyspark

    return pyspark.__version__


def _iso(value: np.datetime64) -> str:
    return np.datetime_as_string(value.astype("datetime64[us]"), unit="us") + "Z"


def train(config: TrainConfig, run_date: dt.date, window_end: dt.datetime, data_path: Path,
          models_dir: Path) -> tuple[dict[str, Any], als.FitResult, dict]:
    """Read, build, fit, save. Returns (metrics, fit result, meta)."""
    device = als.resolve(config)  # before the slow part: a gpu request (or no PySpark) fails at once
    durations: dict[str, float] = {}
    t = time.perf_counter()
    events = read_events(data_path, dictionary=True)
    durations["read"] = time.perf_counter() - t
    t = time.perf_counter()
    interactions = C.aggregate(events, config.confidence, window_end)
    if interactions.strength.nnz == 0:
        raise DataError(f"{data_path}: no usable events ({events.num_rows} events, "
                        f"{interactions.events_ignored} of types weighted 0): nothing to train on")
    matrix = C.confidence(interactions, config.confidence)
    durations["build"] = time.perf_counter() - t
    result = als.fit(matrix, config, device)
    durations["fit"] = result.seconds
    t = time.perf_counter()
    meta = build_meta(run_date, window_end, config, device, events, interactions, data_path)
    artifacts.save(artifacts.ModelBundle(model=result.model, user_ids=interactions.user_ids,
                                         item_ids=interactions.item_ids, user_items=matrix,
                                         meta=meta), models_dir)
    durations["save"] = time.perf_counter() - t
    m = interactions.strength
    metrics = {
        "run_date": meta["run_date"],
        "device": device,  # "spark" with train.engine spark
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
