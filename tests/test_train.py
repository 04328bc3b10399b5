"""The train stage: models/ and its metrics, CPU bit-reproducibility, devices, clear errors."""

import json
import shutil

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from dailyrec.core import paths, settings
from dailyrec.core.files import dvc_md5
from dailyrec.model import als, artifacts
from dailyrec.model import confidence as C
from dailyrec.model.training import read_events
from dailyrec.model import settings as model
from stages import train as T
from tests import params as raw_params
from tests.modeling_workspace import digests, set_run_date


def test_train_writes_the_model_metrics_and_a_byte_identical_rebuild(workspace, capsys):
    assert T.main([]) == 0
    first = digests(workspace / "models")
    assert sorted(first) == ["als.npz", "ids.npz", "meta.json", "user_items.npz"]
    bundle = artifacts.load(workspace / "models")
    meta = bundle.meta
    assert meta["device"] == "cpu" and meta["run_date"] == "2026-11-15"
    assert meta["params"]["factors"] == 8 and meta["params"]["confidence"] == "log"
    assert meta["data"]["md5"] == dvc_md5(workspace / "data/clean")
    assert "duration" not in json.dumps(meta)  # time-dependent values live in metrics/, not models/
    users, items = meta["matrix"]["users"], meta["matrix"]["items"]
    assert bundle.model.user_factors.shape == (users, 8)
    assert bundle.model.item_factors.shape == (items, 8)
    assert bundle.user_items.shape == (users, items) and bundle.user_items.dtype == np.float32
    assert np.all(bundle.user_items.data >= 1.0)  # c = 1 + alpha * log(1 + r / eps) with r > 0

    metrics = json.loads((workspace / "metrics/train.json").read_text())
    assert metrics["device"] == "cpu" and metrics["iterations"] == 4
    assert metrics["users"] == users and metrics["nonzeros"] == bundle.user_items.nnz
    assert set(metrics["durations_s"]) >= {"read", "build", "fit", "save", "total"}
    assert metrics["final_loss"] > 0
    record = json.loads((workspace / "metrics/mlflow.json").read_text())
    assert record == {"run_id": None, "experiment": "dailyrec", "model_name": "dailyrec-als",
                      "model_version": None, "alias": "published"}
    assert "MLflow off" in capsys.readouterr().out

    # Same data and params, run again: byte-identical models/ (what reproduce relies on).
    (workspace / "metrics/train.json").unlink()
    assert T.main([]) == 0
    assert digests(workspace / "models") == first


def test_our_fit_is_implicits_fit_on_the_confidence_matrix(workspace):
    params = settings.load()
    config = model.train(params)
    interactions = C.aggregate(read_events(paths.CLEAN_DIR), config.confidence,
                               settings.window_end(params))
    matrix = C.confidence(interactions, config.confidence)
    ours = als.fit(matrix, config, "cpu")
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(1, "blas"):
        bare = AlternatingLeastSquares(factors=8, regularization=0.05, alpha=1.0, iterations=4,
                                       random_state=config.random_state,
                                       calculate_training_loss=True)
        bare.fit(matrix, show_progress=False)
    assert np.array_equal(ours.model.user_factors, bare.user_factors)
    assert np.array_equal(ours.model.item_factors, bare.item_factors)
    assert len(ours.losses) == 4 and ours.losses[-1] < ours.losses[0]


def test_device_gpu_fails_clearly_without_cuda(workspace, capsys):
    params = raw_params.read()
    params["train"]["device"] = "gpu"
    raw_params.write("p.json", params)  # JSON is YAML
    code = T.main(["--params", "p.json"])
    if als.has_cuda():  # on a GPU machine the same call trains on the GPU
        assert code == 0 and json.loads(open("metrics/train.json").read())["device"] == "gpu"
    else:
        assert code == 2
        err = capsys.readouterr().err
        assert "train: error: train.device is 'gpu'" in err and "pip install .[gpu]" in err
        assert not (workspace / "models").exists()


def test_device_auto_uses_what_implicit_has():
    assert als.resolve_device("auto") == ("gpu" if als.has_cuda() else "cpu")
    assert als.resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("key, value, message", [
    ("factors", 0, "train.factors must be an integer >= 1"),
    ("iterations", "many", "train.iterations must be an integer"),
    ("random_state", None, "train.random_state must be an integer"),
    ("device", "tpu", "train.device must be one of"),
    ("track_loss", "yes", "train.track_loss must be true or false"),
])
def test_bad_train_params_exit_2_naming_the_key(workspace, capsys, key, value, message):
    params = raw_params.read()
    params["train"][key] = value
    raw_params.write("p.json", params)
    assert T.main(["--params", "p.json"]) == 2
    assert message in capsys.readouterr().err


def test_missing_clean_data_is_a_clear_error(workspace, capsys):
    shutil.rmtree(workspace / "data/clean")
    assert T.main([]) == 2
    assert "data/clean not found: run filter_noise first" in capsys.readouterr().err


def test_decay_is_measured_from_run_date(workspace):
    """Moving run.date later ages every event: with decay, confidences drop; ids stay the same."""
    assert T.main([]) == 0
    early = artifacts.load(workspace / "models").user_items
    set_run_date(workspace, settings.run_date(settings.load()) + __import__("datetime").timedelta(days=7))
    assert T.main([]) == 0
    late = artifacts.load(workspace / "models").user_items
    assert early.nnz == late.nnz and np.all(late.data < early.data)


def test_an_unreachable_mlflow_server_is_a_service_fault_with_exit_status_69(workspace, capsys,
                                                                            monkeypatch):
    """A tracking server that does not answer is worth retrying, not a bug (docs/operations.md)."""
    from tests.servers import free_port

    monkeypatch.setenv("DAILYREC_MLFLOW", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    assert T.main([]) == 69
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("train: error: MLflow at http://127.0.0.1:"), lines[-3:]
