"""Where every pipeline file lives, relative to the project root: the one place stages, the runner
and the report learn paths from (dvc.yaml declares the same paths; tests/test_dvc_yaml.py holds
them together).
"""

from __future__ import annotations

from pathlib import Path

# fetch_delta
DELTA_DIR = Path("data/delta")
DELTA_EVENTS = DELTA_DIR / "events.parquet"
DELTA_QUARANTINE = DELTA_DIR / "quarantine.parquet"
FETCH_METRICS = Path("metrics/fetch.json")

# merge_history
HISTORY_DIR = Path("data/history")
QUARANTINE_DIR = Path("data/quarantine")
HISTORY_METRICS = Path("metrics/history.json")

# validate
REJECTIONS = Path("data/rejections.json")
VALIDATION_METRICS = Path("metrics/validation.json")
VALIDATION_REPORTS = Path("reports/validation")

# filter_noise
CLEAN_DIR = Path("data/clean")
FILTER_METRICS = Path("metrics/filter.json")
FILTER_OFFENDERS = Path("reports/filter/offenders.json")

# train
MODELS_DIR = Path("models")
TRAIN_METRICS = Path("metrics/train.json")
MLFLOW_RECORD = Path("metrics/mlflow.json")

# evaluate
EVAL_METRICS = Path("metrics/eval.json")
GATE = Path("metrics/gate.json")
EVAL_PLOTS = Path("metrics/plots/eval_at_k.csv")

# publish
PUBLISH_METRICS = Path("metrics/publish.json")

# not DVC outputs: the runner's and the report's
METRICS_DIR = Path("metrics")
DAILY_REPORTS = Path("reports/daily")
DAILY_LOGS = Path("logs/daily")
RUN_LOCK = Path(".dvc/tmp/daily-run.lock")
DVC_FILE = Path("dvc.yaml")
DVC_LOCK = Path("dvc.lock")
