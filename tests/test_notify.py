"""Alert mails against a real SMTP server (aiosmtpd on loopback): content, scrubbing, throttling
across processes, and a dead SMTP server."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import html
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from dailyrec.ops import notify, scrub
from tests.mailbox import Mailbox, raw_of, text_of
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
    ("postgresql://app:pw-123456@db/prod", "pw-123456", "postgresql://app:[scrubbed]@db/prod"),
    ("https://ghp_abcdef123456@github.com/x.git", "ghp_abcdef123456",
     "https://[scrubbed]@github.com"),
    ('{"password": "p@ss w0rd!", "user": "bob"}', "p@ss w0rd!", '"user": "bob"'),
    ("client_secret=abcdef&grant=x", "abcdef", "grant=x"),
    ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "Authorization: Basic [scrubbed]"),
    ("AccountName=dev;AccountKey=Eby8vdM02xNO==;EndpointSuffix=x", "Eby8vdM02xNO",
     "AccountName=dev"),
    ("?sv=2024&sig=AbCdEf%2B123&se=2026", "AbCdEf%2B123", "sv=2024"),
])
def test_scrub_removes_credentials_and_keeps_the_rest(text, secret, kept):
    cleaned = scrub.scrub(text, secrets=[])
    assert secret not in cleaned
    assert kept in cleaned
    assert scrub.scrub(cleaned, secrets=[]) == cleaned  # mail is scrubbed again on its way out


def test_scrub_removes_values_of_secret_environment_variables():
    secrets = scrub.secret_values({
        "SMTP_PASSWORD": "plainvalue-1", "BROKER_URL": "amqp://u:brokerpw%21@mq/",
        "STRIPE_KEY": "sk_live_123456", "DB_PWD": "dbpw-7788",
        # not secrets, and common enough that scrubbing them would wreck every mail
        "HOME": "/root", "PWD": "/srv/dailyrec", "XDG_SESSION_CLASS": "user"})
    cleaned = scrub.scrub("got plainvalue-1, brokerpw!, sk_live_123456 and dbpw-7788 from user "
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
    from dailyrec.ops.throttle import Throttle

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
    assert "s3cret-db-pass" in scrub.secret_values() and "pass with space" in \
        scrub.secret_values()
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
    notify.wait_for_alerts()  # not sent later, into the next test's mailbox


def test_a_queued_alert_goes_where_it_was_raised(tmp_path, monkeypatch):
    """alert_later reads where an alert goes when it is raised, not when its thread sends it: an
    alert queued while an earlier one waits on a slow SMTP server is mailed to the server it was
    raised for, and never to the one set up after it (a later test's, in the suite)."""
    import socket

    slow = socket.create_server(("127.0.0.1", 0))  # accepts, never greets: the sender waits
    monkeypatch.setenv("DAILYREC_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("DAILYREC_SMTP_TLS", "none")
    monkeypatch.setenv("DAILYREC_ALERT_TO", "oncall@example.test")
    monkeypatch.setenv("DAILYREC_SMTP_TIMEOUT", "3")
    monkeypatch.setenv("DAILYREC_SMTP_PORT", str(slow.getsockname()[1]))
    try:
        with Mailbox() as raised_for, Mailbox() as later:
            assert notify.alert_later("first, to the slow server", throttle_minutes=0)
            for name, value in raised_for.env().items():
                monkeypatch.setenv(name, value)
            monkeypatch.setenv("DAILYREC_STATE_DIR", str(tmp_path / "raised"))
            assert notify.alert_later("second, raised for its mailbox", throttle_minutes=0)
            for name, value in later.env().items():  # a later test's SMTP server
                monkeypatch.setenv(name, value)
            monkeypatch.setenv("DAILYREC_STATE_DIR", str(tmp_path / "later"))
            notify.wait_for_alerts()
            assert [" ".join(m["Subject"].split()) for m in raised_for.messages] == [
                "[dailyrec] ALERT: second, raised for its mailbox"]
            assert later.messages == []
    finally:
        slow.close()
    assert (tmp_path / "raised" / "alerts.sqlite").exists()
    assert not (tmp_path / "later").exists()


# --- everything that leaves is scrubbed: every secret the process knows, however it is written --

def spellings(secret: str) -> set[str]:
    """The ways a secret gets written into a mail: as is, Python repr (either quote, or of its
    bytes), JSON, URL-encoded, HTML-escaped."""
    return {secret, repr(secret)[1:-1], repr(secret + '"')[1:-2], repr(secret.encode())[2:-1],
            json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
            quote(secret, safe=""), quote(secret), quote_plus(secret), quote(secret).lower(),
            html.escape(secret)}


def received_and_kept(monkeypatch, mailbox, send) -> dict[str, str]:
    """send() once to the mailbox, once with the SMTP server down: the mail received and the copy
    the outbox keeps, each raw and with every part decoded."""
    notify.wait_for_alerts()  # none queued earlier arrives in between
    before = len(mailbox.messages)
    send()
    assert len(mailbox.messages) == before + 1, "the mail did not arrive"
    received = mailbox.messages[-1]
    monkeypatch.setenv("DAILYREC_SMTP_PORT", str(free_port()))  # nothing listens there
    try:
        send()
    finally:
        monkeypatch.setenv("DAILYREC_SMTP_PORT", str(mailbox.port))
    [kept] = notify.outbox_dir().glob("*.eml")
    raw = kept.read_bytes()
    kept.unlink()  # not sent later by another test's mail
    return {"received mail": raw_of(received) + "\n" + text_of(received),
            "outbox file": raw.decode("utf-8", "replace") + "\n" + text_of(
                email.message_from_bytes(raw, policy=email.policy.default))}


def assert_scrubbed(copies: dict[str, str], *secrets: str, still_says: str = "sync failed"):
    for where, text in copies.items():
        for secret in secrets:
            for spelling in spellings(secret):
                assert spelling not in text, f"{spelling!r} (a spelling of a secret) in the {where}"
        assert "[scrubbed]" in text, f"the {where} does not say what was scrubbed"
        assert still_says in text, f"the {where} lost {still_says!r}"


def alert_carrying(text: str, spelled: bool = True):
    """An alert with text in its subject, its error (so in the traceback), its context (also
    inside a dict, so repr-escaped) and its log tail (there also in every spelling)."""
    tail = ["starting sync", f"body={json.dumps({'value': text})}"]
    if spelled:
        tail += [f"seen: {spelling}" for spelling in sorted(spellings(text))]

    def send():
        try:
            raise RuntimeError(f"upstream refused {text}")
        except RuntimeError as err:
            notify.alert(f"sync failed for {text}", error=err,
                         context={"detail": text, "request": {"header": text}},
                         log_tail="\n".join([*tail, "sync failed"]), throttle_minutes=0)
    return send


@pytest.mark.parametrize("name", [
    "ORDERS_DB_PASSWORD", "HMAC_SECRET", "GIT_TOKEN", "SIGNING_KEY", "HASH_SALT",
    "UPSTREAM_BASIC_AUTH", "SSO_COOKIE", "AZURE_CREDENTIAL", "JWT_PRIVATE_PEM", "FLASK_SESSION",
    "SERVICEBUS_CONNECTION_STRING", "DAILYREC_PII_SALT"])
def test_the_value_of_a_secret_named_variable_is_scrubbed_everywhere(
        alert_env, mailbox, monkeypatch, name):
    value = f"{name.lower()}-v4lu3-7f3a"
    monkeypatch.setenv(name, value)
    assert_scrubbed(received_and_kept(monkeypatch, mailbox, alert_carrying(value)), value)


def test_each_token_of_a_token_list_is_scrubbed(alert_env, mailbox, monkeypatch, tmp_path):
    tokens = ["tok-alpha-0123456789", "tok-bravo-0123456789", "tok-charlie-012345678",
              "tok-delta-0123456789", "tok-echo-01234567890"]
    monkeypatch.setenv("DAILYREC_API_TOKENS", f"{tokens[0]}, {tokens[1]}\n{tokens[2]}")
    monkeypatch.setenv("DAILYREC_API_METRICS_TOKENS", json.dumps([tokens[3]]))
    (tmp_path / "api-tokens").write_text(f"{tokens[4]}\n")  # a mounted secret
    monkeypatch.setenv("DAILYREC_API_TOKENS_FILE", str(tmp_path / "api-tokens"))
    for token in tokens:
        assert_scrubbed(received_and_kept(monkeypatch, mailbox, alert_carrying(token)), token)


def test_the_pii_salt_kept_in_the_state_directory_is_scrubbed(alert_env, mailbox, monkeypatch):
    from dailyrec.core import privacy

    monkeypatch.delenv(privacy.SALT_ENV, raising=False)  # the salt made once per machine
    salt = "9c1185a5c5e9fc54612808977ee8f548b2258d31"
    (notify.state_dir() / privacy.SALT_FILE).parent.mkdir(parents=True, exist_ok=True)
    (notify.state_dir() / privacy.SALT_FILE).write_text(salt + "\n")
    assert_scrubbed(received_and_kept(monkeypatch, mailbox, alert_carrying(salt)), salt)


def test_repr_json_url_and_html_spellings_of_a_known_secret_are_scrubbed(
        alert_env, mailbox, monkeypatch):
    password = "p\u00e4ss'w\"rd\\/+ & <x>"
    monkeypatch.setenv("ORDERS_DB_PASSWORD", password)
    assert_scrubbed(received_and_kept(monkeypatch, mailbox, alert_carrying(password)), password)


def test_base64_of_a_known_user_and_password_is_scrubbed(alert_env, mailbox, monkeypatch):
    monkeypatch.setenv("ORDERS_API_URL", "https://svc-orders:Orders-pw-2291@orders.internal/v1")
    basic = [base64.b64encode(b"svc-orders:Orders-pw-2291").decode(),
             base64.b64encode(f"alerts:{SMTP_PASSWORD}".encode()).decode()]
    send = alert_carrying(f"credentials {basic[0]} and {basic[1]} rejected", spelled=False)
    assert_scrubbed(received_and_kept(monkeypatch, mailbox, send), *basic)


PRIVATE_KEY = ("MIIEowIBAAKCAQEAx4UqGq0dLr4mX0b1n2d3K4l5M6n7O8p9Q0r1S2t3U4v5W6x7Y8z9\n"
               "a0B1c2D3e4F5g6H7i8J9k0L1m2N3o4P5q6R7s8T9u0V1w2X3y4Z5AbCdEfGhIjKlMn")


@pytest.mark.parametrize("text, secret, kept", [
    ("amqp://orders:Rabbit-pw-771@mq.internal:5672/", "Rabbit-pw-771",
     "amqp://orders:[scrubbed]@mq.internal:5672/"),
    ("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl",
     "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl", "Authorization: Bearer [scrubbed]"),
    ("headers {'Authorization': 'Basic b3JkZXJzOlJhYmJpdC1wdy03NzE=', 'Accept': 'text/csv'}",
     "b3JkZXJzOlJhYmJpdC1wdy03NzE", "'Accept': 'text/csv'"),
    ("Cookie: theme=dark; session=9f8e7d6c5b4a3f2e", "9f8e7d6c5b4a3f2e", "Cookie: [scrubbed]"),
    ("Set-Cookie: sid=Qm9vbGVhbjE2NzQ4; Path=/; HttpOnly", "Qm9vbGVhbjE2NzQ4",
     "Set-Cookie: [scrubbed]"),
    ("GET https://id.example.com/oauth/callback?code=4%2F0AbCdEf12345&state=xyz",
     "0AbCdEf12345", "state=xyz"),
    ("https://cdn.example.com/a.png?Expires=1700000000&Signature=Zm9vYmFyYmF6cXV4&Id=K2",
     "Zm9vYmFyYmF6cXV4", "Expires=1700000000"),
    ("https://maps.example.com/api?key=AIzaSyD-9tSrke72PouQMnMX&q=x", "AIzaSyD-9tSrke72PouQMnMX",
     "q=x"),
    ("https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdefghijklmnopqrstuvwx",
     "abcdefghijklmnopqrstuvwx", "https://hooks.slack.com/services/[scrubbed]"),
    ("https://discord.com/api/webhooks/1234567890123456789/AbCdEf-GhIjKl_MnOpQrStUvWxYz01234",
     "AbCdEf-GhIjKl_MnOpQrStUvWxYz01234", "discord.com/api/webhooks/1234567890123456789/"),
    ("https://outlook.office.com/webhook/0a1b2c3d-1111-2222-3333-444455556666@9f8e7d6c-aaaa-"
     "bbbb-cccc-ddddeeeeffff/IncomingWebhook/5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b/12345678",
     "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", "https://outlook.office.com/webhook/[scrubbed]"),
    ("POST https://alerts.example.com/api/webhooks/7Hq2LkP9xV4mN8bR3tY6wZ1c failed",
     "7Hq2LkP9xV4mN8bR3tY6wZ1c", "https://alerts.example.com/api/webhooks/[scrubbed] failed"),
    ("DefaultEndpointsProtocol=https;AccountName=dailyrecprod;AccountKey=Eby8vdM02xNOcqFlqUwJP"
     "LlmEtlCDXJ1OUzFT50uSRZ6IFsu/KBHBeksoGMGw==;EndpointSuffix=core.windows.net",
     "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsu/KBHBeksoGMGw", "AccountName=dailyrecprod"),
    ("BlobEndpoint=https://x.blob.core.windows.net/;SharedAccessSignature=sv=2022-11-02&ss=b&"
     "srt=co&sp=rl&se=2026-12-01T00:00:00Z&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D",
     "c2VjcmV0LXNpZ25hdHVyZQ", "BlobEndpoint=https://x.blob.core.windows.net/"),
    (f"-----BEGIN RSA PRIVATE KEY-----\n{PRIVATE_KEY}\n-----END RSA PRIVATE KEY-----",
     PRIVATE_KEY.split("\n")[1], "-----BEGIN RSA PRIVATE KEY-----"),
], ids=["url-userinfo", "bearer", "basic-in-a-dict", "cookie", "set-cookie", "query-code",
        "query-signature", "query-key", "slack-webhook", "discord-webhook", "teams-webhook",
        "generic-webhook", "azure-account-key", "azure-sas", "private-key-block"])
def test_credentials_unknown_to_the_process_are_scrubbed_by_their_form(
        alert_env, mailbox, monkeypatch, text, secret, kept):
    copies = received_and_kept(monkeypatch, mailbox, alert_carrying(text, spelled=False))
    for where, mailed in copies.items():
        assert secret not in mailed, f"{secret!r} in the {where}"
    assert_scrubbed(copies)
    assert kept in copies["received mail"]


def test_short_and_harmless_values_of_secret_named_variables_are_left_alone(
        alert_env, mailbox, monkeypatch):
    for name, value in {"TOKEN_TTL": "60", "APP_SECRET": "abc", "SESSION_TIMEOUT": "1800",
                        "DAILYREC_API_REQUIRE_TOKENS": "true", "GIT_AUTHOR_NAME": "dailyrec job",
                        "REDIS_KEY_PREFIX": "dailyrec-prod:", "XDG_SESSION_TYPE": "wayland",
                        "SSH_AUTH_SOCK": "/tmp/ssh-agent.sock"}.items():
        monkeypatch.setenv(name, value)
    words = ("token ttl 60 s, abc, 1800 s, tokens required (true), committed by dailyrec job, "
             "key dailyrec-prod:user:7, wayland, /tmp/ssh-agent.sock")
    try:
        raise RuntimeError(words)
    except RuntimeError as err:
        assert notify.alert("publish failed", error=err, log_tail=words, throttle_minutes=0)
    [msg] = mailbox.messages
    # The error line, the traceback's last line and the log tail, each whole.
    assert "[scrubbed]" not in text_of(msg) and text_of(msg).count(words) == 3


def test_the_daily_report_is_scrubbed_in_its_text_and_html(alert_env, mailbox, monkeypatch):
    from dailyrec.ops.report import Report

    password = "rep0rt-pw&<'\"x"
    monkeypatch.setenv("ORDERS_DB_PASSWORD", password)
    report = Report(day=dt.date(2026, 11, 21), subject=f"Daily recommendations: {password}",
                    text=f"Events fetched: 12; sync failed ({password})\n",
                    html_body=f"<p>Events fetched: 12; sync failed ({html.escape(password)})</p>"
                              f"<p>{json.dumps(password)}</p><img src=\"{{image_src}}\">",
                    chart_png=None, summary={}, chart_cid="chart@dailyrec")
    assert_scrubbed(received_and_kept(monkeypatch, mailbox, lambda: notify.send_report(report)),
                    password)


def test_a_mail_kept_unscrubbed_in_the_outbox_is_scrubbed_when_it_is_sent(
        alert_env, mailbox, monkeypatch):
    """Mail kept by an earlier version, before today's rules: scrubbed on its way out too."""
    monkeypatch.setenv("DAILYREC_PII_SALT", "salt-kept-in-the-outbox")
    kept = email.message.EmailMessage()
    kept["Subject"] = "[dailyrec] ALERT: hashing with salt-kept-in-the-outbox"
    kept["To"] = "oncall@example.test"
    kept.set_content("sync failed with salt-kept-in-the-outbox\n")
    notify.outbox_dir().mkdir(parents=True)
    (notify.outbox_dir() / "00000000000000000001-1.eml").write_bytes(bytes(kept))
    assert notify.alert("mlflow down", throttle_minutes=0) is True
    [_, delayed] = mailbox.messages
    assert delayed["Subject"].startswith("[delayed]")
    assert_scrubbed({"delayed mail": raw_of(delayed) + text_of(delayed)},
                    "salt-kept-in-the-outbox")


def test_the_pii_salt_and_each_api_token_are_scrubbed_from_an_api_alert(
        alert_env, mailbox, monkeypatch):
    from flask import request

    from serving.app import create_app
    from serving.auth import bearer_token

    salt, tokens = "pii-salt-5d41402abc4b2a76", ["a" * 16 + "-api-token", "b" * 16 + "-api-token"]
    monkeypatch.setenv("DAILYREC_PII_SALT", salt)
    monkeypatch.setenv("DAILYREC_API_TOKENS", ",".join(tokens))
    app = create_app({"ALERT_THROTTLE_MINUTES": 0})

    @app.get("/boom/<int:user>")
    def boom(user):
        token = bearer_token(request.headers["Authorization"])
        raise RuntimeError(f"sync failed: hashing user {user} under {salt} for {token}")

    def send():
        client = app.test_client()
        assert client.get("/boom/7", headers={"Authorization": f"Bearer {tokens[1]}"}).status_code \
            == 500
        notify.wait_for_alerts()

    assert_scrubbed(received_and_kept(monkeypatch, mailbox, send), salt, *tokens)
