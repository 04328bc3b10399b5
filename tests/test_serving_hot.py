"""The hot path in front of Flask (serving/hot.py), against a real Redis: it answers known users'
lists and the fallback itself, with the same status, headers, bytes and metrics as the Flask
route; everything else (bad input, tokens, errors) still goes through Flask; and it stands down
when the app has a request hook it would bypass."""

from __future__ import annotations

import datetime as dt

import pytest

from dailyrec.publish.settings import PublishSettings
from dailyrec.publish import writer as pub
from serving.app import create_app
from tests import tiny_models as tm

DAY = dt.date(2026, 11, 21)
SETTINGS = PublishSettings(top_n=10, filter_already_liked=True, batch_size=200, keep_versions=3,
                           similar_items=True, explain_items=5)
TOKEN = "t" * 24
VIEW = "recommendations.recommendations"  # the Flask route's endpoint


@pytest.fixture(scope="module")
def model():
    return tm.bundle(seed=11)


@pytest.fixture
def published(redis_client, model):
    pub.publish(model, redis_client, SETTINGS, run_date=DAY, progress=False)
    return model


def _answer(response) -> tuple:
    headers = [(k, v) for k, v in response.headers if k != "X-Request-ID"]
    return response.status_code, headers, response.data


def _flask_route_fails(app, monkeypatch) -> None:
    """Any request the Flask route answers now ends in a 500: what still answers 200 was
    answered by the hot path."""
    def fail(**_):
        raise AssertionError("the Flask route was called")

    monkeypatch.setitem(app.view_functions, VIEW, fail)


@pytest.mark.parametrize("config", [{}, {"TOKENS": TOKEN}])
def test_the_hot_path_answers_as_the_flask_route_does(redis_server, published, monkeypatch,
                                                      config):
    headers = {"Authorization": f"Bearer {TOKEN}"} if config else {}
    users = [str(u) for u in published.user_ids[:25]] + ["somebody-new", "a.b@c+d:e_f-g"]
    paths = [f"/recommendations/{u}{q}" for u in users for q in ("", "?n=1", "?n=10", "?n=004")]
    flask = create_app({"REDIS_URL": redis_server.url, "HOT_PATH": False, **config}).test_client()
    expected = {p: _answer(flask.get(p, headers=headers)) for p in paths}

    app = create_app({"REDIS_URL": redis_server.url, **config})
    _flask_route_fails(app, monkeypatch)
    client = app.test_client()
    for path in paths:
        response = client.get(path, headers=headers)
        assert _answer(response) == expected[path], path
        assert len(response.headers["X-Request-ID"]) == 32
    given = client.get(paths[0], headers={**headers, "X-Request-ID": "req-7"})
    assert given.headers["X-Request-ID"] == "req-7"
    sources = {client.get(p, headers=headers).get_json()["source"] for p in paths}
    assert sources == {"personalized", "fallback"}

    # The same counts and latency samples as Flask's hooks record.
    text = app.test_client().get("/metrics", headers=headers).get_data(as_text=True)
    lines = set(text.splitlines())
    n = 2 * len(paths) + 1
    assert ('dailyrec_http_requests_total{endpoint="/recommendations/<user_id>",method="GET",'
            f'status="200"}} {float(n)}') in lines
    assert ('dailyrec_http_request_duration_seconds_count{endpoint="/recommendations/<user_id>"}'
            f' {float(n)}') in lines
    # the 2 unknown ids, 4 queries each, asked twice
    assert 'dailyrec_recommendations_total{source="fallback"} 16.0' in lines


@pytest.mark.parametrize("path, status", [
    ("/recommendations/user-3?n=0", 400), ("/recommendations/user-3?n=11", 400),
    ("/recommendations/user-3?n=x", 400), ("/recommendations/bad%20id", 400),
    ("/recommendations/" + "u" * 129, 400), ("/recommendations/user-3?recent=item-1", 200),
    ("/recommendations/user-3?explain=1", 200), ("/recommendations/user-3?n=2&n=3", 200),
    ("/recommendations/", 404), ("/recommendations/a/b", 404)])
