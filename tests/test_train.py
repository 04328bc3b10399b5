"""The train stage: models/ and its metrics, CPU bit-reproducibility, devices, clear errors."""

import hashlib
import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from stages import artifacts
from stages import confidence as C
from stages import params as P
from stages import train as T
from tests.modeling_workspace import make_workspace, set_run_date


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("DAILYREC_MLFLOW", "off")
    root = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(root)
    return root


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir())}


def test_train_writes_the_model_metrics_and_a_byte_identical_rebuild(workspace, capsys):
    assert T.main([]) == 0
    first = digests(workspace / "models")
    assert sorted(first) == ["als.npz", "ids.npz", "meta.json", "user_items.npz"]
    bundle = artifacts.load(workspace / "models")
    meta = bundle.meta
    assert meta["device"] == "cpu" and meta["run_date"] == "2026-11-15"
    assert meta["params"]["factors"] == 8 and meta["params"]["confidence"] == "log"
    assert meta["data"]["md5"] == T.file_md5(workspace / "data/clean/events.parquet")
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
    params = P.load()
    config = T.TrainConfig.from_params(params)
    interactions = C.aggregate(T.read_events(), config.confidence, T.window_end(params))
    matrix = C.confidence(interactions, config.confidence)
    ours = T.fit(matrix, config, "cpu")
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
    params = P.load()
    params["train"]["device"] = "gpu"
    P.write_json("p.json", params)  # JSON is YAML
    code = T.main(["--params", "p.json"])
    if T.has_cuda():  # on a GPU machine the same call trains on the GPU
        assert code == 0 and json.loads(open("metrics/train.json").read())["device"] == "gpu"
    else:
        assert code == 2
        err = capsys.readouterr().err
        assert "train: error: train.device is 'gpu'" in err and "pip install .[gpu]" in err
        assert not (workspace / "models").exists()


def test_device_auto_uses_what_implicit_has():
    assert T.resolve_device("auto") == ("gpu" if T.has_cuda() else "cpu")
    assert T.resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("key, value, message", [
    ("factors", 0, "train.factors must be >= 1"),
    ("iterations", "many", "train.iterations must be an integer"),
    ("random_state", None, "train.random_state must be an integer"),
    ("device", "tpu", "train.device must be one of"),
    ("track_loss", "yes", "train.track_loss must be true or false"),
])
def test_bad_train_params_exit_2_naming_the_key(workspace, capsys, key, value, message):
    params = P.load()
    params["train"][key] = value
    P.write_json("p.json", params)
    assert T.main(["--params", "p.json"]) == 2
    assert message in capsys.readouterr().err


def test_missing_clean_data_is_a_clear_error(workspace, capsys):
    (workspace / "data/clean/events.parquet").unlink()
    assert T.main([]) == 2
    assert "data/clean/events.parquet not found: run filter_noise first" in capsys.readouterr().err


def test_decay_is_measured_from_run_date(workspace):
    """Moving run.date later ages every event: with decay, confidences drop; ids stay the same."""
    assert T.main([]) == 0
    early = artifacts.load(workspace / "models").user_items
    set_run_date(workspace, P.run_date(P.load()) + __import__("datetime").timedelta(days=30))
    assert T.main([]) == 0
    late = artifacts.load(workspace / "models").user_items
    assert early.nnz == late.nnz and np.all(late.data < early.data)
