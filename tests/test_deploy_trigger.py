"""The Azure trigger (deploy/azure) against a loopback server that answers as the cloud APIs do.

FakeCloud plays, on one loopback port, every endpoint the Function talks to: the App Service
managed identity endpoint (Azure), Google's Security Token Service, the IAM Credentials API and the
Cloud Run Admin API v2. Each checks what a real one checks (the identity header, the token-exchange
grant and its audience, the bearer token of the step before) and answers in Google's formats,
errors included. Cloud Run bodies are parsed with the official client library's message types, so
a field Cloud Run does not know fails here. Alerts go to a real SMTP server (tests/mailbox.py).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import json
import subprocess
import sys
import threading
import time
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from google.cloud import run_v2

from tests.mailbox import Mailbox, text_of
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
AZURE_APP = ROOT / "deploy" / "azure"
sys.path.insert(0, str(AZURE_APP))

import dailyrec_trigger  # noqa: E402  (deploy/azure, as the Functions host imports it)

PROJECT, REGION, JOB = "shop-ml", "europe-west4", "dailyrec-daily"
JOB_NAME = f"projects/{PROJECT}/locations/{REGION}/jobs/{JOB}"
WIF_AUDIENCE = ("//iam.googleapis.com/projects/123456789/locations/global/"
                "workloadIdentityPools/azure/providers/dailyrec-function")
TRIGGER_ACCOUNT = f"dailyrec-trigger@{PROJECT}.iam.gserviceaccount.com"
ENTRA_AUDIENCE = "api://dailyrec-gcp-federation"
IDENTITY_HEADER = "identity-header-value"
AZURE_TOKEN = "azure-managed-identity-token"
FEDERATED_TOKEN = "google-federated-token"
ACCOUNT_TOKEN = "trigger-account-access-token"


def google_error(code: int, status: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}


class FakeCloud:
    """The cloud endpoints of the trigger on one loopback port; records every request."""

    def __init__(self):
        self.port = free_port()
        self.requests: list[dict] = []
        # Scripted answers to RunJob, in order: (status, body, seconds to wait, headers).
        self.run_answers: list[tuple[int, dict, float, dict]] = []
        self.executions: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's hook name
                fake.handle(self)

            def do_POST(self):  # noqa: N802
                fake.handle(self)

            def do_PATCH(self):  # noqa: N802
                fake.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeCloud":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def env(self, **overrides: str) -> dict[str, str]:
        """The Function's app settings, pointed at this server."""
        return {
            "DAILYREC_GCP_PROJECT": PROJECT, "DAILYREC_GCP_REGION": REGION,
            "DAILYREC_GCP_JOB": JOB, "DAILYREC_GCP_WIF_AUDIENCE": WIF_AUDIENCE,
            "DAILYREC_GCP_TRIGGER_SERVICE_ACCOUNT": TRIGGER_ACCOUNT,
            "DAILYREC_AZURE_TOKEN_AUDIENCE": ENTRA_AUDIENCE,
            "DAILYREC_AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
            "IDENTITY_ENDPOINT": f"{self.url}/msi/token", "IDENTITY_HEADER": IDENTITY_HEADER,
            "DAILYREC_GCP_STS_URL": f"{self.url}/v1/token",
            "DAILYREC_GCP_IAM_CREDENTIALS_URL": self.url, "DAILYREC_GCP_RUN_URL": self.url,
            "DAILYREC_TRIGGER_ATTEMPTS": "3", "DAILYREC_TRIGGER_BACKOFF_SECONDS": "0.05",
            "DAILYREC_TRIGGER_BACKOFF_CAP_SECONDS": "5", "DAILYREC_TRIGGER_TIMEOUT_SECONDS": "5",
            "DAILYREC_JOB_LOOKBACK_HOURS": "12",
            **overrides,
        }

    def calls(self, kind: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["kind"] == kind]

    # ------------------------------------------------------------------ the endpoints

    def handle(self, http: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(http.path)
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length) if length else b""
        auth = http.headers.get("Authorization", "")
        path, query = parts.path, dict(urllib.parse.parse_qsl(parts.query))
        if path == "/msi/token" and http.command == "GET":
            kind, answer = "identity", self.identity(http, query)
        elif path == "/v1/token" and http.command == "POST":
            kind, answer = "sts", self.sts(dict(urllib.parse.parse_qsl(raw.decode())))
        elif path.endswith(":generateAccessToken") and http.command == "POST":
            kind, answer = "iam", self.impersonate(path, auth, json.loads(raw or b"{}"))
        elif path == f"/v2/{JOB_NAME}:run" and http.command == "POST":
            kind, answer = "run", self.run(auth)
        elif path == f"/v2/{JOB_NAME}/executions" and http.command == "GET":
            kind, answer = "executions", self.list_executions(auth)
        elif path == f"/v2/{JOB_NAME}" and http.command == "PATCH":
            kind, answer = "update", self.update_job(auth, query, raw)
        else:
            kind, answer = "unknown", (404, google_error(404, "NOT_FOUND", f"no {path}"), 0, {})
        with self.lock:
            self.requests.append({"kind": kind, "method": http.command, "path": path,
                                  "query": query, "auth": auth, "body": raw})
        status, body, wait, headers = answer
        if wait:
            time.sleep(wait)
        payload = json.dumps(body).encode()
        try:
            http.send_response(status)
            http.send_header("Content-Type", "application/json; charset=UTF-8")
            http.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                http.send_header(name, value)
            http.end_headers()
            http.wfile.write(payload)
        except OSError:
            pass  # the client gave up waiting (the time-out test)

    def identity(self, http, query):
        if http.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            return 401, {"error": "invalid_request", "error_description": "bad header"}, 0, {}
        if query.get("resource") != ENTRA_AUDIENCE or query.get("api-version") != "2019-08-01":
            return 400, {"error": "invalid_resource", "error_description": str(query)}, 0, {}
        return 200, {"access_token": AZURE_TOKEN, "token_type": "Bearer",
                     "expires_on": str(int(time.time()) + 3600),
                     "resource": ENTRA_AUDIENCE}, 0, {}

    def sts(self, form):
        expected = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "audience": WIF_AUDIENCE, "subject_token": AZURE_TOKEN,
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                    "requested_token_type": "urn:ietf:params:oauth:token-type:access_token"}
        wrong = {k: form.get(k) for k, v in expected.items() if form.get(k) != v}
        if wrong:
            return 400, {"error": "invalid_grant",
                         "error_description": f"rejected token exchange: {wrong}"}, 0, {}
        return 200, {"access_token": FEDERATED_TOKEN, "token_type": "Bearer",
                     "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                     "expires_in": 3600}, 0, {}

    def impersonate(self, path, auth, body):
        if auth != f"Bearer {FEDERATED_TOKEN}":
            return 401, google_error(401, "UNAUTHENTICATED", "bad federated token"), 0, {}
        if f"/serviceAccounts/{TRIGGER_ACCOUNT}:" not in path:
            return 403, google_error(403, "PERMISSION_DENIED", "not this account"), 0, {}
        if "https://www.googleapis.com/auth/cloud-platform" not in body.get("scope", []):
            return 400, google_error(400, "INVALID_ARGUMENT", "scope"), 0, {}
        expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
        return 200, {"accessToken": ACCOUNT_TOKEN,
                     "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}, 0, {}

    def run(self, auth):
        if auth != f"Bearer {ACCOUNT_TOKEN}":
            return 401, google_error(401, "UNAUTHENTICATED", "bad access token"), 0, {}
        with self.lock:
            if self.run_answers:
                return self.run_answers.pop(0)
        operation = {"name": f"projects/{PROJECT}/locations/{REGION}/operations/op-1",
                     "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Execution",
                                  "name": f"{JOB_NAME}/executions/{JOB}-x7k2p"}}
        return 200, operation, 0, {}

    def list_executions(self, auth):
        if auth != f"Bearer {ACCOUNT_TOKEN}":
            return 401, google_error(401, "UNAUTHENTICATED", "bad access token"), 0, {}
        return 200, {"executions": self.executions}, 0, {}

    def update_job(self, auth, query, raw):
        if auth != "Bearer deployer-token":
            return 401, google_error(401, "UNAUTHENTICATED", "bad access token"), 0, {}
        try:
            job = run_v2.Job.from_json(raw.decode())  # unknown fields raise, as Cloud Run's do
        except Exception as err:  # noqa: BLE001 - any parse failure is the API's 400
            return 400, google_error(400, "INVALID_ARGUMENT", str(err)[:300]), 0, {}
        if job.name != JOB_NAME or query.get("allowMissing") != "true":
            return 400, google_error(400, "INVALID_ARGUMENT", "name or allowMissing"), 0, {}
        return 200, {"name": f"projects/{PROJECT}/locations/{REGION}/operations/op-2",
                     "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Job",
                                  "name": JOB_NAME}}, 0, {}


