"""MLflow (a temp sqlite store): the train/evaluate run, the registered pyfunc, the published baseline,
tune's nested runs, and the lineage tags (git commit, DVC hashes as DVC computes them)."""

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from dailyrec.core.errors import ConfigError
from dailyrec.core.files import dvc_md5
from dailyrec.model import artifacts
from dailyrec.ops import settings as ops
from stages import evaluate as E
from stages import train as T
from tests import params as raw_params
from tests.params import of, project_params
from tools import tune
from tests.clean_events import write_clean
from tests.modeling_workspace import ROOT, make_workspace, set_run_date

pytestmark = pytest.mark.slow

DAY1, DAY2 = dt.date(2026, 11, 15), dt.date(2026, 11, 16)


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Day 1: train + evaluate, then publish (alias -> v1). Day 2: train + evaluate against it."""
    root = make_workspace(tmp_path_factory.mktemp("mlflow") / "ws", days=15, run_date=DAY1)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    git(root, "init", "-q")
    git(root, "add", "params.yaml", "dvc.yaml")
    git(root, "commit", "-q", "-m", "day 1")
    full = pq.read_table(root / "data/clean")
    day1_end = pa.scalar(dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc), full["ts"].type)
    write_clean(root, full.filter(pc.less(full["ts"], day1_end)))
    out = {"root": root}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("DAILYREC_MLFLOW", "on")
        assert T.main([]) == 0 and E.main([]) == 0
        out["day1"] = {name: json.loads((root / "metrics" / f"{name}.json").read_text())
                       for name in ("mlflow", "eval", "gate", "train")}
        out["data1_md5"] = dvc_md5("data/clean")
        out["models1_md5"] = dvc_md5("models")
        out["bundle1"] = artifacts.load("models")
        import mlflow

        client = mlflow.MlflowClient()
        client.set_registered_model_alias("dailyrec-als", "published", 1)  # what publish does
        write_clean(root, full)
        set_run_date(root, DAY2)
        assert T.main([]) == 0 and E.main([]) == 0
        out["day2"] = {name: json.loads((root / "metrics" / f"{name}.json").read_text())
                       for name in ("mlflow", "eval", "gate")}
        yield out


@pytest.fixture
def client(days, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{days['root'] / 'mlflow.db'}")
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return mlflow.MlflowClient()


def test_train_writes_the_mlflow_record(days):
    record = days["day1"]["mlflow"]
    assert set(record) == {"run_id", "experiment", "model_name", "model_version", "alias"}
    assert record["experiment"] == "dailyrec" and record["model_name"] == "dailyrec-als"
    assert record["model_version"] == 1 and days["day2"]["mlflow"]["model_version"] == 2
    assert days["day1"]["train"]["mlflow_run_id"] == record["run_id"]


def test_one_run_holds_params_loss_lineage_and_the_evaluation(days, client):
    run = client.get_run(days["day1"]["mlflow"]["run_id"])
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["train.factors"] == "8" and params["train.confidence"] == "log"
    assert params["run.date"] == "2026-11-15" and params["eval.holdout_days"] == "1"
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in loss] == [0, 1, 2, 3]
    assert loss[-1].value == pytest.approx(days["day1"]["train"]["final_loss"])
    assert metrics["duration_s_fit"] >= 0 and metrics["nonzeros"] > 0
    assert tags["device"] == "cpu"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=days["root"], capture_output=True,
                          text=True).stdout.strip()
    assert tags["git.commit"] == head and tags["git.dirty"] == "false"
    assert tags["dvc.dep.data/clean"] == days["data1_md5"]
    assert tags["dvc.models.md5"] == days["models1_md5"]
    # evaluate's part of the same run
    assert metrics["ndcg_at_20"] == pytest.approx(days["day1"]["eval"]["ndcg_at_20"])
    assert metrics["most_popular_ndcg_at_20"] == pytest.approx(
        days["day1"]["eval"]["baselines"]["most_popular"]["ndcg_at_20"])
    assert metrics["gate_passed"] == 1.0 and tags["gate.passed"] == "true"
    curve = client.get_metric_history(run.info.run_id, "als_recall_at_k")
    assert [m.step for m in curve] == list(range(1, 21))
    version = client.get_model_version("dailyrec-als", "1")
    assert version.run_id == run.info.run_id and version.tags["gate"] == "passed"


def test_registered_pyfunc_returns_top_n_for_user_ids(days, client):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/dailyrec-als/1")
    bundle = days["bundle1"]
    known = str(bundle.user_ids[3])
    got = model.predict(pd.DataFrame({"user_id": [known, "nobody"]}), params={"n": 5})
    assert list(got.columns) == ["user_id", "rank", "item_id", "score", "source"]
    mine = got[got.user_id == known]
    ids, _ = bundle.model.recommend(3, bundle.user_items[3], N=5, filter_already_liked_items=True)
    assert mine["item_id"].tolist() == bundle.item_ids[ids].tolist()
    assert mine["rank"].tolist() == [1, 2, 3, 4, 5] and set(mine["source"]) == {"personalized"}
    had = set(bundle.item_ids[bundle.user_items[3].indices])
    assert not had & set(mine["item_id"])
    fallback = got[got.user_id == "nobody"]
    popular = np.argsort(-np.diff(bundle.user_items.tocsc().indptr), kind="stable")[:5]
    assert fallback["item_id"].tolist() == bundle.item_ids[popular].tolist()
    assert set(fallback["source"]) == {"fallback"}


def test_day_two_is_compared_with_the_published_model(days, client):
    published = days["day2"]["eval"]["baselines"]["published"]
    # v1 was trained on data up to 2026-11-14: it never saw the held-out day 2026-11-15.
    assert published["mode"] == "artifact" and published["model_version"] == 1
    assert published["run_id"] == days["day1"]["mlflow"]["run_id"]
    gate = days["day2"]["gate"]
    assert gate["published_version"] == 1 and gate["published"] == published["ndcg_at_20"]
    assert "published v1 (artifact)" in gate["reason"]
    run = client.get_run(days["day2"]["mlflow"]["run_id"])
    assert run.data.tags["published.version"] == "1" and run.data.tags["published.mode"] == \
        "artifact"
    assert run.data.metrics["published_ndcg_at_20"] == pytest.approx(published["ndcg_at_20"])


def test_changed_eval_params_go_to_a_run_of_their_own(days, client, monkeypatch):
    root = days["root"]
    monkeypatch.chdir(root)
    params = raw_params.read()
    params["eval"]["k"] = 5
    raw_params.write("p5.json", params)
    assert E.main(["--params", "p5.json"]) == 0
    train_run = days["day2"]["mlflow"]["run_id"]
    runs = client.search_runs([client.get_experiment_by_name("dailyrec").experiment_id],
                              filter_string=f"tags.`dailyrec.train_run_id` = '{train_run}'")
    assert len(runs) == 1 and runs[0].data.params["eval.k"] == "5"
    assert client.get_run(train_run).data.params["eval.k"] == "10"


def test_tune_runs_nested_trials_and_applies_the_best(days, client, monkeypatch, capsys):
    root = days["root"]
    monkeypatch.chdir(root)
    before = (root / "params.yaml").read_text()
    assert tune.main(["--trials", "3", "--seed", "1", "--apply"]) == 0
    out = capsys.readouterr().out
    assert "trial   0" in out and "trial   2" in out and "best train params:" in out
    experiment = client.get_experiment_by_name("dailyrec").experiment_id
    parent = client.search_runs([experiment], filter_string="tags.`dailyrec.stage` = 'tune'")[0]
    trials = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(trials) == 3
    assert all("ndcg_at_20" in t.data.metrics for t in trials)
    best = float(parent.data.metrics["best_value"])
    assert best == pytest.approx(max(t.data.metrics["ndcg_at_20"] for t in trials))
    after = yaml.safe_load((root / "params.yaml").read_text())["train"]
    chosen = {k[len("best."):]: v for k, v in parent.data.tags.items() if k.startswith("best.")}
    if "params.yaml already has the best" in out:
        assert (root / "params.yaml").read_text() == before
    else:
        assert {k: str(after[k]) for k in chosen} == chosen


def test_apply_changes_only_the_values_in_the_commented_params_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    before = path.read_text().splitlines()
    tune.apply({"factors": 12, "alpha": 3.5, "regularization": 1e-05, "confidence": "linear",
                "iterations": 7}, path)
    after = path.read_text().splitlines()
    assert len(after) == len(before)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert sorted(b.strip() for _, b in changed) == sorted(
        ["factors: 12", "alpha: 3.5", "regularization: 1.0e-05", "confidence: linear",
         "iterations: 7"])
    train = yaml.safe_load(path.read_text())["train"]
    assert train["regularization"] == 1e-05 and train["factors"] == 12


def test_dvc_md5_matches_dvc_itself(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.parquet").write_bytes(b"alpha")
    (data / "sub" / "b.txt").write_text("beta\n")
    dvc = [sys.executable, "-m", "dvc"]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([*dvc, "add", "-q", "data"], cwd=tmp_path, check=True, env=env)
    recorded = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"]
    assert dvc_md5(data) == recorded
    assert dvc_md5(data / "a.parquet") == "2c1743a391305fbf367df8e4f069f9f9"  # md5("alpha")


def test_bad_mlflow_settings_name_the_key():
    with pytest.raises(ConfigError, match="mlflow.alias"):
        ops.mlflow(of(project_params(**{"mlflow.alias": "v3"})))
    with pytest.raises(ConfigError, match="mlflow.model_name"):
        ops.mlflow(of(project_params(**{"mlflow.model_name": ""})))


def test_runs_record_their_training_window_and_holdout_as_mlflow_datasets(days, tmp_path):
    """Read back through a real MLflow tracking server (the UI's Dataset column): each train run
    has the training window as a `training` input (DVC path, md5 as digest, rows and dates), and
    the evaluation its holdout as an `eval` input; the two days trained on different data."""
    import json as _json
    from pathlib import Path

    import mlflow

    from tests.servers import free_port, log_output, wait_for_port

    port = free_port()
    with log_output("mlflow") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{days['root'] / 'mlflow.db'}", "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        wait_for_port(port, timeout=90, proc=server)
        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        digests = []
        for day in ("day1", "day2"):
            run = client.get_run(days[day]["mlflow"]["run_id"])
            inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
                      for i in run.inputs.dataset_inputs}
            assert set(inputs) == {"training", "eval"}, inputs
            window, holdout = inputs["training"], inputs["eval"]
            assert window.name == "training window" and window.source_type == "dvc"
            source = _json.loads(window.source)
            assert source["path"] == "data/clean" and source["md5"].endswith(".dir")
            assert window.digest == source["md5"][:32] and len(window.digest) == 32
            if day == "day2":  # the directory as it is now
                assert source["md5"] == dvc_md5(days["root"] / "data/clean")
            profile = _json.loads(window.profile)
            assert profile["rows"] == run.data.metrics["events"] > 0  # train.json's counts
            assert profile["users"] == run.data.metrics["users"] > 0
            assert profile["first_event"] < profile["last_event"]
            assert holdout.name == "holdout" and holdout.digest != window.digest
            held = _json.loads(holdout.profile)
            assert held["rows"] == days[day]["eval"]["counts"]["holdout_events"] > 0
            assert held["first_event"] == days[day]["eval"]["holdout_start"]
            digests.append(window.digest)
        assert digests[0] != digests[1]  # day 2 trained on more data
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_work_ahead_runs_on_a_thread_and_keeps_its_error_for_the_caller(monkeypatch):
    """tracking.ahead: MLflow's imports (or the published model's lookup) run on a thread while
    the stage computes; an error waits in the Future for whoever asks, and MLflow off means no
    thread at all."""
    import threading

    from dailyrec.ops import tracking

    def lookup():
        return threading.current_thread().name

    monkeypatch.setenv("DAILYREC_MLFLOW", "on")
    with tracking.ahead(lookup) as future:
        assert future.result().startswith("mlflow")

    def down():
        raise OSError("MLflow down")

    with tracking.ahead(down) as future:
        pass  # the block's own work is not interrupted
    with pytest.raises(OSError, match="MLflow down"):
        future.result()
    monkeypatch.setenv("DAILYREC_MLFLOW", "off")
    with tracking.ahead(lookup) as future:
        assert future is None


def test_prune_versions_keeps_the_newest_and_the_aliased_and_every_run(tmp_path, monkeypatch):
    import mlflow
    from mlflow.pyfunc import PythonModel

    from dailyrec.ops import tracking

    class Constant(PythonModel):  # a stand-in: the real bundle's logging is tested above
        def predict(self, context, model_input, params=None):
            return model_input

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = ops.mlflow(of(project_params()))
    assert tracking.prune_versions(settings, keep=2) == []  # no store yet: none made
    assert not (tmp_path / "mlflow.db").exists()
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("retention")
    client = mlflow.MlflowClient()
    runs, files = [], {}
    for k in range(5):
        with mlflow.start_run() as run:
            mlflow.log_metric("ndcg_at_20", 0.1 + k)
            info = mlflow.pyfunc.log_model(name="model", python_model=Constant(),
                                           registered_model_name=settings.model_name)
        runs.append(run.info.run_id)
        files[k + 1] = Path(client.get_logged_model(info.model_id).artifact_location
                            .removeprefix("file://"))
        assert (files[k + 1] / "MLmodel").exists() and info.registered_model_version == k + 1
    client.set_registered_model_alias(settings.model_name, settings.alias, "1")
    # A run stopped half-way last time: v3's files and logged model are gone, its version listed.
    shutil.rmtree(files[3])
    client.delete_logged_model(files[3].parent.name)

    assert tracking.prune_versions(settings, keep=2) == [2, 3]
    left = client.search_model_versions(f"name = '{settings.model_name}'")
    assert sorted(int(v.version) for v in left) == [1, 4, 5]
    assert {k for k in files if files[k].exists()} == {1, 4, 5}
    assert [client.get_run(r).data.metrics["ndcg_at_20"] for r in runs] == [0.1, 1.1, 2.1, 3.1,
                                                                            4.1]
    mlflow.pyfunc.load_model(f"models:/{settings.model_name}@{settings.alias}")
    assert tracking.prune_versions(settings, keep=2) == []
    assert tracking.prune_versions(settings, keep=0) == []  # 0 keeps every version
