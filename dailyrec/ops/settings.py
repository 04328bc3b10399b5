"""Settings of operations: params.yaml `mlflow` (tracking and the registry), `alerts`, `report`,
`retention` and the runner's stage deadline (`run.stage_timeout_minutes`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dailyrec.core.settings import Params

NAME = r"[A-Za-z0-9][A-Za-z0-9_.\- ]{0,127}"
ALIAS = r"[A-Za-z_][A-Za-z0-9_\-]{0,63}"


@dataclass(frozen=True)
class MlflowSettings:
    experiment: str
    model_name: str  # the registry name of the daily models
    alias: str  # publish moves it to the version it serves; evaluate's published baseline


def mlflow(params: Params) -> MlflowSettings:
    params.known("mlflow", ("experiment", "model_name", "alias"))
    words = "a name of letters, digits, '_', '-', '.'"
    experiment = params.text("mlflow.experiment", NAME, words)
    model_name = params.text("mlflow.model_name", NAME, words)
    alias = params.text("mlflow.alias", ALIAS, "a name like 'published'")
    if re.fullmatch(r"v\d+", alias) or alias == "latest":
        raise params.fail("mlflow.alias", "a name like 'published' (not 'latest' or v<number>)",
                          alias)
    return MlflowSettings(experiment=experiment, model_name=model_name, alias=alias)


@dataclass(frozen=True)
class AlertSettings:
    throttle_minutes: float  # the same error is mailed at most once per this many minutes
    log_tail_lines: int  # lines of a failing stage's output quoted in the runner's alert


def alerts(params: Params) -> AlertSettings:
    params.known("alerts", ("throttle_minutes", "log_tail_lines"))
    return AlertSettings(throttle_minutes=throttle_minutes(params),
                         log_tail_lines=params.integer("alerts.log_tail_lines", low=1))


def throttle_minutes(params: Params) -> float:
    """alerts.throttle_minutes alone (what a stage that may alert reads)."""
    return params.number("alerts.throttle_minutes", low=0)


@dataclass(frozen=True)
class ReportSettings:
    main_metric: str
    chart_runs: int


def report(params: Params) -> ReportSettings:
    params.known("report", ("main_metric", "chart_runs"))
    return ReportSettings(main_metric=params.text("report.main_metric", r"[a-z_]+(_at_\d+)?",
                                                  "a metric name like ndcg_at_20"),
                          chart_runs=params.integer("report.chart_runs", low=2))


@dataclass(frozen=True)
class RetentionSettings:
    dvc_cache: str  # "workspace": after a good push, the local cache keeps what the workspace uses
    mlflow_model_versions: int  # registered versions whose files are kept (0: all)


def retention(params: Params) -> RetentionSettings:
    params.known("retention", ("dvc_cache", "mlflow_model_versions"))
    return RetentionSettings(
        dvc_cache=params.choice("retention.dvc_cache", ("workspace", "all")),
        mlflow_model_versions=params.integer("retention.mlflow_model_versions", low=0))


STAGE_TIMEOUT_KEY = "run.stage_timeout_minutes"


def stage_timeout_minutes(params: Params) -> float:
    """How long the daily runner lets one step (a stage, dvc pull or push) run before it stops it
    (a hung database, remote or fit must not hold the machine and the lock for ever)."""
    return params.number(STAGE_TIMEOUT_KEY, low=0, strict=True)
