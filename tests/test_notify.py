"""Alert mails against a real SMTP server (aiosmtpd on loopback): content, scrubbing, throttling
across processes, and a dead SMTP server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dailyrec.ops import notify
from tests.mailbox import Mailbox, text_of
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

DB_PASSWORD = "s3cr3t-db-pass"
REDIS_PASSWORD = "r3dis-pw-77"
SMTP_PASSWORD = "smtp-pass-9911"
API_TOKEN = "tok_live_4f9a8b7c6d5e"
HEADER_TOKEN = "eyJhbGciOiJIUzI1NiJ9.payload.sig"
SECRETS = (DB_PASSWORD, REDIS_PASSWORD, SMTP_PASSWORD, API_TOKEN, HEADER_TOKEN, "hunter2hunter")


@pytest.fixture
def mailbox():
    with Mailbox(user="alerts", password=SMTP_PASSWORD) as box:
        yield box


@pytest.fixture
def alert_env(tmp_path, monkeypatch, mailbox):
    """The process as a deployment would have it: SMTP settings and secrets in the environment,
    throttle state in a private directory."""
    monkeypatch.chdir(tmp_path)
    env = {
        **mailbox.env(),
        "DAILYREC_STATE_DIR": str(tmp_path / "state"),
        "DAILYREC_SOURCE_URL": f"postgresql+psycopg://app:{DB_PASSWORD}@db.internal:5432/prod",
        "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        "PAYMENTS_API_TOKEN": API_TOKEN,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def fail_to_connect(url: str) -> None:
    raise ConnectionError(f"could not connect to {url}: server rejected {DB_PASSWORD!r}")


def test_alert_mails_exception_traceback_and_context_without_secrets(alert_env, mailbox):
    try:
        fail_to_connect(alert_env["DAILYREC_SOURCE_URL"])
    except ConnectionError as err:
        sent = notify.alert("fetch_delta cannot reach the source database", error=err,
                            context={"request_id": "req-42", "path": "/recommendations/7",
                                     "authorization": f"Bearer {HEADER_TOKEN}",
                                     "env_token": API_TOKEN},
                            log_tail=f"charging with {API_TOKEN}\npassword=hunter2hunter\nfailed")
    assert sent is True
    [msg] = mailbox.messages
    body = text_of(msg)
    assert msg["Subject"] == "[dailyrec] ALERT: fetch_delta cannot reach the source database"
    assert mailbox.envelopes[0][1] == ["oncall@example.test"]
    assert "Traceback (most recent call last)" in body
    assert "in fail_to_connect" in body  # the frame that raised
    assert "ConnectionError: could not connect to" in body
    assert "request_id: req-42" in body and "path: /recommendations/7" in body
    assert "Last 3 lines of output" in body and "failed" in body
    assert "db.internal:5432/prod" in body  # the URL stays useful, minus its password
    for secret in SECRETS:
        assert secret not in body, f"secret {secret!r} leaked into the alert"


@pytest.mark.parametrize("text, secret, kept", [
    ("postgresql://app:pw-123456@db/prod", "pw-123456", "postgresql://app:***@db/prod"),
    ("https://ghp_abcdef123456@github.com/x.git", "ghp_abcdef123456", "https://***@github.com"),
    ('{"password": "p@ss w0rd!", "user": "bob"}', "p@ss w0rd!", '"user": "bob"'),
    ("client_secret=abcdef&grant=x", "abcdef", "grant=x"),
    ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "Authorization: ***"),
    ("AccountName=dev;AccountKey=Eby8vdM02xNO==;EndpointSuffix=x", "Eby8vdM02xNO",
     "AccountName=dev"),
    ("?sv=2024&sig=AbCdEf%2B123&se=2026", "AbCdEf%2B123", "sv=2024"),
])
def test_scrub_removes_credentials_and_keeps_the_rest(text, secret, kept):
    cleaned = notify.scrub(text, secrets=[])
    assert secret not in cleaned
    assert kept in cleaned


def test_scrub_removes_values_of_secret_environment_variables():
    secrets = notify.secret_values({
        "SMTP_PASSWORD": "plainvalue-1", "BROKER_URL": "amqp://u:brokerpw%21@mq/",
        "STRIPE_KEY": "sk_live_123456", "DB_PWD": "dbpw-7788",
        # not secrets, and common enough that scrubbing them would wreck every mail
        "HOME": "/root", "PWD": "/srv/dailyrec", "XDG_SESSION_CLASS": "user"})
    cleaned = notify.scrub("got plainvalue-1, brokerpw!, sk_live_123456 and dbpw-7788 from user "
                           "/root in /srv/dailyrec/stages/train.py", secrets)
    for secret in ("plainvalue-1", "brokerpw!", "sk_live_123456", "dbpw-7788"):
        assert secret not in cleaned
    assert "from user /root in /srv/dailyrec/stages/train.py" in cleaned


STORM = textwrap.dedent("""
    import sys
    from dailyrec.ops import notify

    def recommend(user):
        raise KeyError(f"user {user} has no factors")

    first, count, minutes = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    for user in range(first, first + count):
        try:
            recommend(user)
        except KeyError as err:
            notify.alert(f"GET /recommendations/{user} failed", error=err,
                         context={"request_id": f"req-{user}"}, throttle_minutes=minutes)
