"""The Spark engine through Spark Connect, the way a process outside the cluster (the one that
`dvc repro` runs) drives a remote one (SPARK_REMOTE; Databricks Connect is Spark Connect): a local
Connect server here, and the same answer as the local engine (docs/scaling.md)."""

from __future__ import annotations

import os
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from dailyrec.core import spark as SP
from dailyrec.quality.filtering import engine as FE
from dailyrec.quality.filtering import spark_engine as SE
from tests import dq_factory as F
from tests import test_filter_noise as crafted
from tests.test_spark_filter import TIGHT, crafted_settings, without_timings

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def remote():
    environ = dict(os.environ)  # PySpark leaves variables of its own behind: later tests see none
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    with SP.arrow_only():
        session = SparkSession.builder.remote("local[2]").config(
            "spark.sql.shuffle.partitions", "3").getOrCreate()
    yield session
    with SP.arrow_only():
        session.stop()
    os.environ.clear()
    os.environ.update(environ)


def test_the_engine_through_spark_connect_gives_the_local_answer(remote, tmp_path):
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    assert isinstance(remote, ConnectSession)
    F.write_history(tmp_path / "history", pd.concat(crafted.crafted_window().values(),
                                                    ignore_index=True))
    cfg = crafted_settings(3, **TIGHT)
    local = FE.run(cfg, tmp_path / "history", set(), tmp_path / "local.parquet")
    sparked = SE.run(cfg, tmp_path / "history", set(), tmp_path / "spark.parquet", remote)
    assert without_timings(sparked) == without_timings(local)
    assert pq.read_table(tmp_path / "spark.parquet").equals(
        pq.read_table(tmp_path / "local.parquet"))
