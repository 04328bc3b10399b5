"""What a training run trained and was judged on, as MLflow datasets (the UI's Dataset column).

Each train run logs its training window (context `training`) and each evaluation its holdout
(context `eval`). Neither is uploaded: the data lives in DVC, so a dataset here is metadata only,
its source the DVC path and remote, its digest the DVC hash (`dvc.lock`'s md5 of the file or directory), its
profile the row count and date range. Two runs trained on the same data show the same digest.

Imported by dailyrec.ops.tracking only when MLflow is on (importing mlflow takes seconds).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset


class DvcDatasetSource(DatasetSource):
    """A file tracked by DVC: its path in the repository, the DVC remote that holds it and its
    md5 (`dvc pull PATH` at the run's git commit brings exactly these bytes back)."""

    def __init__(self, path: str, md5: str | None, remote: str | None = None,
                 remote_url: str | None = None):
        self.path, self.md5, self.remote, self.remote_url = path, md5, remote, remote_url

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self, **kwargs) -> str:
        return self.path  # `dvc pull` it first; MLflow itself never downloads it

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # built explicitly, never guessed from a string

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "md5": self.md5, "remote": self.remote,
                "remote_url": self.remote_url}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(**{k: source_dict.get(k) for k in ("path", "md5", "remote", "remote_url")})


class ProfiledDataset(MetaDataset):
    """A metadata-only dataset with a profile (rows, date range, ...), shown by the MLflow UI."""

    def __init__(self, source: DatasetSource, name: str, digest: str, profile: dict[str, Any]):
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        config["profile"] = json.dumps(self._profile, sort_keys=True)
        return config


def training_window(path: str, md5: str | None, remote: tuple[str | None, str | None],
                    rows: int, first_event: str | None, last_event: str | None,
                    users: int, items: int, nonzeros: int) -> ProfiledDataset:
    source = DvcDatasetSource(path, md5, *remote)
    return ProfiledDataset(source, name="training window", digest=(md5 or "none")[:32],
                           profile={"rows": rows, "first_event": first_event,
                                    "last_event": last_event, "users": users, "items": items,
                                    "nonzeros": nonzeros})


def holdout(path: str, md5: str | None, remote: tuple[str | None, str | None],
            holdout_start: str, window_end: str, counts: dict[str, Any]) -> ProfiledDataset:
    """The evaluation's holdout: the events of the same file from holdout_start to window_end.
    Its digest is the file's hash with those bounds (the same data cut elsewhere is another
    holdout)."""
    source = DvcDatasetSource(path, md5, *remote)
    digest = hashlib.md5(f"{md5}|{holdout_start}|{window_end}".encode()).hexdigest()
    profile = {"rows": counts.get("holdout_events"), "first_event": holdout_start,
               "last_event": window_end, "users": counts.get("holdout_users"),
               "evaluated_users": counts.get("evaluated_users"),
               "rows_before_holdout": counts.get("events_before_holdout")}
    return ProfiledDataset(source, name="holdout", digest=digest, profile=profile)
