"""The trained model on disk: the one layout train writes and evaluate, publish and serving read.

    models/als.npz         implicit ALS factors and settings, loadable by
                           implicit.cpu.als.AlternatingLeastSquares.load
    models/ids.npz         user_ids and item_ids (text): row i of the factors is user_ids[i]
    models/user_items.npz  the users x items confidence matrix the model was fitted on (CSR), so
                           recommendations can leave out what a user already has
    models/meta.json       what made the model: data hash, params, device. Nothing time- or
                           machine-dependent goes here (durations belong in metrics/train.json),
                           so the same commit and data rebuild a byte-identical models/ directory.

Every .npz is written with fixed zip timestamps and sorted entries: numpy.savez stamps the current
time into the archive, which would make two identical models differ byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from dailyrec.core import paths
from dailyrec.core.errors import ConfigError, DataError
from dailyrec.core.files import replace_dir, tmp_path, write_text
from dailyrec.model.settings import TrainConfig, train_from_dict

MODELS_DIR = paths.MODELS_DIR
MODEL_FILE = "als.npz"
IDS_FILE = "ids.npz"
USER_ITEMS_FILE = "user_items.npz"
META_FILE = "meta.json"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class ModelBundle:
    model: Any  # implicit.cpu.als.AlternatingLeastSquares
    user_ids: np.ndarray  # str, aligned with model.user_factors rows and user_items rows
    item_ids: np.ndarray  # str, aligned with model.item_factors rows and user_items columns
    user_items: sp.csr_matrix
    meta: dict = field(default_factory=dict)

    def user_index(self) -> dict[str, int]:
        return dict(zip(self.user_ids.tolist(), range(len(self.user_ids))))

    def train_config(self, fallback: dict | None = None) -> TrainConfig:
        """The train settings this model was fitted with (train_config(meta))."""
        return train_config(self.meta, fallback)


def read_meta(directory: Path | str = MODELS_DIR) -> dict:
    """models/meta.json, the one reader of it: what made the model."""
    path = Path(directory) / META_FILE
    if not path.exists():
        raise ConfigError(f"{path} not found: run train first")
    return json.loads(path.read_text())


def train_config(meta: dict, fallback: dict | None = None) -> TrainConfig:
    """The train section a model's meta.json holds, checked like params.yaml's. Keys a model saved
    before they existed take their values from `fallback` (today's section); without one, a
    meta.json with no train params is an error."""
    params = meta.get("params")
    if not params and fallback is None:
        raise DataError(f"{MODELS_DIR}/{META_FILE} has no train params: rebuild the model with "
                        "train")
    return train_from_dict(params or {}, fallback)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A deterministic .npz: the same arrays always give the same bytes."""
    path = Path(path)
    tmp = tmp_path(path)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(arrays[name]), allow_pickle=False)
    tmp.replace(path)


def model_arrays(model: Any) -> dict[str, np.ndarray]:
    """The entries implicit's own save() writes, with num_threads fixed so no machine leaks in."""
    if hasattr(model, "to_cpu") and type(model).__module__.startswith("implicit.gpu"):
        model = model.to_cpu()
    values = {
        "user_factors": model.user_factors, "item_factors": model.item_factors,
        "regularization": model.regularization, "factors": model.factors, "num_threads": 0,
        "iterations": model.iterations, "use_native": model.use_native, "use_cg": model.use_cg,
        "cg_steps": model.cg_steps, "calculate_training_loss": model.calculate_training_loss,
        "dtype": model.dtype.name, "random_state": model.random_state, "alpha": model.alpha,
    }
    return {k: np.asarray(v) for k, v in values.items() if v is not None}


def save(bundle: ModelBundle, directory: Path | str = MODELS_DIR) -> None:
    """Write the bundle into a new folder beside `directory`, then swap it in: a reader (or a
    run killed midway) sees the old model or the new one, never half of each."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.{os.getpid()}.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_npz(staging / MODEL_FILE, model_arrays(bundle.model))
    write_npz(staging / IDS_FILE, {"user_ids": np.asarray(bundle.user_ids, dtype=str),
                                   "item_ids": np.asarray(bundle.item_ids, dtype=str)})
    m = bundle.user_items.tocsr()
    m.sort_indices()
    write_npz(staging / USER_ITEMS_FILE, {"data": m.data, "indices": m.indices,
                                          "indptr": m.indptr, "shape": np.asarray(m.shape)})
    write_text(staging / META_FILE,
               json.dumps(bundle.meta, indent=2, sort_keys=True, default=str) + "\n")
    replace_dir(staging, directory)


def load(directory: Path | str = MODELS_DIR) -> ModelBundle:
    from implicit.cpu.als import AlternatingLeastSquares

    directory = Path(directory)
    missing = [f for f in (MODEL_FILE, IDS_FILE, USER_ITEMS_FILE, META_FILE)
               if not (directory / f).exists()]
    if missing:
        raise ConfigError(f"{directory}: model files missing: {missing} (run train first)")
    model = AlternatingLeastSquares.load(str(directory / MODEL_FILE))
    with np.load(directory / IDS_FILE, allow_pickle=False) as ids:
        user_ids, item_ids = ids["user_ids"], ids["item_ids"]
    with np.load(directory / USER_ITEMS_FILE, allow_pickle=False) as m:
        user_items = sp.csr_matrix((m["data"], m["indices"], m["indptr"]),
                                   shape=tuple(m["shape"]))
    meta = read_meta(directory)
    return ModelBundle(model=model, user_ids=user_ids, item_ids=item_ids, user_items=user_items,
                       meta=meta)
