"""train.engine: spark (Spark MLlib ALS with implicitPrefs, in Spark local[2] mode) writes the
models/ bundle the local engine writes: the same id maps and confidence matrix, implicit's model
with factors of the right shape, the engine in meta.json, byte-identical on a rebuild; and its
recommendations are as good as implicit's on a held-out day of the simulator's traffic, both
well above most-popular."""

from __future__ import annotations

import datetime as dt
import json
import sys

import numpy as np
import pyarrow as pa
import pytest

from dailyrec.model import als, artifacts, spark_als
from dailyrec.model import evaluation as E
from dailyrec.model import scoring as SCO
from dailyrec.model import split as SPL
from dailyrec.model.recommender import ALSRecommender, PopularRecommender
from dailyrec.model import settings as model
from stages import train as T
from tests import params as raw_params
from tests.clean_events import human_events
from tests.modeling_workspace import digests

pytestmark = pytest.mark.spark


def with_engine(engine: str, path: str) -> str:
    params = raw_params.read()
    params["train"]["engine"] = engine
    raw_params.write(path, params)  # JSON is YAML
    return path


def test_spark_engine_writes_the_local_engines_bundle_with_mllib_factors(spark, workspace):
    assert T.main(["--params", with_engine("local", "local.json")]) == 0
    local = artifacts.load(workspace / "models")
    (workspace / "models").rename(workspace / "models-local")

    assert T.main(["--params", with_engine("spark", "spark.json")]) == 0
    first = digests(workspace / "models")
    bundle = artifacts.load(workspace / "models")
    assert np.array_equal(bundle.user_ids, local.user_ids)
    assert np.array_equal(bundle.item_ids, local.item_ids)
    for part in ("data", "indices", "indptr"):  # the confidence matrix implicit is given
        assert np.array_equal(getattr(bundle.user_items, part), getattr(local.user_items, part))
    users, items = bundle.user_items.shape
    factors = bundle.meta["params"]["factors"]
    for name, rows in (("user_factors", users), ("item_factors", items)):
        array = getattr(bundle.model, name)
        assert array.shape == (rows, factors) and array.dtype == np.float32
        assert np.isfinite(array).all() and np.abs(array).max() > 0
        assert not np.allclose(array, getattr(local.model, name))  # MLlib's, not implicit's
    assert bundle.meta["engine"] == "spark" and bundle.meta["device"] == "spark"
    assert bundle.meta["params"]["engine"] == "spark"
    assert bundle.meta["pyspark_version"]
    assert local.meta["engine"] == "local" and "pyspark_version" not in local.meta
    metrics = json.loads((workspace / "metrics/train.json").read_text())
    assert metrics["device"] == "spark"
    assert metrics["final_loss"] > 0  # implicit's loss function on MLlib's factors

    # Same data and params: byte-identical models/ (local[2], 2 blocks).
    (workspace / "metrics/train.json").unlink()
    assert T.main(["--params", "spark.json"]) == 0
    assert digests(workspace / "models") == first


def test_mllib_is_given_implicits_confidences():
    import scipy.sparse as sp

    c = np.array([1.0, 1.5, 3.25, 41.0, 1 + 2 ** -23], dtype=np.float32)
    matrix = sp.csr_matrix((c, ([0, 0, 1, 2, 2], [0, 2, 1, 0, 2])), shape=(3, 3))
    table = spark_als.ratings(matrix)
    r = table.column("rating").to_numpy()
    assert table.schema.field("rating").type == pa.float32()
    assert np.array_equal(1 + r.astype(np.float64), c.astype(np.float64))  # MLlib: c = 1 + 1 * r
    assert table.column("user").to_pylist() == [0, 0, 1, 2, 2]
    ones = sp.csr_matrix((np.ones(1, dtype=np.float32), ([0], [0])), shape=(1, 1))
    assert spark_als.ratings(ones).column("rating").to_pylist()[0] > 0  # p = 1, not "disliked"


QUALITY_FIRST = dt.date(2026, 11, 1)
QUALITY_DAYS = 15  # the last one held out


def test_recommendations_as_good_as_implicits_on_a_held_out_day(spark):
    """Held-out day of simulated traffic: recall@10 of MLlib's model and of implicit's, on the
    same split and settings, each well above most-popular and within 20% of each other."""
    events = pa.Table.from_pandas(human_events(QUALITY_FIRST, QUALITY_DAYS, users=800, items=200,
                                               events_per_day=3000), preserve_index=False)
    params = raw_params.project_params(QUALITY_FIRST + dt.timedelta(days=QUALITY_DAYS),
                                       **{"train.iterations": 10, "train.factors": 8})
    config = model.train(raw_params.of(params))
    end = dt.datetime.combine(QUALITY_FIRST + dt.timedelta(days=QUALITY_DAYS), dt.time(),
                              dt.timezone.utc)
    split = SPL.make_split(events, config.confidence, end - dt.timedelta(days=1), end,
                         ("view", "click", "add_to_cart", "purchase"))
    assert len(split.users) > 100
    recall = {}
    for engine in ("local", "spark"):
        _, fitted = E.fit_on_split(split, config.replace(engine=engine, device="cpu"), "cpu")
        assert fitted.device == ("spark" if engine == "spark" else "cpu")
        recall[engine] = SCO.score(ALSRecommender(fitted.model), split, [10]).metrics["recall_at_10"]
    popular = SCO.score(PopularRecommender(split.train.strength), split, [10]
                      ).metrics["recall_at_10"]
    print(f"recall@10: implicit {recall['local']:.4f}, MLlib {recall['spark']:.4f}, "
          f"most-popular {popular:.4f}")
    assert recall["local"] > 1.3 * popular
    assert recall["spark"] > 1.3 * popular
    assert abs(recall["spark"] - recall["local"]) <= 0.2 * recall["local"]


def test_bad_engine_is_refused_naming_the_key(workspace, capsys):
    assert T.main(["--params", with_engine("mllib", "p.json")]) == 2
    assert "train.engine must be one of" in capsys.readouterr().err


def test_missing_pyspark_is_a_config_error_naming_the_extra(workspace, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark.ml.recommendation", None)  # import fails
    assert T.main(["--params", with_engine("spark", "p.json")]) == 2
    err = capsys.readouterr().err
    assert "train.engine is 'spark'" in err and "pip install '.[spark]'" in err
    assert not (workspace / "models").exists()
    with pytest.raises(Exception, match=r"pip install '\.\[spark\]'"):
        als.resolve(model.train(raw_params.of(raw_params.read("p.json"))))
