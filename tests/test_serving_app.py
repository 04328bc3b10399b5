"""The Flask API against a real Redis: answers, every bad input, errors as JSON, metrics, password
and TLS connections, and Redis stopped and restarted under the running API server."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import urllib.error
import urllib.request
import json
from pathlib import Path

import numpy as np
import pytest

from dailyrec.model.recommender import ALSRecommender, PopularRecommender
from dailyrec.publish.settings import PublishSettings
from dailyrec.publish import connection
from dailyrec.publish import writer as pub
from serving.app import create_app
from tests import servers
from tests import tiny_models as tm

DAY = dt.date(2026, 11, 21)
SETTINGS = PublishSettings(top_n=10, filter_already_liked=True, batch_size=200, keep_versions=3,
                           similar_items=True, explain_items=5)


@pytest.fixture(scope="module")
def model():
    return tm.bundle(seed=11)


@pytest.fixture
def app(redis_server, redis_client, model):
    pub.publish(model, redis_client, SETTINGS, run_date=DAY, progress=False)
    return create_app({"REDIS_URL": redis_server.url})


def expected_items(model, user: int, n: int) -> list[str]:
    positions, _ = ALSRecommender.from_bundle(model).recommend([user], None, SETTINGS.top_n, True)
    return [model.item_ids[p] for p in positions[0][:n]]


def test_known_user_gets_personal_list_unknown_the_fallback(app, model, redis_client):
    client = app.test_client()
    version = redis_client.get("dailyrec:current").decode()

    known = client.get("/recommendations/user-3?n=5")
    assert known.status_code == 200 and known.mimetype == "application/json"
    body = known.get_json()
    assert list(body) == ["user_id", "items", "model_version", "source"]
    assert body["user_id"] == "user-3" and body["source"] == "personalized"
    assert body["model_version"] == version
    assert [i["id"] for i in body["items"]] == expected_items(model, 3, 5)
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert len(known.headers["X-Request-ID"]) == 32

    everything = client.get("/recommendations/user-3").get_json()  # n defaults to top_n
    assert [i["id"] for i in everything["items"]] == expected_items(model, 3, 10)

    unknown = client.get("/recommendations/somebody-new?n=3")
    assert unknown.status_code == 200
    body = unknown.get_json()
    assert body["source"] == "fallback" and body["model_version"] == version
    fallback, _ = PopularRecommender(model.user_items).top_list(3)
    assert [i["id"] for i in body["items"]] == [model.item_ids[p] for p in fallback[0]]

    assert client.get("/recommendations/" + "u" * 128).status_code == 200  # longest allowed
    assert client.get("/healthz").get_json() == {"status": "alive"}
    ready = client.get("/readyz").get_json()
    assert {k: ready[k] for k in ("status", "model_version", "kind", "run_date", "stale")} == {
        "status": "ready", "model_version": version, "kind": "model", "run_date": str(DAY),
        "stale": False}  # published without a max age: none is judged


@pytest.mark.parametrize("path, message", [
    ("/recommendations/" + "u" * 129, "user_id is 129 characters long; at most 128 are allowed"),
    ("/recommendations/user%203", "user_id may contain only"),
    ("/recommendations/user%00", "user_id may contain only"),
    ("/recommendations/us%C3%A9r", "user_id may contain only"),
    ("/recommendations/user;drop", "user_id may contain only"),
    ("/recommendations/user-3?n=0", "n must be between 1 and 10, got 0"),
    ("/recommendations/user-3?n=11", "n must be between 1 and 10, got 11"),
    ("/recommendations/user-3?n=-1", "n must be a whole number, got '-1'"),
    ("/recommendations/user-3?n=abc", "n must be a whole number, got 'abc'"),
    ("/recommendations/user-3?n=2.5", "n must be a whole number"),
    ("/recommendations/user-3?n=", "n must be a whole number, got ''"),
    ("/recommendations/user-3?n=99999999999", "n must be a whole number"),
])
def test_bad_input_is_a_400_saying_what_is_wrong(app, path, message):
    answer = app.test_client().get(path)
    assert answer.status_code == 400
    body = answer.get_json()
    assert body["error"] == "bad_request" and message in body["message"]
    assert body["request_id"] == answer.headers["X-Request-ID"]


@pytest.mark.parametrize("method, path, status, error", [
    ("GET", "/nothing-here", 404, "not_found"),
    ("GET", "/recommendations/", 404, "not_found"),
    ("GET", "/recommendations/a/b", 404, "not_found"),
    ("POST", "/recommendations/user-3", 405, "method_not_allowed"),
    ("DELETE", "/healthz", 405, "method_not_allowed"),
    ("OPTIONS", "/healthz", 405, "method_not_allowed"),
    ("OPTIONS", "/recommendations/user-3", 405, "method_not_allowed"),
    ("OPTIONS", "/items/item-1/similar", 405, "method_not_allowed"),
])
def test_unknown_routes_and_methods_answer_json(app, method, path, status, error):
    answer = app.test_client().open(path, method=method)
    assert answer.status_code == status and answer.get_json()["error"] == error
    if status == 405:  # the methods the path takes (serving/openapi.json)
        assert set(answer.headers["Allow"].split(", ")) == {"GET", "HEAD"}


def test_no_routing_redirect_whatever_the_host(app):
    """Werkzeug would answer these with a 308 to the request's Host: a rule ending in a slash
    asked without it, and an empty path segment. Both are a JSON 404, for any rule added later
    too."""
    app.add_url_rule("/folder/", "folder", lambda: "a page")
    client = app.test_client()
    for path in ("/folder", "/recommendations//user-3", "/items/a//similar", "/healthz/"):
        answer = client.get(path, base_url="http://evil.example")
        assert answer.status_code == 404 and "Location" not in answer.headers, path
        assert answer.get_json()["error"] == "not_found"


def test_nothing_published_is_a_503_with_retry_after(redis_server, redis_client):
    client = create_app({"REDIS_URL": redis_server.url, "RETRY_AFTER": 7}).test_client()
    for path in ("/recommendations/user-3", "/readyz"):
        answer = client.get(path)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "7"
        assert answer.get_json()["error"] == "not_published"
    assert client.get("/healthz").status_code == 200


def test_unexpected_error_is_a_500_with_request_id_and_an_alert(app, monkeypatch, tmp_path):
    """The alert goes to a real SMTP server, off the request thread, keyed by the route."""
    from dailyrec.ops import notify
    from tests.mailbox import Mailbox, text_of

    @app.get("/explode/<user>")
    def explode(user):
        raise RuntimeError("secret detail from deep inside")

    with Mailbox() as box:
        for name, value in {**box.env(), "DAILYREC_STATE_DIR": str(tmp_path / "state")}.items():
            monkeypatch.setenv(name, value)
        answer = app.test_client().get("/explode/alice?email=alice@example.com",
                                       headers={"X-Request-ID": "req-42"})
        for user in ("bob", "carol", "dave", "erin", "frank"):  # a storm over many users
            assert app.test_client().get(f"/explode/{user}").status_code == 500
        notify.wait_for_alerts()
        messages = box.messages
    assert answer.status_code == 500
    body = answer.get_json()
    assert body == {"error": "internal_error", "request_id": "req-42",
                    "message": "unexpected error; quote request id req-42 when reporting it"}
    assert "secret" not in answer.get_data(as_text=True)
    [msg] = messages  # one mail for the storm: same route, exception and place in the code
    assert msg["Subject"] == "[dailyrec] ALERT: dailyrec API: RuntimeError on GET /explode/<user>"
    # the route's template and the request id; never the path or query, which hold user ids
    assert "request_id: req-42" in text_of(msg) and "route: /explode/<user>" in text_of(msg)
    assert "alice" not in text_of(msg)


LIST_QUERIES = ("", "?n=1", "?n=7", "?explain=0", "?recent=", "?n=3&explain=no")


def _without_request_id(answer) -> list:
    return [(k, v) for k, v in answer.headers if k != "X-Request-ID"]


def test_the_hot_paths_bodies_are_the_general_paths_byte_for_byte(app, model, monkeypatch):
    """A list without ?recent= or ?explain= is joined from pre-encoded pieces (serving/render.py):
    the same status, headers and bytes as the general path's jsonify, known users and not."""
    from serving import render

    client = app.test_client()
    users = [str(u) for u in model.user_ids[:40]] + ["somebody-new", "a.b@c+d:e_f-g"]
    paths = [f"/recommendations/{u}{q}" for u in users for q in LIST_QUERIES]
    fast = {path: client.get(path) for path in paths}
    monkeypatch.setattr(render, "compatible", lambda app: False)  # the general path
    for path in paths:
        general = client.get(path)
        assert fast[path].status_code == general.status_code == 200, path
        assert fast[path].data == general.data, path
        assert _without_request_id(fast[path]) == _without_request_id(general), path
    assert {fast[p].get_json()["source"] for p in paths} == {"personalized", "fallback"}


