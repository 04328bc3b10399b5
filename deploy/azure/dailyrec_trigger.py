"""Start the daily Cloud Run job from Azure and check that it finished (function_app.py's work).

No Google key exists anywhere. The Function authenticates by workload identity federation:
1. its managed identity gets a Microsoft Entra token for DAILYREC_AZURE_TOKEN_AUDIENCE from the
   App Service identity endpoint (IDENTITY_ENDPOINT and IDENTITY_HEADER, set by the platform);
2. Google's Security Token Service exchanges it for a federated token: the workload identity
   pool's provider trusts the tenant's issuer and that audience, and admits only this identity;
3. the federated token impersonates DAILYREC_GCP_TRIGGER_SERVICE_ACCOUNT, whose only rights are
   to run the job and read its executions.
google-auth's identity_pool credentials do all three, and again when the token expires.

Cloud Run calls are retried on 429, 5xx, time-outs and dropped connections, with exponential
backoff (a Retry-After header, when sent, is honoured up to the cap); other answers are final. A
job that cannot be started, and a run that has not finished well by the deadline check, are
mailed through the project's notifier (dailyrec.ops.notify: DAILYREC_SMTP_* and DAILYREC_ALERT_TO).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import requests
from google.auth import exceptions as auth_exceptions
from google.auth import identity_pool
from google.auth.transport.requests import AuthorizedSession

from dailyrec.ops import notify

log = logging.getLogger("dailyrec.trigger")

STS_URL = "https://sts.googleapis.com/v1/token"
IAM_CREDENTIALS_URL = "https://iamcredentials.googleapis.com"
RUN_URL = "https://run.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class TriggerError(Exception):
    """The job could not be started, or its run was not found finished and well."""


@dataclass(frozen=True)
class TriggerConfig:
    project: str
    region: str
    job: str
    # //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/ID
    wif_audience: str
    service_account: str
    azure_token_audience: str  # the Entra application ID URI the managed identity asks a token for
    azure_client_id: str  # the user-assigned identity's client id ("" for a system-assigned one)
    identity_endpoint: str
    identity_header: str
    sts_url: str
    iam_credentials_url: str
    run_url: str
    attempts: int
    backoff_seconds: float
    backoff_cap_seconds: float
    request_timeout_seconds: float
    lookback_hours: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TriggerConfig":
        env = os.environ if env is None else env

        def need(name: str) -> str:
            value = (env.get(name) or "").strip()
            if not value:
                raise TriggerError(f"app setting {name} is not set")
            return value

        def number(name: str, default: str) -> float:
            raw = (env.get(name) or default).strip()
            try:
                return float(raw)
            except ValueError:
                raise TriggerError(f"app setting {name}={raw!r} is not a number") from None

        return cls(
            project=need("DAILYREC_GCP_PROJECT"),
            region=need("DAILYREC_GCP_REGION"),
            job=(env.get("DAILYREC_GCP_JOB") or "dailyrec-daily").strip(),
            wif_audience=need("DAILYREC_GCP_WIF_AUDIENCE"),
            service_account=need("DAILYREC_GCP_TRIGGER_SERVICE_ACCOUNT"),
            azure_token_audience=need("DAILYREC_AZURE_TOKEN_AUDIENCE"),
            azure_client_id=(env.get("DAILYREC_AZURE_CLIENT_ID") or "").strip(),
            identity_endpoint=need("IDENTITY_ENDPOINT"),
            identity_header=need("IDENTITY_HEADER"),
            sts_url=(env.get("DAILYREC_GCP_STS_URL") or STS_URL).strip(),
            iam_credentials_url=(env.get("DAILYREC_GCP_IAM_CREDENTIALS_URL")
                                 or IAM_CREDENTIALS_URL).strip().rstrip("/"),
            run_url=(env.get("DAILYREC_GCP_RUN_URL") or RUN_URL).strip().rstrip("/"),
            attempts=max(1, int(number("DAILYREC_TRIGGER_ATTEMPTS", "5"))),
            backoff_seconds=number("DAILYREC_TRIGGER_BACKOFF_SECONDS", "2"),
            backoff_cap_seconds=number("DAILYREC_TRIGGER_BACKOFF_CAP_SECONDS", "60"),
            request_timeout_seconds=number("DAILYREC_TRIGGER_TIMEOUT_SECONDS", "30"),
            lookback_hours=number("DAILYREC_JOB_LOOKBACK_HOURS", "12"),
        )

    @property
    def job_name(self) -> str:
        return f"projects/{self.project}/locations/{self.region}/jobs/{self.job}"


def credentials(config: TriggerConfig) -> identity_pool.Credentials:
    """Google credentials from the Function's managed identity (steps 1-3 above)."""
    query = {"resource": config.azure_token_audience, "api-version": "2019-08-01"}
    if config.azure_client_id:
        query["client_id"] = config.azure_client_id
    info = {
        "type": "external_account",
        "audience": config.wif_audience,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": config.sts_url,
        "service_account_impersonation_url":
            f"{config.iam_credentials_url}/v1/projects/-/serviceAccounts/"
            f"{config.service_account}:generateAccessToken",
        "credential_source": {
            "url": f"{config.identity_endpoint}?{urllib.parse.urlencode(query)}",
            "headers": {"X-IDENTITY-HEADER": config.identity_header},
            "format": {"type": "json", "subject_token_field_name": "access_token"},
        },
    }
    return identity_pool.Credentials.from_info(info, scopes=[SCOPE])