@pytest.fixture
def cloud():
    with FakeCloud() as server:
        yield server


@pytest.fixture
def mailbox():
    with Mailbox() as box:
        yield box


@pytest.fixture
def settings(cloud, mailbox, monkeypatch):
    """The app settings of a deployed Function, as environment variables."""
    env = {**cloud.env(), **mailbox.env()}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@functools.cache
def timer_functions():
    """The Function app's timer functions by name, as the Functions host indexes them (once: the
    app refuses a second indexing, as it would refuse two functions of one name)."""
    module = importlib.import_module("function_app")
    return {f.get_function_name(): f for f in module.app.get_functions()}


def fire(name: str):
    from azure.functions.timer import TimerRequest  # the host's concrete request

    return timer_functions()[name].get_user_function()(TimerRequest(past_due=False))


def alert_texts(mailbox) -> list[str]:
    return [text_of(m) for m in mailbox.messages]


def assert_no_token_in(texts: list[str]) -> None:
    for text in texts:
        for token in (AZURE_TOKEN, FEDERATED_TOKEN, ACCOUNT_TOKEN, IDENTITY_HEADER):
            assert token not in text


# --------------------------------------------------------------------------- the app's shape

def test_the_app_has_two_timers_on_their_schedule_settings():
    functions = timer_functions()
    assert set(functions) == {"start_daily_job", "check_daily_job"}
    schedules = {name: f.get_bindings_dict()["bindings"][0] for name, f in functions.items()}
    assert schedules["start_daily_job"]["type"] == "timerTrigger"
    assert schedules["start_daily_job"]["schedule"] == "%DAILYREC_START_SCHEDULE%"
    assert schedules["check_daily_job"]["schedule"] == "%DAILYREC_DEADLINE_SCHEDULE%"
    assert not any(s["runOnStartup"] for s in schedules.values())