def test_scores_are_encoded_as_json_encodes_round_score_6():
    import math
    import random
    import struct

    from serving import render

    rng = random.Random(3)
    f32 = [struct.unpack("<f", struct.pack("<f", rng.uniform(-1, 1) * rng.choice(
        [1e-9, 5e-7, 1e-5, 1e-4, 1e-2, 1, 1e3, 1e8, 1e9, 1e12])))[0] for _ in range(20_000)]
    edges = [0.0, -0.0, 1e-4, 9.9999e-5, 5e-7, 1.5e-6, 0.5, 0.125, 999999999.9, 1e9, math.nan,
             math.inf, -math.inf]
    for scores in [f32[i:i + 20] for i in range(0, len(f32), 20)] + [edges]:
        for variant in (scores, [abs(s) for s in scores], [abs(s) + 1e-4 for s in scores],
                        [-abs(s) - 1e-4 for s in scores]):
            assert render._numbers(variant) == [json.dumps(round(s, 6)) for s in variant]


def test_a_version_switch_is_seen_by_the_next_request(app, model, redis_client, monkeypatch):
    """The pre-encoded item ids belong to one version: the next version (other item ids at the
    same positions) is served, with its own ids, from the very next request."""
    import dataclasses

    from serving import render

    client = app.test_client()
    before = client.get("/recommendations/user-3?n=5").get_json()
    other = dataclasses.replace(tm.bundle(seed=12),
                                item_ids=np.array([f"thing-{j}" for j in range(60)]))
    pub.publish(other, redis_client, SETTINGS, run_date=DAY, progress=False)
    version = redis_client.get("dailyrec:current").decode()
    assert version != before["model_version"]
    for path in ("/recommendations/user-3?n=5", "/recommendations/somebody-new?n=4"):
        after = client.get(path)
        body = after.get_json()
        assert body["model_version"] == version
        assert all(i["id"].startswith("thing-") for i in body["items"])
        monkeypatch.setattr(render, "compatible", lambda app: False)
        assert client.get(path).data == after.data
        monkeypatch.undo()
    assert [i["id"] for i in client.get("/recommendations/user-3?n=5").get_json()["items"]] == \
        expected_items(other, 3, 5)


