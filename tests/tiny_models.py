"""Small real ALS models for the publish and serving tests (implicit + dailyrec.model.artifacts), and the
few helpers those tests share: a stage workdir and a publish command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from dailyrec.model import artifacts
from tests.params import project_params

ROOT = Path(__file__).resolve().parents[1]


def bundle(n_users: int = 400, n_items: int = 60, seed: int = 0, per_user: int = 4,
           full_users: int = 0) -> artifacts.ModelBundle:
    """A fitted CPU ALS model on random interactions: every user has per_user items, item
    popularity is skewed (item j drawn with weight 1/(j+1)) so the most-popular list is clear.
    The first full_users users have every item (nothing is left to recommend them)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)
    weights /= weights.sum()
    rows = np.repeat(np.arange(n_users), per_user)
    cols = rng.choice(n_items, size=rows.size, p=weights)
    user_items = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)),
                               shape=(n_users, n_items))
    if full_users:
        user_items = user_items.tolil()
        user_items[:full_users, :] = 1.0
        user_items = user_items.tocsr()
    user_items.data[:] = 1.0  # duplicates summed: back to 1
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=8, iterations=3, random_state=seed)
        model.fit(user_items, show_progress=False)
    return artifacts.ModelBundle(
        model=model, user_ids=np.array([f"user-{i}" for i in range(n_users)]),
        item_ids=np.array([f"item-{j}" for j in range(n_items)]), user_items=user_items,
        meta={"seed": seed, "params": project_params()["train"]})


def workdir(path: Path, model: artifacts.ModelBundle, *, gate: dict | None = None,
            publish: dict | None = None, mlflow_run: dict | None = None) -> Path:
    """A directory laid out like the project for `python -m stages.publish`."""
    import yaml

    path.mkdir(parents=True, exist_ok=True)
    settings = {"top_n": 10, "filter_already_liked": True, "batch_size": 1000, "keep_versions": 3,
                "similar_items": True, "explain_items": 5}
    settings.update(publish or {})
    params = project_params("2026-11-21")
    params["publish"] = settings
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    artifacts.save(model, path / "models")
    (path / "metrics").mkdir(exist_ok=True)
    if gate is not None:
        from dailyrec.core.files import dvc_md5

        gate = {"model_md5": dvc_md5(path / "models"), **gate}
        (path / "metrics" / "gate.json").write_text(json.dumps(gate_file(**gate)))
    if mlflow_run is not None:
        (path / "metrics" / "mlflow.json").write_text(json.dumps(mlflow_record(**mlflow_run)))
    return path


def gate_file(passed: bool, reason: str | None = None, **more) -> dict:
    """metrics/gate.json in evaluate's shape (dailyrec.core.metrics.GATE)."""
    return {"run_date": "2026-11-21", "passed": passed,
            "reason": reason or ("passed: beats most-popular" if passed else "failed: too low"),
            "metric": "ndcg_at_20", "value": 0.3, "most_popular": 0.2, "lift": 0.5,
            "min_lift": 0.1, "published": None, "published_version": None, "drop": None,
            "max_drop": 0.05, "model_md5": None, **more}


def mlflow_record(**given) -> dict:
    """metrics/mlflow.json in train's shape (dailyrec.core.metrics.MLFLOW)."""
    return {"run_id": None, "experiment": "dailyrec", "model_name": "dailyrec-als",
            "model_version": None, "alias": "published", **given}


def publish_env(redis_url: str, **extra: str) -> dict:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
           "OPENBLAS_NUM_THREADS": "1"}
    env.pop("REDIS_PASSWORD", None)
    env.update(extra)
    return env


def publish_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stages.publish", "--no-progress", *args]


def run_publish(cwd: Path, redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(publish_cmd(*args), cwd=cwd, env=publish_env(redis_url, **env),
                          capture_output=True, text=True, timeout=300)