# --------------------------------------------------------------------------- starting the job

def test_start_federates_the_managed_identity_and_runs_the_job(cloud, mailbox, settings):
    fire("start_daily_job")
    kinds = [r["kind"] for r in cloud.requests]
    assert kinds == ["identity", "sts", "iam", "run"]
    identity = cloud.calls("identity")[0]
    assert identity["query"]["client_id"] == settings["DAILYREC_AZURE_CLIENT_ID"]
    run = cloud.calls("run")[0]
    assert run["auth"] == f"Bearer {ACCOUNT_TOKEN}"
    run_v2.RunJobRequest(name=JOB_NAME, **json.loads(run["body"]))  # a body RunJob accepts
    assert mailbox.messages == []


def test_start_retries_429_and_5xx_with_backoff(cloud, mailbox, settings):
    cloud.run_answers = [
        (429, google_error(429, "RESOURCE_EXHAUSTED", "quota"), 0, {"Retry-After": "1"}),
        (503, google_error(503, "UNAVAILABLE", "try again"), 0, {}),
    ]
    slept: list[float] = []
    operation = dailyrec_trigger.start_daily_job(sleep=slept.append)
    assert operation["metadata"]["name"].endswith("/executions/dailyrec-daily-x7k2p")
    assert len(cloud.calls("run")) == 3
    # Retry-After (1 s) outweighs the first backoff (0.05 s); the second doubles the base.
    assert slept == [1.0, 0.1]
    assert mailbox.messages == []