def test_lookups_survive_a_flushed_script_and_threads_give_their_connection_back(app,
                                                                                   redis_client):
    import gc
    import threading

    client = app.test_client()
    assert client.get("/recommendations/user-3").status_code == 200
    redis_client.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    assert client.get("/recommendations/user-3").get_json()["source"] == "personalized"

    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
        app.test_client().get("/recommendations/user-4").status_code)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gc.collect()
    assert answers == [200] * 8
    pool = app.extensions["dailyrec.publish"].client.connection_pool
    assert len(pool._in_use_connections) <= 1  # only this thread's, kept for its next request


def test_metrics_count_requests_latency_fallbacks_and_errors(app):
    client = app.test_client()
    client.get("/recommendations/user-3")
    client.get("/recommendations/user-4")
    client.get("/recommendations/nobody")
    client.get("/recommendations/user-3?n=0")
    client.get("/missing")
    text = client.get("/metrics").get_data(as_text=True)
    lines = set(text.splitlines())
    assert ('dailyrec_http_requests_total{endpoint="/recommendations/<user_id>",method="GET",'
            'status="200"} 3.0') in lines
    assert ('dailyrec_http_requests_total{endpoint="/recommendations/<user_id>",method="GET",'
            'status="400"} 1.0') in lines
    assert ('dailyrec_http_request_duration_seconds_count{endpoint="/recommendations/<user_id>"}'
            ' 4.0') in lines
    assert 'dailyrec_recommendations_total{source="personalized"} 2.0' in lines
    assert 'dailyrec_recommendations_total{source="fallback"} 1.0' in lines
    assert f"dailyrec_fallback_share {1 / 3}" in lines
    assert 'dailyrec_errors_total{kind="bad_request"} 1.0' in lines
    assert 'dailyrec_errors_total{kind="not_found"} 1.0' in lines


def test_password_protected_redis(model):
    server = servers.start_redis(password="s3cret")
    try:
        plain_url = f"redis://127.0.0.1:{server.port}/0"
        writer = connection.client({"REDIS_URL": plain_url, "REDIS_PASSWORD": "s3cret"})
        pub.publish(model, writer, SETTINGS, run_date=DAY, progress=False)
        good = create_app({"REDIS_URL": plain_url, "REDIS_PASSWORD": "s3cret"}).test_client()
        assert good.get("/recommendations/user-3").status_code == 200
        wrong = create_app({"REDIS_URL": plain_url, "REDIS_PASSWORD": "nope"}).test_client()
        answer = wrong.get("/recommendations/user-3")
        assert answer.status_code == 503 and "nope" not in answer.get_data(as_text=True)
    finally:
        server.stop()


