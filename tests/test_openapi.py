"""The API contract, which clients code against: serving/openapi.json documents every route, the API
serves it at /openapi.json, and schemathesis fuzzes the real API server + Redis from it: no 500, and
no status, content type, header or body the document does not describe.

The fuzzing runs every phase schemathesis has for single requests: the document's examples, the
coverage phase (boundary values: 128- and 129-character ids, n=0, 51 recent items, every other
method on each path...) and random generation of valid and invalid input. It is deterministic and
bounded: a fixed seed, derandomized generation, no example database, MAX_EXAMPLES random cases per
operation, no deadline."""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from dailyrec.publish.settings import PublishSettings
from dailyrec.publish import keys as K
from dailyrec.publish import writer as pub
from serving.app import create_app
from tests import servers
from tests import tiny_models as tm

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "serving" / "openapi.json"
DAY = dt.date(2026, 11, 21)
SETTINGS = PublishSettings(top_n=10, filter_already_liked=True, batch_size=200, keep_versions=3,
                           similar_items=True, explain_items=5)
MAX_EXAMPLES = 60  # random cases per operation, on top of the examples and coverage phases
# Every built-in check (schemathesis.checks: not_a_server_error, status_code_conformance,
# content_type_conformance, response_headers_conformance, response_schema_conformance,
# negative_data_rejection, missing_required_header, ...) but these two:
NOT_CHECKED = [
    # Valid input must get a 2xx: but n's upper bound is the served version's top_n, which a
    # static document cannot state as a maximum, so a schema-valid n=11 is rightly a 400.
    positive_data_acceptance,
]


def fuzz_config() -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": 20261121,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True,
                       "database": "none"},
        "phases": {"stateful": {"enabled": False}},  # no links between operations to follow
    })


@pytest.fixture(scope="module")
def model():
    return tm.bundle(n_users=200, n_items=40, seed=3, per_user=4)


def _api_server(redis_url: str, prefix: str, metrics_dir: Path) -> servers.ApiServer:
    return servers.start_api({"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix,
                                   "OPENBLAS_NUM_THREADS": "1"}, metrics_dir)


