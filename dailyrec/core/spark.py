"""What both Spark jobs share: the session, the history window as a DataFrame in history order,
and groups of keys that the local engine's own code runs on (pip install '.[spark]').

    session() -> SparkSession                   the active one, or one from spark-submit's settings
    read_events(spark, files) -> DataFrame      canonical events of history files, each with its
                                                place in history order (file_index, row_index)
    by_group(df, key, fn, schema, spark)        fn(Arrow table of one group of keys, in history
                                                order) on every group: a key's events are all in
                                                one group

History order is the local engine's: the files in the order history.select_window lists them, rows
in file order, stably sorted by ts (dailyrec.quality.filtering.rules.window_of). A group sorted by
(ts, file_index, row_index) is therefore exactly the window's order restricted to its keys.

Where Spark runs (local[N], YARN on Dataproc, Databricks) comes from spark-submit,
PYSPARK_SUBMIT_ARGS, spark-defaults.conf or SPARK_REMOTE (Spark Connect), never from here: those
settings do not change a result (docs/scaling.md).
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from functools import reduce
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from dailyrec.core import schema as S
from dailyrec.core.errors import ConfigError, DataError

ORDER = ["file_index", "row_index"]  # with ts: the history order


def session(conf: dict[str, str] | None = None):
    """The active SparkSession, or a new one from spark-submit's settings and `conf` (tests and
    benchmarks: master, partitions, memory), configured."""
    # The Python workers must be this interpreter (with dailyrec and its pins) unless the cluster
    # names its own (spark.pyspark.python / PYSPARK_PYTHON).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError("the spark engine needs PySpark: pip install '.[spark]'") from None

    builder = SparkSession.builder.appName("dailyrec").config("spark.ui.showConsoleProgress",
                                                               "false")
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    with arrow_only():
        return configured(builder.getOrCreate())


def configured(spark):
    """The settings the results depend on: timestamps are UTC instants on both sides of Arrow,
    and Parquet written by Spark stores them as such (not as legacy INT96)."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    return spark


def location(history: Path | str):
    """The history: a local folder, or a URL (gs://..., abfss://..., file://...) that
    history.select_window lists through fsspec (universal_pathlib) and Spark reads with the
    cluster's own connector."""
    if "://" not in str(history):
        return Path(history)
    from upath import UPath

    return UPath(str(history))


def spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def read_events(spark, files: list[Path | str]):
    """The files' canonical events, with file_index (position in `files`) and row_index (row in
    its file). Footers are checked here, as the local engine checks them: a file that is not
    canonical events is a DataError, not a Spark job failure later on."""
    from pyspark.sql import functions as F

    for path in files:
        try:
            names = set(pq.read_schema(_local(path)).names) if _local(path) else None
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{path}: not canonical events ({err})") from None
        missing = [c for c in S.REQUIRED if names is not None and c not in names]
        if missing:
            raise DataError(f"{path}: not canonical events (missing columns {missing})")
    if not files:
        return spark.createDataFrame([], spark_schema(S.EVENT_SCHEMA)).select(
            "*", F.lit(0).alias("file_index"), F.lit(0).cast("long").alias("row_index"))
    schema = spark_schema(S.EVENT_SCHEMA)  # a nullable column a file lacks reads as NULL
    # One read per file: its index is then a literal, whatever path form the filesystem reports.
    frames = [spark.read.schema(schema).parquet(_absolute(path)).select(
        *S.COLUMNS, F.lit(k).alias("file_index"), F.col("_metadata.row_index").alias("row_index"))
        for k, path in enumerate(files)]
    return reduce(lambda a, b: a.unionByName(b), frames)


def _absolute(path: Path | str) -> str:
    """A URL as it is; a local path made absolute (Spark resolves a relative one against the
    JVM's working directory, not this process's)."""
    return str(path) if "://" in str(path) else str(Path(path).resolve())


def _local(path: Path | str) -> str | None:
    text = str(path)
    return None if "://" in text else text


def in_history_order(table: pa.Table) -> pa.Table:
    return table.sort_by([("ts", "ascending"), ("file_index", "ascending"),
                          ("row_index", "ascending")])


def groups(spark) -> int:
    """How many groups the keys are hashed into: the shuffle's partitions (a size, not a result
    setting: every key's events are in one group whatever the count)."""
    return int(spark.conf.get("spark.sql.shuffle.partitions"))


def by_group(df, key, fn: Callable[[pa.Table], pa.Table], schema, spark):
    """fn on the events of each group of keys (a Column), one Arrow table per group. Groups, not
    keys: one Python call per key would cost more than the rules."""
    from pyspark.sql import functions as F

    grouped = df.withColumn("_group", F.pmod(F.xxhash64(key), F.lit(groups(spark))))
    with arrow_only():
        return grouped.groupBy("_group").applyInArrow(
            lambda table: fn(table.drop_columns(["_group"])), schema)


@contextmanager
def arrow_only():
    """Arrow in, Arrow out: the pandas conversions PySpark warns about under pandas 3 are not
    used, so its warning says nothing here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
        yield