def test_tls_redis_with_rediss_url(model, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = servers.free_port()
    with servers.log_output("redis-tls") as log:
        proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port),
                                 "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
                                 "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                                 "--tls-auth-clients", "no", "--save", "", "--appendonly", "no"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        servers.wait_for_port(port, proc=proc)
        settings = {"REDIS_URL": f"rediss://127.0.0.1:{port}/0", "REDIS_TLS_CA_CERTS": str(cert)}
        writer = connection.client(settings)
        assert type(writer.connection_pool.get_connection()).__name__ == "SSLConnection"
        pub.publish(model, writer, SETTINGS, run_date=DAY, progress=False)
        answer = create_app(settings).test_client().get("/recommendations/user-3?n=2")
        assert answer.status_code == 200 and answer.get_json()["source"] == "personalized"
        # without the CA the server's certificate is refused: 503, not a hang or a 500
        untrusted = create_app({"REDIS_URL": settings["REDIS_URL"]}).test_client()
        assert untrusted.get("/recommendations/user-3").status_code == 503
    finally:
        proc.terminate()
        proc.wait(10)


def _get(url: str) -> tuple[int, dict, dict]:
    """(status, JSON body, headers: looked up by name in any case, as HTTP's are)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read()), answer.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def test_redis_stopped_and_restarted_under_the_running_api_server(model, tmp_path):
    redis_server = servers.start_redis()
    api_server = servers.start_api({"REDIS_URL": redis_server.url}, tmp_path, wait=False)
    base = api_server.url
    try:
        pub.publish(model, connection.client({"REDIS_URL": redis_server.url}), SETTINGS,
                    run_date=DAY, progress=False)
        api_server.wait()
        status, body, _ = _get(f"{base}/recommendations/user-3?n=3")
        assert status == 200 and body["source"] == "personalized"

        redis_server.stop()
        for _ in range(3):  # every request while Redis is down: a quick 503, never a hang
            status, body, headers = _get(f"{base}/recommendations/user-3?n=3")
            assert status == 503 and body["error"] == "redis_unavailable"
            assert headers["Retry-After"] == "5" and "Traceback" not in json.dumps(body)
        assert _get(f"{base}/readyz")[0] == 503
        assert _get(f"{base}/healthz")[0] == 200
        assert api_server.proc.poll() is None

        redis_server.start()  # same port, empty: publish again, as a scheduler rerun would
        assert _get(f"{base}/recommendations/user-3")[1]["error"] == "not_published"
        pub.publish(model, connection.client({"REDIS_URL": redis_server.url}), SETTINGS,
                    run_date=DAY, progress=False)
        status, body, _ = _get(f"{base}/recommendations/user-3?n=3")
        assert status == 200 and body["source"] == "personalized"
        assert _get(f"{base}/readyz")[0] == 200

        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert 'dailyrec_errors_total{kind="redis_unavailable"} 4.0' in metrics
        assert 'dailyrec_recommendations_total{source="personalized"} 2.0' in metrics
    finally:
        api_server.stop()
        redis_server.stop()


def test_make_serve_bg_prints_a_curl_call_and_make_stop_stops_it(model, redis_server,
                                                                 redis_client, tmp_path):
    root = Path(__file__).resolve().parents[1]
    for name in ("Makefile", "dailyrec", "serving", "stages", ".venv"):  # the project, seen from a scratch dir
        (tmp_path / name).symlink_to(root / name)
    pub.publish(model, redis_client, SETTINGS, run_date=DAY, progress=False)
    bind = f"127.0.0.1:{servers.free_port()}"
    env = {**os.environ, "REDIS_URL": redis_server.url}
    make = ["make", "--no-print-directory", "-o", "install", f"BIND={bind}"]
    try:
        started = subprocess.run([*make, "serve-bg"], cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        lines = started.stdout.strip().splitlines()
        assert lines[-2].startswith(f"$ curl -s 'http://{bind}/recommendations/user-")
        answer = json.loads(lines[-1])
        assert answer["source"] == "personalized" and len(answer["items"]) == 5
        pid = int((tmp_path / ".serve.pid").read_text())
        os.kill(pid, 0)  # running in the background after make returned
    finally:
        stopped = subprocess.run([*make, "stop"], cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not (tmp_path / ".serve.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
