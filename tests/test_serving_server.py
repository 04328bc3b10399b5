"""The API's HTTP server (serving/server.py, granian) against a real Redis: several workers answer
with the hot path on, their metrics add up, a worker that dies is replaced without a person, the
longest valid request gets through, made-up methods and paths add no metrics series, no answer
redirects, an unexpected error's alert names the route and not the path, and what the server
answers itself, before the app, is what docs/serving.md says."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import signal
import socket
import time
import urllib.request

import psutil
import pytest

from dailyrec.publish.settings import PublishSettings
from dailyrec.publish import keys as K
from dailyrec.publish import writer as pub
from tests import servers
from tests import tiny_models as tm
from tests.mailbox import Mailbox, text_of

DAY = dt.date(2026, 11, 21)
SETTINGS = PublishSettings(top_n=10, filter_already_liked=True, batch_size=200, keep_versions=3,
                           similar_items=False, explain_items=0)


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, answer.read()


def _workers(server) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.proc.pid).children() if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


def _until(condition, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s")


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_counts_add_up(redis_server, redis_client, tmp_path):
    model = tm.bundle(seed=11)
    pub.publish(model, redis_client, SETTINGS, run_date=DAY, progress=False)
    server = servers.start_api({"REDIS_URL": redis_server.url}, tmp_path / "metrics", workers=2)
    try:
        first = _until(lambda: len(_workers(server)) == 2 and _workers(server))
        base = server.url
        for i in range(40):  # new connections: both workers take some
            status, body = _get(f"{base}/recommendations/user-{i % 20}?n=3")
            assert status == 200 and json.loads(body)["source"] == "personalized"

        os.kill(first[0].pid, signal.SIGKILL)
        replaced = _until(lambda: len(w := _workers(server)) == 2
                          and first[0].pid not in {p.pid for p in w} and w)
        assert server.proc.poll() is None
        for i in range(40):
            assert _get(f"{base}/recommendations/user-{i % 20}?n=3")[0] == 200
        assert {p.pid for p in replaced} != {p.pid for p in first}

        # The killed worker's counts are still in the sum: counters never go down.
        metrics = _get(f"{base}/metrics")[1].decode()
        assert 'dailyrec_recommendations_total{source="personalized"} 80.0' in metrics
    finally:
        server.stop()


def test_the_longest_valid_request_reaches_the_app(redis_server, redis_client, tmp_path):
    """50 recent ids of 128 characters: about 20 KB of request line (the app's own limits)."""
    model = tm.bundle(seed=11)
    pub.publish(model, redis_client, SETTINGS, run_date=DAY, progress=False)
    server = servers.start_api({"REDIS_URL": redis_server.url}, tmp_path / "metrics")
    try:
        recent = ",".join(f"{i:03d}" + "x" * 125 for i in range(50))
        status, body = _get(f"{server.url}/recommendations/someone-new?recent={recent}")
        assert status == 200 and json.loads(body)["recent"] == {"given": 50, "known": 0,
                                                                "unknown": 50}
    finally:
        server.stop()


def _exchange(port: int, method: str, target: str, headers: dict | None = None,
              connection: http.client.HTTPConnection | None = None):
    """(status, headers by lower-case name, body) for one request sent as given: any method, any
    target (absolute form too), any Host."""
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for name, value in {"Host": "127.0.0.1", **(headers or {})}.items():
        conn.putheader(name, value)
    conn.endheaders()
    answer = conn.getresponse()
    body = answer.read()
    if connection is None:
        conn.close()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, body


def _series(metrics: str, name: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of one metric's samples in a /metrics text."""
    return {tuple(re.findall(r'(\w+)="([^"]*)"', labels))
            for labels in re.findall(rf"^{name}\{{(.*)\}} ", metrics, flags=re.M)}


def test_made_up_methods_and_paths_add_no_metrics_series(redis_server, redis_client, tmp_path):
    """Every label value comes from a fixed set (the route templates, the known methods, HTTP
    statuses): 300 requests with methods and paths of their own are three series, not 300."""
    pub.publish(tm.bundle(seed=11), redis_client, SETTINGS, run_date=DAY, progress=False)
    server = servers.start_api({"REDIS_URL": redis_server.url}, tmp_path / "metrics")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for i in range(100):
            assert _exchange(server.port, f"ZZ{i}", f"/zz-path-{i}", connection=conn)[0] == 404
            assert _exchange(server.port, f"zz{i}", f"/recommendations/zz-user-{i}",
                             connection=conn)[0] == 405
            assert _exchange(server.port, "GET", f"/recommendations/zz-user-{i}?n=2",
                             connection=conn)[0] == 200
        conn.close()
        metrics = _get(f"{server.url}/metrics")[1].decode()
    finally:
        server.stop()
    assert _series(metrics, "dailyrec_http_requests_total") == {
        (("endpoint", "<unmatched>"), ("method", "other"), ("status", "404")),
        (("endpoint", "<unmatched>"), ("method", "other"), ("status", "405")),
        (("endpoint", "/recommendations/<user_id>"), ("method", "GET"), ("status", "200"))}
    assert _series(metrics, "dailyrec_http_request_duration_seconds_count") == {
        (("endpoint", "<unmatched>"),), (("endpoint", "/recommendations/<user_id>"),)}
    assert "zz" not in metrics.lower()  # no label of any metric holds what the client sent


def test_no_answer_redirects_to_the_requests_host(redis_server, redis_client, tmp_path):
    """Paths Werkzeug would normalise (an empty segment, which %2F decodes into) are a JSON 404,
    never a redirect built from the Host header; through the server, with the hot path on."""
    pub.publish(tm.bundle(seed=11), redis_client, SETTINGS, run_date=DAY, progress=False)
    server = servers.start_api({"REDIS_URL": redis_server.url}, tmp_path / "metrics")
    evil = {"Host": "evil.example"}
    try:
        for method, target in [("GET", "/items/..%2F/similar"),
                               ("GET", "/recommendations//user-3"),
                               ("GET", "/recommendations//user-3?n=3"),
                               ("GET", "/recommendations/%2Fuser-3"),
                               ("GET", "http://evil.example/recommendations//user-3"),
                               ("POST", "/recommendations//user-3"),
                               ("OPTIONS", "/items/a//similar"),
                               ("GET", "/healthz/")]:
            status, headers, body = _exchange(server.port, method, target, evil)
            assert status == 404, (method, target, status, body[:200])
            assert "location" not in headers and b"evil.example" not in body
            assert headers["content-type"] == "application/json"
            assert json.loads(body)["error"] == "not_found"
        # the hot path still answers its own
        assert _exchange(server.port, "GET", "/recommendations/user-3?n=3", evil)[0] == 200
    finally:
        server.stop()


def test_an_unexpected_errors_alert_names_the_route_not_the_path(redis_server, redis_client,
                                                                 tmp_path):
    """A 500 under the server (a user's stored record is corrupt) mails an alert naming the
    route's template and the request id; the path and query (a user id, item ids) stay out."""
    model = tm.bundle(seed=11)
    pub.publish(model, redis_client, SETTINGS, run_date=DAY, progress=False)
    version = redis_client.get("dailyrec:current").decode()
    n_buckets = int(redis_client.hget(f"dailyrec:v:{version}:meta", "buckets"))
    layout = K.Layout("dailyrec")
    redis_client.hset(layout.bucket(version, K.bucket_of("user-3", n_buckets)), "user-3",
                      b"corrupt")
    with Mailbox() as box:
        server = servers.start_api({"REDIS_URL": redis_server.url, **box.env()},
                                   tmp_path / "metrics")
        try:
            status, headers, body = _exchange(
                server.port, "GET", "/recommendations/user-3?n=3&recent=item-7",
                {"X-Request-ID": "req-alert-1"})
            messages = _until(lambda: box.messages)
        finally:
            server.stop()
    assert status == 500 and json.loads(body)["request_id"] == "req-alert-1"
    [msg] = messages
    text = text_of(msg)
    assert msg["Subject"].endswith(" on GET /recommendations/<user_id>"), msg["Subject"]
    assert "route: /recommendations/<user_id>" in text and "request_id: req-alert-1" in text
    assert "user-3" not in text and "item-7" not in text and "path:" not in text


def _raw(port: int, request: bytes) -> bytes:
    """What the server sends back for these bytes, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_what_the_server_answers_before_the_app(tmp_path):
    """granian's HTTP library (hyper) answers a request it cannot parse itself, before any
    Python runs: a bare status, no body, no X-Request-ID (docs/serving.md says so). Anything it
    can parse reaches the app, which answers JSON."""
    server = servers.start_api({}, tmp_path / "metrics")  # no Redis needed
    head = b"Host: x\r\nConnection: close\r\n"
    fields = [b"X-H%d: a\r\n" % i for i in range(99)]  # with the two above: 101 fields
    many = b"".join(fields)
    try:
        refused = {
            b"GARBAGE\r\n\r\n": b"400 Bad Request",
            b"GET /healthz HTTP/1.1\r\n" + head + b"Bad Header: x\r\n\r\n": b"400 Bad Request",
            b"GET /healthz HTTP/1.1\r\n" + head + many + b"\r\n":
                b"431 Request Header Fields Too Large",
            b"GET /healthz HTTP/1.1\r\n" + head + b"X-Big: " + b"a" * 600_000 + b"\r\n\r\n":
                b"431 Request Header Fields Too Large",
            b"GET /healthz?" + b"a" * (65_535 - 9) + b" HTTP/1.1\r\n" + head + b"\r\n":
                b"414 URI Too Long",  # a target of 65,535 bytes; one fewer gets through
        }
        for request, status in refused.items():
            answer = _raw(server.port, request)
            first, _, rest = answer.partition(b"\r\n")
            assert first == b"HTTP/1.1 " + status, (request[:60], answer[:200])
            assert b"content-length: 0\r\n" in rest and answer.endswith(b"\r\n\r\n")
            assert b"x-request-id" not in answer
        # one header field fewer reaches the app: JSON with a request id
        answer = _raw(server.port,
                      b"GET /nowhere HTTP/1.1\r\n" + head + b"".join(fields[1:]) + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 404 ") and b"x-request-id: " in answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "not_found"
    finally:
        server.stop()
