"""Endpoints, secrets and switches: read from environment variables, never from a committed file.

Each default works on one machine with no cloud account. Settings that shape results are not here:
they live in params.yaml (dailyrec.core.settings).
"""

from __future__ import annotations

import os
from pathlib import Path

SOURCE_URL = "DAILYREC_SOURCE_URL"  # SQLAlchemy URL of the source database
REDIS_URL = "REDIS_URL"  # where publish writes and the API reads (dailyrec.publish.connection)
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
MLFLOW_SWITCH = "DAILYREC_MLFLOW"  # off: no MLflow tracking (metrics/mlflow.json gets nulls)
STATE_DIR = "DAILYREC_STATE_DIR"  # the alert throttle's state
PARAMS_FILE = "DAILYREC_PARAMS"  # another params.yaml (tools, tests)
# Set by the daily runner for each stage it starts: the stage writes how it ended there.
STAGE_STATUS_FILE = "DAILYREC_STAGE_STATUS"
# Set by tests: every process appends the params.yaml keys it read here (dailyrec.core.settings).
PARAMS_TRACE_FILE = "DAILYREC_PARAMS_TRACE"

DEFAULT_SOURCE_URL = "sqlite:///source.db"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"
DEFAULT_STATE_DIR = ".state"
DEFAULT_PARAMS_FILE = "params.yaml"


def source_url() -> str:
    return os.environ.get(SOURCE_URL) or DEFAULT_SOURCE_URL


def redis_url() -> str:
    return os.environ.get(REDIS_URL) or DEFAULT_REDIS_URL


def mlflow_uri() -> str:
    return os.environ.get(MLFLOW_TRACKING_URI) or DEFAULT_MLFLOW_URI


def mlflow_store_missing(uri: str | None = None) -> bool:
    """A sqlite tracking URI whose file does not exist: no history, and nothing that reads it
    should create one."""
    uri = uri or mlflow_uri()
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def mlflow_enabled() -> bool:
    return os.environ.get(MLFLOW_SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR) or DEFAULT_STATE_DIR)


def params_file() -> Path:
    return Path(os.environ.get(PARAMS_FILE) or DEFAULT_PARAMS_FILE)