""")


def test_a_storm_of_one_error_across_processes_sends_one_mail_then_counts_it(
        alert_env, mailbox, tmp_path):
    script = tmp_path / "storm.py"
    script.write_text(STORM)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), str(1000 * p), "5", "60"],
                              env=env,
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True) for p in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert len(mailbox.messages) == 1, [m["Subject"] for m in mailbox.messages]

    # A different error in the same window is not held back by the first one's throttle.
    try:
        fail_to_connect("sqlite:///x.db")
    except ConnectionError as err:
        assert notify.alert("another problem", error=err, throttle_minutes=60) is True
    assert len(mailbox.messages) == 2

    # Once the window has passed (here: throttling off), the next mail says what was held back.
    subprocess.run([sys.executable, str(script), "9000", "1", "0"], env=env, cwd=tmp_path,
                   check=True)
    assert len(mailbox.messages) == 3
    assert "19 more occurrence(s) of this alert" in text_of(mailbox.messages[2])


RACE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dailyrec.ops.notify import Throttle

    path, start = Path(sys.argv[1]), float(sys.argv[2])
    while time.time() < start:  # every process asks at the same instant
        pass
    print(int(Throttle(path, 60).admit("the same error")[0]))
""")


def test_the_shared_throttle_holds_when_processes_open_a_fresh_state_file_at_once(tmp_path):
    """Eight processes opening a new state file at the same instant: exactly one may mail.
    (Switching a fresh file to WAL needs an exclusive lock that SQLite's busy timeout does not
    wait for; a process that lost that race used to throttle only itself, and mailed too.)"""
    import time

    script = tmp_path / "race.py"
    script.write_text(RACE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(6):
        state = tmp_path / f"state{round_}" / "alerts.sqlite"
        start = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, str(script), str(state), str(start)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(8)]
        results = [p.communicate(timeout=60) for p in procs]
        assert sum(int(out) for out, _ in results) == 1, [err for _, err in results if err]
        assert not any("unusable" in err for _, err in results)


def test_scrubbing_covers_pass_variables_spaced_url_passwords_and_subject_newlines(
        alert_env, mailbox, monkeypatch):
    monkeypatch.setenv("DB_PASS", "s3cret-db-pass")
    monkeypatch.setenv("CACHE_URL", "redis://:pass with space@cache:6379/0")
    assert "s3cret-db-pass" in notify.secret_values() and "pass with space" in \
        notify.secret_values()
    try:
        raise ConnectionError("login s3cret-db-pass refused; cache pass with space down")
    except ConnectionError as err:
        assert notify.alert("two lines\r\nin a subject", error=err, throttle_minutes=0) is True
    [msg] = mailbox.messages
    assert msg["Subject"] == "[dailyrec] ALERT: two lines in a subject"
    assert "s3cret-db-pass" not in text_of(msg) and "pass with space" not in text_of(msg)