def test_everything_else_goes_to_flask_unchanged(redis_server, published, monkeypatch, path,
                                                 status):
    flask = create_app({"REDIS_URL": redis_server.url, "HOT_PATH": False}).test_client()
    app = create_app({"REDIS_URL": redis_server.url})
    hot = app.test_client()
    rid = {"X-Request-ID": "req-1"}  # errors' bodies carry it
    expected = flask.get(path, headers=rid)
    assert expected.status_code == status
    assert _answer(hot.get(path, headers=rid)) == _answer(expected)
    _flask_route_fails(app, monkeypatch)
    if status != 404:  # it reached the route: Flask answered it
        assert hot.get(path).status_code == 500


def test_a_missing_or_wrong_token_is_flasks_401(redis_server, published, monkeypatch):
    app = create_app({"REDIS_URL": redis_server.url, "TOKENS": TOKEN})
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer " + "x" * 24},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}):
        answer = client.get("/recommendations/user-3", headers=headers)
        assert answer.status_code == 401 and answer.json["error"] == "unauthorized", headers
        assert answer.headers["WWW-Authenticate"].lower().startswith("bearer")


def test_a_failed_lookup_is_answered_by_flask_without_asking_redis_again(redis_server,
                                                                         redis_client):
    """Nothing published: the hot path's lookup raises NotPublished, the route raises it again
    (serving/errors.py answers 503), and Redis ran one lookup per request, not two."""
    app = create_app({"REDIS_URL": redis_server.url, "RETRY_AFTER": 7})
    client = app.test_client()
    client.get("/healthz")
    redis_client.config_resetstat()
    for _ in range(3):
        answer = client.get("/recommendations/user-3?n=5")
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "7"
        assert answer.json["error"] == "not_published" and "request_id" in answer.json
    stats = redis_client.info("commandstats")
    # With no version known yet a lookup is a GET of the current version's name (a Lua call
    # once one is known).
    lookups = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0)
                  for c in ("get", "hget", "evalsha", "eval", "evalsha_ro", "eval_ro"))
    assert lookups == 3, stats


def test_a_request_hook_it_would_bypass_turns_it_off(redis_server, published, monkeypatch,
                                                     caplog):
    app = create_app({"REDIS_URL": redis_server.url})
    seen = []

    @app.before_request
    def audit():
        seen.append(1)

    client = app.test_client()
    assert client.get("/recommendations/user-3").status_code == 200
    assert seen == [1]  # the hook ran: Flask answered
    assert "the hot path is off" in caplog.text and "audit" in caplog.text
    _flask_route_fails(app, monkeypatch)
    assert client.get("/recommendations/user-3").status_code == 500


def test_no_hook_can_be_added_once_it_has_answered(redis_server, published):
    """What Flask does after its first request: a hook added later would be bypassed."""
    app = create_app({"REDIS_URL": redis_server.url})
    assert app.test_client().get("/recommendations/user-3").status_code == 200
    with pytest.raises(AssertionError, match="first request"):
        app.before_request(lambda: None)


def test_an_unexpected_error_on_the_hot_path_is_flasks_500(redis_server, published, monkeypatch,
                                                           tmp_path):
    from serving import render

    monkeypatch.setenv("DAILYREC_STATE_DIR", str(tmp_path))  # the alert throttle's state

    def broken(*_):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(render, "list_body", broken)
    answer = create_app({"REDIS_URL": redis_server.url}).test_client().get(
        "/recommendations/user-3", headers={"X-Request-ID": "req-9"})
    assert answer.status_code == 500 and "secret" not in answer.get_data(as_text=True)
    assert answer.json == {"error": "internal_error", "request_id": "req-9",
                           "message": "unexpected error; quote request id req-9 when reporting it"}