def session_for(config: TriggerConfig) -> AuthorizedSession:
    return AuthorizedSession(credentials(config))


def _delay(config: TriggerConfig, attempt: int, answer: requests.Response | None) -> float:
    delay = config.backoff_seconds * (2 ** (attempt - 1))
    retry_after = answer.headers.get("Retry-After") if answer is not None else None
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, float(retry_after))
    return min(delay, config.backoff_cap_seconds)


def call(config: TriggerConfig, session: requests.Session, method: str, url: str,
         sleep: Callable[[float], None] = time.sleep, **kwargs) -> dict[str, Any]:
    """One Cloud Run API call, retried as the module says; its JSON answer."""
    problem = ""
    for attempt in range(1, config.attempts + 1):
        answer = None
        try:
            answer = session.request(method, url, timeout=config.request_timeout_seconds,
                                     **kwargs)
        except (requests.Timeout, requests.ConnectionError) as err:
            problem = f"{type(err).__name__}: {err}"
        except auth_exceptions.TransportError as err:
            problem = f"authentication did not answer: {err}"
        except auth_exceptions.GoogleAuthError as err:  # a refused exchange or impersonation
            problem = f"authentication failed: {err}"
            if not getattr(err, "retryable", False):
                raise TriggerError(f"{method} {url}: {problem}") from err
        else:
            if answer.status_code < 300:
                return answer.json() if answer.content else {}
            problem = f"HTTP {answer.status_code}: {answer.text[:300]}"
            if answer.status_code not in RETRYABLE_STATUSES:
                raise TriggerError(f"{method} {url}: {problem}")
        if attempt < config.attempts:
            delay = _delay(config, attempt, answer)
            log.warning("%s %s: %s; attempt %d of %d, next in %.1f s", method, url, problem,
                        attempt, config.attempts, delay)
            sleep(delay)
    raise TriggerError(f"{method} {url}: {problem} (after {config.attempts} attempts)")


def start_job(config: TriggerConfig, session: requests.Session,
              sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """RunJob: start one execution of the job; Cloud Run's long-running operation."""
    return call(config, session, "POST", f"{config.run_url}/v2/{config.job_name}:run",
                sleep=sleep, json={})


def recent_executions(config: TriggerConfig, session: requests.Session, now: dt.datetime,
                      sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """The job's executions created in the last lookback_hours, newest first."""
    answer = call(config, session, "GET", f"{config.run_url}/v2/{config.job_name}/executions",
                  sleep=sleep, params={"pageSize": 20})
    since = now - dt.timedelta(hours=config.lookback_hours)
    found = [e for e in answer.get("executions", [])
             if e.get("createTime") and _time(e["createTime"]) >= since]
    return sorted(found, key=lambda e: _time(e["createTime"]), reverse=True)


def _time(raw: str) -> dt.datetime:
    # RFC 3339 with up to nanoseconds; Python parses microseconds at most.
    head, _, tail = raw.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(head + (f".{tail[:6]}" if tail else "")).replace(
        tzinfo=dt.timezone.utc)


def verdict(executions: list[dict[str, Any]], lookback_hours: float) -> str | None:
    """What is wrong with the newest run, in words; None when it finished well."""
    if not executions:
        return f"no execution of the job started in the last {lookback_hours:g} hours"
    newest = executions[0]
    name = newest.get("name", "?").rsplit("/", 1)[-1]
    started = newest.get("startTime") or newest.get("createTime")
    if not newest.get("completionTime"):
        return f"execution {name} (started {started}) has not finished by the deadline"
    tasks = int(newest.get("taskCount") or 1)
    if int(newest.get("succeededCount") or 0) < tasks:
        how = "was cancelled" if newest.get("cancelledCount") else "failed"
        return (f"execution {name} {how} (finished {newest['completionTime']}); its log: "
                f"{newest.get('logUri', 'n/a')}")
    return None


def _alert(subject: str, err: Exception | None, config: TriggerConfig | None, **context) -> None:
    where = {"job": config.job_name} if config else {}
    notify.alert(subject, error=err, context={**where, **context})


def start_daily_job(env: Mapping[str, str] | None = None,
                    session_factory: Callable[[TriggerConfig], requests.Session] = session_for,
                    sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The start timer's work: run the job once; alert and raise when it cannot be started."""
    config = None
    try:
        config = TriggerConfig.from_env(env)
        operation = start_job(config, session_factory(config), sleep=sleep)
    except TriggerError as err:
        _alert("daily job could not be started", err, config)
        raise
    execution = ((operation.get("metadata") or {}).get("name") or "").rsplit("/", 1)[-1]
    log.info("started %s: execution %s", config.job_name, execution or "(name not given)")
    return operation


def check_daily_job(env: Mapping[str, str] | None = None,
                    session_factory: Callable[[TriggerConfig], requests.Session] = session_for,
                    now: dt.datetime | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> str | None:
    """The deadline timer's work: alert when the newest run has not finished well. Returns the
    problem in words, or None."""
    config = None
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        config = TriggerConfig.from_env(env)
        problem = verdict(recent_executions(config, session_factory(config), now, sleep=sleep),
                          config.lookback_hours)
    except TriggerError as err:
        _alert("daily job state unknown at the deadline", err, config)
        raise
    if problem:
        _alert(f"daily job: {problem}", None, config, checked_at=now.isoformat(timespec="seconds"))
    else:
        log.info("%s: the newest execution finished well", config.job_name)
    return problem