def test_smtp_down_is_logged_never_raised_and_the_mail_is_sent_when_it_is_back(
        alert_env, monkeypatch, tmp_path, caplog):
    port = free_port()  # nothing listens here
    monkeypatch.setenv("DAILYREC_SMTP_PORT", str(port))
    caplog.set_level(logging.ERROR, logger="dailyrec.ops.notify")
    try:
        fail_to_connect("sqlite:///x.db")
    except ConnectionError as err:
        assert notify.alert("source down", error=err, throttle_minutes=0) is False
        assert notify.alert("redis down", throttle_minutes=0) is False
        assert "could not send mail" in caplog.text
        assert SMTP_PASSWORD not in caplog.text
        kept = sorted(notify.outbox_dir().glob("*.eml"))
        assert len(kept) == 2 and all(p.stat().st_mode & 0o077 == 0 for p in kept)
        assert not any(SMTP_PASSWORD.encode() in p.read_bytes() for p in kept)
        with Mailbox(port=port) as box:  # the SMTP server is back
            monkeypatch.delenv("DAILYREC_SMTP_USER")
            assert notify.alert("mlflow down", throttle_minutes=0) is True
            subjects = [m["Subject"] for m in box.messages]
            # The new mail first, then the kept ones, oldest first, marked delayed.
            assert subjects == ["[dailyrec] ALERT: mlflow down",
                                "[delayed] [dailyrec] ALERT: source down",
                                "[delayed] [dailyrec] ALERT: redis down"]
            assert box.envelopes[1][1] == ["oncall@example.test"]
            assert "ConnectionError" in text_of(box.messages[1])
        assert not list(notify.outbox_dir().glob("*.eml"))


def test_the_outbox_is_bounded(alert_env, monkeypatch):
    monkeypatch.setenv("DAILYREC_SMTP_PORT", str(free_port()))
    monkeypatch.setattr(notify, "OUTBOX_LIMIT", 3)
    for k in range(5):
        assert notify.alert(f"fault {k}", throttle_minutes=0) is False
    kept = sorted(notify.outbox_dir().glob("*.eml"))
    assert [notify.email.message_from_bytes(p.read_bytes())["Subject"] for p in kept] == [
        f"[dailyrec] ALERT: fault {k}" for k in (2, 3, 4)]


def test_without_smtp_settings_alerts_are_only_logged(alert_env, monkeypatch, caplog):
    monkeypatch.delenv("DAILYREC_SMTP_HOST")
    caplog.set_level(logging.WARNING, logger="dailyrec.ops.notify")
    assert notify.alert("nobody to tell") is False
    assert "alert not mailed" in caplog.text


def test_bad_tls_mode_is_a_clear_config_error():
    from dailyrec.core.errors import ConfigError

    with pytest.raises(ConfigError, match="DAILYREC_SMTP_TLS='tls13'"):
        notify.SmtpSettings.from_env({"DAILYREC_SMTP_HOST": "mail", "DAILYREC_SMTP_TLS": "tls13"})


# --- the API's global error handler (serving/errors.py) -----------------------------------------

def api_with_a_failing_route():
    from serving.app import create_app

    app = create_app()

    @app.get("/boom/<int:user>")
    def boom(user):
        raise RuntimeError(f"lost connection to redis://:{REDIS_PASSWORD}@cache:6379 for {user}")

    return app.test_client()


def test_an_exception_in_a_route_mails_one_alert_with_traceback_and_no_secret(alert_env, mailbox):
    client = api_with_a_failing_route()
    response = client.get("/boom/7", headers={"Authorization": f"Bearer {HEADER_TOKEN}"})
    assert response.status_code == 500
    rid = response.get_json()["request_id"]
    notify.wait_for_alerts()  # mailed off the request thread
    [msg] = mailbox.messages
    body = text_of(msg)
    assert "RuntimeError on GET /boom/<int:user>" in msg["Subject"]
    assert "Traceback (most recent call last)" in body and "in boom" in body
    assert f"request_id: {rid}" in body and "route: /boom/<int:user>" in body
    assert "path:" not in body  # the path holds a user id (PII)
    for secret in SECRETS:
        assert secret not in body

    # A storm of the same error: every request still gets its 500, no more mail.
    for user in range(8, 40):
        assert client.get(f"/boom/{user}").status_code == 500
    notify.wait_for_alerts()
    assert len(mailbox.messages) == 1


def test_smtp_down_does_not_break_the_api(alert_env, monkeypatch):
    monkeypatch.setenv("DAILYREC_SMTP_PORT", str(free_port()))  # nothing listens there
    client = api_with_a_failing_route()
    response = client.get("/boom/1")
    assert response.status_code == 500
    assert response.get_json()["error"] == "internal_error"
    # And the API goes on answering.
    assert client.get("/boom/2").status_code == 500