def test_start_gives_up_after_persistent_500_and_mails(cloud, mailbox, settings):
    cloud.run_answers = [(500, google_error(500, "INTERNAL", "boom"), 0, {})] * 3
    with pytest.raises(dailyrec_trigger.TriggerError, match="HTTP 500.*after 3 attempts"):
        fire("start_daily_job")
    assert len(cloud.calls("run")) == 3
    texts = alert_texts(mailbox)
    assert len(texts) == 1
    assert "daily job could not be started" in mailbox.messages[0]["Subject"]
    assert "HTTP 500" in texts[0] and JOB_NAME in texts[0]
    assert_no_token_in(texts)


def test_start_times_out_retries_then_mails(cloud, mailbox, settings, monkeypatch):
    monkeypatch.setenv("DAILYREC_TRIGGER_TIMEOUT_SECONDS", "0.3")
    monkeypatch.setenv("DAILYREC_TRIGGER_ATTEMPTS", "2")
    cloud.run_answers = [(200, {}, 5.0, {})] * 2  # answers too late
    started = time.monotonic()
    with pytest.raises(dailyrec_trigger.TriggerError, match="Timeout"):
        fire("start_daily_job")
    assert time.monotonic() - started < 4.0  # it gave up waiting; it did not sit out the 5 s
    assert len(cloud.calls("run")) == 2
    assert "daily job could not be started" in mailbox.messages[0]["Subject"]
    assert "Timeout" in alert_texts(mailbox)[0]


def test_start_does_not_retry_a_refusal(cloud, mailbox, settings):
    cloud.run_answers = [(403, google_error(403, "PERMISSION_DENIED", "run.jobs.run denied"),
                          0, {})]
    with pytest.raises(dailyrec_trigger.TriggerError, match="HTTP 403"):
        fire("start_daily_job")
    assert len(cloud.calls("run")) == 1
    assert "run.jobs.run denied" in alert_texts(mailbox)[0]


def test_a_federation_google_refuses_is_alerted(cloud, mailbox, settings, monkeypatch):
    monkeypatch.setenv("DAILYREC_GCP_WIF_AUDIENCE", WIF_AUDIENCE.replace("azure", "other-pool"))
    with pytest.raises(dailyrec_trigger.TriggerError, match="authentication failed"):
        fire("start_daily_job")
    assert cloud.calls("run") == []
    assert "rejected token exchange" in alert_texts(mailbox)[0]
    assert_no_token_in(alert_texts(mailbox))


def test_a_missing_app_setting_is_alerted_by_name(cloud, mailbox, settings, monkeypatch):
    monkeypatch.delenv("DAILYREC_GCP_TRIGGER_SERVICE_ACCOUNT")
    with pytest.raises(dailyrec_trigger.TriggerError, match="DAILYREC_GCP_TRIGGER_SERVICE_ACCOUNT"):
        fire("start_daily_job")
    assert cloud.requests == []
    assert "app setting DAILYREC_GCP_TRIGGER_SERVICE_ACCOUNT is not set" in alert_texts(mailbox)[0]


# --------------------------------------------------------------------------- the deadline check

NOW = dt.datetime(2026, 12, 1, 4, 15, tzinfo=dt.timezone.utc)


def execution(name: str, created: str, completed: str | None = None, succeeded: int = 0,
              failed: int = 0) -> dict:
    record = {"name": f"{JOB_NAME}/executions/{name}", "createTime": created,
              "startTime": created, "taskCount": 1, "succeededCount": succeeded,
              "failedCount": failed,
              "logUri": f"https://console.cloud.google.com/logs/viewer?execution={name}"}
    if completed:
        record["completionTime"] = completed
    run_v2.Execution.from_json(json.dumps(record))  # the fields Cloud Run's Execution has
    return record


