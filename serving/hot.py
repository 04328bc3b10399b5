"""The hot path, in front of Flask: most requests are a known user's stored list (or the fallback)
with no query but ?n=, and for those Flask's own request handling (context, routing, hooks,
Response) cost about as much as the work itself (docs/benchmarks.md, bench/api_profile.py).

    install(app)    wraps app.wsgi_app; create_app calls it last (off with HOT_PATH = False)

HotPath answers GET /recommendations/<user_id> and GET /recommendations/<user_id>?n=<digits>
itself when the answer is a 200: the same status, headers and body bytes as the route in
serving/api.py (render.list_body), the same Prometheus counts and latency, the same request id
rules and token check. Everything else goes to the Flask app unchanged, which answers it as it
answers every request: other routes and queries, a bad id or n, a missing or wrong token, and
every error (serving/errors.py stays the one place errors become responses). A lookup that
fails (Redis down, nothing published), or any other exception on the way, is handed over with the
request, and the route raises it instead of asking Redis a second time.

It runs only while the app has exactly the request hooks it stands in for (the request id and
timer, the token check, the metrics): a hook added later would be bypassed, so with any other
hook the whole app goes through Flask and the log says why. It checks on the first request, after
which Flask refuses new hooks (as it does once it has handled a request itself).
"""

from __future__ import annotations

import re
import time

from flask import Flask

from serving import api, auth, render
from serving.telemetry import request_id_from

ENDPOINT = api.LIST_ROUTE  # the metrics' endpoint label, as Flask's hooks record it
PREFIX = ENDPOINT.removesuffix("<user_id>")
_N_ONLY = re.compile("n=" + api._DIGITS.pattern)  # the only query the hot path takes


def install(app: Flask) -> None:
    if app.config.get("HOT_PATH", True):
        app.wsgi_app = HotPath(app, app.wsgi_app)


def unknown_hooks(app: Flask) -> list[str]:
    """The app's request hooks other than the ones HotPath stands in for."""
    telemetry = app.extensions["dailyrec.telemetry"]
    expected = {
        "before_request_funcs": {None: [telemetry._start], api.bp.name: [auth.require_api]},
        "after_request_funcs": {None: [telemetry._finish]},
    }
    found = []
    for name in ("before_request_funcs", "after_request_funcs", "teardown_request_funcs",
                 "url_value_preprocessors"):
        hooks = {scope: funcs for scope, funcs in getattr(app, name).items() if funcs}
        if hooks != expected.get(name, {}):
            found.append(f"{name}: {hooks}")
    return found


class HotPath:
    def __init__(self, app: Flask, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app  # Flask's, for everything the hot path does not answer
        self.active: bool | None = None  # decided on the first request
        self.store = app.extensions["dailyrec.publish"]
        self.telemetry = app.extensions["dailyrec.telemetry"]
        self.tokens = app.extensions["dailyrec.auth"]["api"]

    def _decide(self) -> bool:
        unknown = unknown_hooks(self.app)
        if unknown:
            self.app.logger.warning("the hot path is off: the app has request hooks it would "
                                    "bypass (%s)", "; ".join(unknown))
        self.active = not unknown
        # From here on Flask refuses new hooks, as it does once it has handled a request itself:
        # requests the hot path answers never reach it, so it would not know.
        self.app._got_first_request = True
        return self.active

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        path = environ.get("PATH_INFO", "")
        if not path.startswith(PREFIX) or environ.get("REQUEST_METHOD") != "GET":
            return self.wsgi_app(environ, start_response)
        user_id = path[len(PREFIX):]
        query = environ.get("QUERY_STRING", "")
        if query and not _N_ONLY.fullmatch(query):
            return self.wsgi_app(environ, start_response)
        n = int(query[2:]) if query else None
        cfg = self.app.config
        if (n == 0 or not (self.active if self.active is not None else self._decide())
                or len(user_id) > cfg["USER_ID_MAX_LENGTH"]
                or not cfg["USER_ID_PATTERN"].fullmatch(user_id)
                or (self.tokens.enabled and not self._authorised(environ))
                or not render.compatible(self.app)):
            return self.wsgi_app(environ, start_response)
        try:
            version, record = self.store.lookup_record(user_id)
            if n is not None and n > version.top_n:
                return self.wsgi_app(environ, start_response)  # a 400, from the route
            body = render.list_body(version, user_id, record, version.top_n if n is None else n)
        except Exception as err:  # answered by the route (serving/errors.py), Redis not asked again
            environ[api.HOT_PATH_ERROR] = err
            return self.wsgi_app(environ, start_response)
        body = body.encode()
        self.telemetry.count_list("personalized" if record is not None else "fallback")
        start_response("200 OK", [
            ("Content-Type", self.app.json.mimetype), ("Content-Length", str(len(body))),
            ("X-Request-ID", request_id_from(environ.get("HTTP_X_REQUEST_ID", "")))])
        self.telemetry.answered(ENDPOINT, "GET", "200", time.perf_counter() - started)
        return [body]

    def _authorised(self, environ) -> bool:
        token = auth.bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
        return bool(token) and self.tokens.allows(token)