def _clear(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.unlink(key)


@pytest.fixture(scope="module")
def published_api(redis_server, model, tmp_path_factory):
    """The API server serving a published model (similar items and histories on), under a key prefix of
    its own (other tests flush the shared Redis, but never while this module runs)."""
    prefix = "openapi-published"
    client = redis.Redis.from_url(redis_server.url)
    _clear(client, prefix)
    pub.publish(model, client, SETTINGS, run_date=DAY, layout=K.Layout(prefix), progress=False)
    server = _api_server(redis_server.url, prefix, tmp_path_factory.mktemp("metrics"))
    yield server.url
    server.stop()
    _clear(client, prefix)
    client.close()


@pytest.fixture(scope="module")
def unpublished_api(redis_server, tmp_path_factory):
    """The API server on a key prefix where nothing is published: /recommendations answers 503."""
    prefix = "openapi-nothing-published"
    client = redis.Redis.from_url(redis_server.url)
    _clear(client, prefix)
    client.close()
    server = _api_server(redis_server.url, prefix, tmp_path_factory.mktemp("metrics"))
    yield server.url
    server.stop()


def test_the_served_document_is_the_file_in_the_repo(published_api):
    with urllib.request.urlopen(f"{published_api}/openapi.json", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers.get_content_type() == "application/json"
        assert answer.read() == DOCUMENT.read_bytes()


def test_every_route_is_documented_and_every_documented_route_exists():
    """A new route without documentation (or a documented one the API lost) fails here."""
    document = json.loads(DOCUMENT.read_text())
    assert document["openapi"].startswith("3.") and document["info"]["version"]

    def resolve(node: dict) -> dict:
        while "$ref" in node:  # local references only: "#/components/..."
            target = document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0"})  # asks Redis nothing
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)  # <x>, <int:x> -> {x}
        routes.add(path)
        assert path in document["paths"], f"route {rule.rule} is missing from serving/openapi.json"
        methods = {m.lower() for m in rule.methods} - {"head", "options"}
        assert methods == set(document["paths"][path]), f"{rule.rule}: methods differ"
        for method in methods:
            params = [resolve(p) for p in document["paths"][path][method].get("parameters", [])]
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == set(rule.arguments), f"{method} {path}: path parameters differ"
    assert routes == set(document["paths"]), "the document has paths the API does not"


def test_the_document_describes_the_apis_limits():
    """The limits in the document are the app's defaults (serving/app.py DEFAULTS)."""
    from serving.app import DEFAULTS

    schemas = json.loads(DOCUMENT.read_text())["components"]["schemas"]
    params = json.loads(DOCUMENT.read_text())["components"]["parameters"]
    assert schemas["Id"]["maxLength"] == DEFAULTS["USER_ID_MAX_LENGTH"]
    assert schemas["Id"]["pattern"] == f"^{DEFAULTS['USER_ID_PATTERN']}$"
    assert params["Recent"]["schema"]["maxItems"] == DEFAULTS["MAX_RECENT_ITEMS"]


# Loaded from the file at collection time: schemathesis' fixture-based loader
# (schemathesis.pytest.from_fixture) fails under pytest 9 (it sets Node._nodeid, which pytest 9
# no longer has). The first test checks that the running server serves exactly this file.
SCHEMA = schemathesis.openapi.from_path(DOCUMENT, config=fuzz_config())


def test_the_document_is_valid_openapi():
    SCHEMA.validate()  # against the OpenAPI 3.0 meta-schema; raises what is wrong


@SCHEMA.parametrize()
def test_fuzzed_requests_get_documented_answers_and_never_a_500(case, published_api):
    case.call_and_validate(base_url=published_api, excluded_checks=NOT_CHECKED, timeout=10)


@SCHEMA.include(path_regex="^/(recommendations|items|readyz)").parametrize()
def test_with_nothing_published_answers_are_documented_503s(case, unpublished_api):
    response = case.call_and_validate(base_url=unpublished_api,
                                      excluded_checks=[not_a_server_error, *NOT_CHECKED],
                                      timeout=10)
    if case.method == "GET":  # the coverage phase also tries every other method: 405
        # Valid input: 503 (nothing published); a bad id: 400 or 404 before Redis is asked.
        assert response.status_code in (400, 404, 503)
        if response.status_code == 503:
            assert response.json()["error"] == "not_published"
            assert response.headers["retry-after"] == ["5"]


def _request(url: str, method: str = "GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method),
                                    timeout=10) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_a_405_names_the_allowed_methods(published_api):
    """Every method but GET and HEAD, OPTIONS included, on every documented path: the documented
    405 (JSON, and Allow naming the path's methods)."""
    document = json.loads(DOCUMENT.read_text())
    documented = document["components"]["responses"]["MethodNotAllowed"]
    assert set(documented["headers"]) == {"X-Request-ID", "Allow"}
    for path in document["paths"]:
        url = published_api + path.replace("{user_id}", "user-3").replace("{item_id}", "item-1")
        for method in ("OPTIONS", "POST", "DELETE"):
            status, headers, body = _request(url, method)
            assert status == 405 and json.loads(body)["error"] == "method_not_allowed", \
                (method, path, status, body[:200])
            assert headers.get_content_type() == "application/json"
            assert set(headers.get("Allow", "").split(", ")) == {"GET", "HEAD"}


def test_the_longest_valid_request_gets_a_documented_answer(published_api):
    user = "u" * 128
    recent = ",".join(f"{i:03d}" + "x" * 125 for i in range(50))  # 50 ids of 128 characters
    status, headers, body = _request(f"{published_api}/recommendations/{user}?recent={recent}")
    assert headers.get_content_type() == "application/json", body[:200]
    assert status == 200 and json.loads(body)["recent"]["given"] == 50