@pytest.mark.parametrize("executions, problem", [
    ([execution("d-2", "2026-12-01T02:15:03.120473Z", "2026-12-01T02:31:40Z", succeeded=1),
      execution("d-1", "2026-11-30T02:15:02Z", "2026-11-30T02:30:11Z", failed=1)], None),
    ([execution("d-2", "2026-12-01T02:15:03Z")], "has not finished by the deadline"),
    ([execution("d-2", "2026-12-01T02:15:03Z", "2026-12-01T02:19:00Z", failed=1)], "failed"),
    ([execution("d-1", "2026-11-30T02:15:02Z", "2026-11-30T02:30:11Z", succeeded=1)],
     "no execution of the job started in the last 12 hours"),
], ids=["finished-well", "still-running", "failed", "never-started"])
def test_deadline_check(cloud, mailbox, settings, executions, problem):
    cloud.executions = executions
    found = dailyrec_trigger.check_daily_job(now=NOW)
    if problem is None:
        assert found is None and mailbox.messages == []
        return
    assert problem in found
    assert len(mailbox.messages) == 1
    assert problem in mailbox.messages[0]["Subject"]
    assert [r["kind"] for r in cloud.requests][-1] == "executions"


def test_deadline_check_through_the_timer(cloud, mailbox, settings):
    cloud.executions = [execution("d-2", f"{dt.date.today():%Y-%m-%d}T00:00:01Z")]
    cloud.executions[0]["createTime"] = (
        dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fire("check_daily_job")
    assert "has not finished by the deadline" in mailbox.messages[0]["Subject"]


# --------------------------------------------------------------------------- the deploy tool

def test_deploy_tool_sends_a_job_cloud_run_accepts(cloud, monkeypatch):
    from tools import deploy

    monkeypatch.setenv("DAILYREC_GCP_RUN_URL", cloud.url)
    env = {"DAILYREC_GCP_PROJECT": PROJECT, "DAILYREC_GCP_REGION": REGION,
           "DAILYREC_TRAIN_IMAGE": f"{REGION}-docker.pkg.dev/{PROJECT}/dailyrec/train:abc123",
           "DAILYREC_GIT_URL": "https://git.example.test/shop/dailyrec.git",
           "MLFLOW_TRACKING_URI": "https://mlflow-abc.a.run.app",
           "REDIS_URL": "rediss://shop.westeurope.redis.azure.net:10000/0",
           "DAILYREC_GCP_RUN_URL": cloud.url}
    session = requests.Session()
    session.headers["Authorization"] = "Bearer deployer-token"
    operation = deploy.send(deploy.job_request(env), session)
    assert operation["metadata"]["name"] == JOB_NAME
    update = cloud.calls("update")[0]
    assert update["query"] == {"allowMissing": "true"}
    # The fake refuses what Cloud Run refuses: prove it, with one misspelt field.
    bad = deploy.job_request(env)
    bad["body"]["template"]["template"]["timeoutSeconds"] = 3600
    with pytest.raises(RuntimeError, match="400"):
        deploy.send(bad, session)


# --------------------------------------------------------------------------- the package

@pytest.mark.slow
def test_packaged_app_runs_with_only_its_requirements(cloud, mailbox, tmp_path):
    """The zip `python -m tools.deploy azure-package` builds, installed as the Functions build
    installs it (requirements.txt, nothing else), starts the job."""
    from tools import deploy

    package = tmp_path / "trigger.zip"
    names = deploy.azure_package(package)
    assert {"function_app.py", "dailyrec_trigger.py", "host.json", "requirements.txt",
            "dailyrec/ops/notify.py"} <= set(names)
    app_dir = tmp_path / "app"
    zipfile.ZipFile(package).extractall(app_dir)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "--disable-pip-version-check", "-q"]
    # --no-deps: a dependency requirements.txt forgot is then missing, and pip check says so.
    subprocess.run([*pip, "install", "--no-deps", "-r", str(app_dir / "requirements.txt")],
                   check=True)
    subprocess.run([*pip, "check"], check=True)
    script = ("import function_app\nfrom azure.functions.timer import TimerRequest\n"
              "f = {f.get_function_name(): f for f in function_app.app.get_functions()}\n"
              "f['start_daily_job'].get_user_function()(TimerRequest(past_due=True))\n"
              "print('started')\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **cloud.env(), **mailbox.env(),
           "DAILYREC_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", script], cwd=app_dir, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "started" in proc.stdout
    assert [r["kind"] for r in cloud.requests] == ["identity", "sts", "iam", "run"]
