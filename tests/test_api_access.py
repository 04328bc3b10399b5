"""Who may read the lists (they reveal what people looked at), and whether they are fresh (stale
lists must show): bearer tokens and the served version's age, on the Flask app and under its HTTP
server (granian), against a real Redis."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request

import pytest

from dailyrec.publish.settings import PublishSettings
from dailyrec.publish import writer as pub
from serving.app import create_app
from serving.auth import TokenError
from tests import servers
from tests import tiny_models as tm

TOKEN_A = "a" * 20 + "-rotating-out"
TOKEN_B = "b" * 20 + "-rotating-in"
SCRAPER = "s" * 24
TODAY = dt.datetime.now(dt.timezone.utc).date()


def settings(max_age_hours: float | None = 36) -> PublishSettings:
    return PublishSettings(top_n=5, filter_already_liked=True, batch_size=200, keep_versions=3,
                           similar_items=True, explain_items=0, max_age_hours=max_age_hours)


@pytest.fixture(scope="module")
def model():
    return tm.bundle(n_users=80, n_items=30, seed=4)


@pytest.fixture
def published(redis_client, model):
    pub.publish(model, redis_client, settings(), run_date=TODAY, progress=False)
    return model


def client(redis_server, **config):
    return create_app({"REDIS_URL": redis_server.url, **config}).test_client()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_with_tokens_set_the_lists_need_one_of_them(redis_server, published):
    api = client(redis_server, TOKENS=f"{TOKEN_A}, {TOKEN_B}")
    for path in ("/recommendations/user-3", "/items/item-1/similar"):
        missing = api.get(path)
        assert missing.status_code == 401 and missing.json["error"] == "unauthorized"
        assert missing.headers["WWW-Authenticate"].lower().startswith("bearer")
        assert "request_id" in missing.json
        wrong = api.get(path, headers=bearer("x" * 30))
        assert wrong.status_code == 401 and "invalid_token" in wrong.headers["WWW-Authenticate"]
        assert "x" * 30 not in wrong.get_data(as_text=True)  # a guess is never echoed
        basic = api.get(path, headers={"Authorization": f"Basic {TOKEN_A}"})
        assert basic.status_code == 401
        for token in (TOKEN_A, TOKEN_B):  # both, while a rotation is under way
            assert api.get(path, headers=bearer(token)).status_code == 200, (path, token)
    # Probes and the contract stay open; /metrics too, until it has tokens of its own.
    for path in ("/healthz", "/readyz", "/openapi.json", "/metrics"):
        assert api.get(path).status_code == 200, path
    metrics = api.get("/metrics").get_data(as_text=True)
    assert 'dailyrec_errors_total{kind="unauthorized"} 6.0' in metrics


def test_metrics_can_be_restricted_separately(redis_server, published):
    api = client(redis_server, TOKENS=TOKEN_A, METRICS_TOKENS=SCRAPER)
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers=bearer(TOKEN_A)).status_code == 401  # an API token is not
    assert api.get("/metrics", headers=bearer(SCRAPER)).status_code == 200
    assert api.get("/recommendations/user-3", headers=bearer(SCRAPER)).status_code == 401
    assert api.get("/healthz").status_code == 200


def test_without_tokens_the_api_is_open_and_says_so(redis_server, published, caplog):
    api = client(redis_server)
    assert api.get("/recommendations/user-3").status_code == 200
    assert "set DAILYREC_API_TOKENS in production" in caplog.text


def test_token_settings_that_cannot_be_used_stop_the_start(redis_server, tmp_path):
    with pytest.raises(TokenError, match="token 2 of 2 is shorter than 16"):
        create_app({"REDIS_URL": redis_server.url, "TOKENS": f"{TOKEN_A},short"})
    with pytest.raises(TokenError, match="REQUIRE_TOKENS is on but no token"):
        create_app({"REDIS_URL": redis_server.url, "REQUIRE_TOKENS": True})
    with pytest.raises(TokenError, match="cannot read"):
        create_app({"REDIS_URL": redis_server.url, "TOKENS_FILE": str(tmp_path / "none")})


def test_tokens_from_a_mounted_secret_file(redis_server, published, tmp_path):
    secret = tmp_path / "tokens"
    secret.write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
    api = client(redis_server, TOKENS_FILE=str(secret), REQUIRE_TOKENS=True)
    assert api.get("/recommendations/user-3").status_code == 401
    assert api.get("/recommendations/user-3", headers=bearer(TOKEN_B)).status_code == 200


def test_readyz_is_degraded_when_the_served_data_is_older_than_max_age(redis_server,
                                                                         redis_client, model):
    old = TODAY - dt.timedelta(days=3)
    pub.publish(model, redis_client, settings(36), run_date=old, progress=False)
    api = client(redis_server)
    ready = api.get("/readyz")
    assert ready.status_code == 200  # still served: stale lists beat none
    assert ready.json["status"] == "degraded" and ready.json["stale"] is True
    assert ready.json["run_date"] == old.isoformat() and ready.json["max_age_hours"] == 36
    assert 72 <= ready.json["age_hours"] < 96
    metrics = api.get("/metrics").get_data(as_text=True)
    assert "dailyrec_served_version_stale 1.0" in metrics
    assert "dailyrec_served_version_max_age_seconds 129600.0" in metrics
    age = float(next(line.split()[1] for line in metrics.splitlines()
                     if line.startswith("dailyrec_served_version_age_seconds ")))
    assert 72 * 3600 <= age < 96 * 3600

    pub.publish(model, redis_client, settings(36), run_date=TODAY, progress=False)
    fresh = api.get("/readyz").json
    assert fresh["status"] == "ready" and fresh["stale"] is False and fresh["age_hours"] < 24
    assert "dailyrec_served_version_stale 0.0" in api.get("/metrics").get_data(as_text=True)


def _get(url: str, token: str | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, headers=bearer(token) if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
            kind = answer.headers.get("Content-Type", "")
            # Header names in lower case (HTTP's are case-insensitive; granian sends them so).
            return answer.status, json.loads(body) if "json" in kind else {}, \
                {k.lower(): v for k, v in answer.headers.items()} | {"_text": body.decode()}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), {k.lower(): v for k, v in err.headers.items()}


def test_under_the_server_tokens_come_from_the_environment_and_age_is_exported(model, tmp_path):
    redis_server = servers.start_redis()
    api_server = servers.start_api({"REDIS_URL": redis_server.url,
                                       "DAILYREC_API_TOKENS": f"{TOKEN_A},{TOKEN_B}",
                                       "DAILYREC_API_METRICS_TOKENS": SCRAPER},
                                      tmp_path, workers=2, wait=False)
    base = api_server.url
    try:
        import redis

        stale_day = TODAY - dt.timedelta(days=2)
        pub.publish(model, redis.Redis.from_url(redis_server.url), settings(36),
                    run_date=stale_day, progress=False)
        api_server.wait()
        status, body, headers = _get(f"{base}/recommendations/user-3")
        assert status == 401 and body["error"] == "unauthorized"
        assert headers["www-authenticate"].lower().startswith("bearer")
        assert _get(f"{base}/recommendations/user-3", TOKEN_B)[0] == 200
        assert _get(f"{base}/recommendations/user-3", "not-a-token-at-all")[0] == 401
        status, body, _ = _get(f"{base}/readyz")
        assert status == 200 and body["status"] == "degraded"
        assert _get(f"{base}/metrics")[0] == 401
        status, _, headers = _get(f"{base}/metrics", SCRAPER)
        assert status == 200 and "dailyrec_served_version_stale 1.0" in headers["_text"]
    finally:
        api_server.stop()
        redis_server.stop()
