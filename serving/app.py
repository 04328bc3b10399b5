"""The serving API: a Flask application factory.

    create_app(config=None) -> Flask

Configuration, later sources winning:
  1. defaults below;
  2. Redis connection settings from the environment (dailyrec/publish/connection.py: REDIS_URL,
     REDIS_PASSWORD, rediss:// TLS...) and REDIS_KEY_PREFIX;
  3. any DAILYREC_API_<KEY> environment variable (Flask's from_prefixed_env; values parsed as JSON),
     e.g. DAILYREC_API_REDIS_TIMEOUT=0.2, DAILYREC_API_RETRY_AFTER=10 (a prefix of its own, so
     the mail password and other DAILYREC_* secrets never land in the app config);
  4. the `config` dict.

Bearer tokens (DAILYREC_API_TOKENS, ...): serving/auth.py.

Run it with `python -m serving.server` (granian: serving/server.py, `make serve`), or
`flask --app serving.app run` while developing.
"""

from __future__ import annotations

import os
import re

from flask import Flask
from werkzeug.exceptions import NotFound
from werkzeug.routing import RequestRedirect

from dailyrec.publish import connection
from dailyrec.publish import keys as K
from dailyrec.publish.reader import RecommendationStore
from serving import api, auth, errors, hot, ops
from serving.telemetry import Telemetry

DEFAULTS = {
    "REDIS_TIMEOUT": 0.5,        # seconds per Redis call before answering 503
    "REDIS_MAX_CONNECTIONS": 64,
    "RETRY_AFTER": 5,            # seconds, in the Retry-After header of a 503
    "USER_ID_MAX_LENGTH": 128,
    "USER_ID_PATTERN": r"[A-Za-z0-9._:@+-]+",  # item ids too
    "MAX_RECENT_ITEMS": 50,      # items in ?recent=
    "EXPLAIN_TOP": 3,            # contributing items per recommended item with ?explain=1
    "JSON_SORT_KEYS": False,
    # The same error is mailed at most once per this many minutes (the app never reads
    # params.yaml: set DAILYREC_API_ALERT_THROTTLE_MINUTES).
    "ALERT_THROTTLE_MINUTES": 60,
    # Bearer tokens (serving/auth.py): none set, the API is open (and says so in its log).
    "TOKENS": None,
    "TOKENS_FILE": None,
    "METRICS_TOKENS": None,
    "REQUIRE_TOKENS": False,
    # Known users' lists and the fallback answered in front of Flask (serving/hot.py): the same
    # answers, at about half the cost per request.
    "HOT_PATH": True,
}
# Read as the raw text of the variable (from_prefixed_env would parse a token as JSON).
RAW_TEXT_SETTINGS = ("TOKENS", "METRICS_TOKENS", "TOKENS_FILE")


class ApiFlask(Flask):
    """Flask without routing redirects. Werkzeug answers a path it would normalise (`//` merged
    into `/`, a trailing slash added) with a 308 HTML page whose Location is built from the
    request's Host header, past every error handler. Here an empty path segment matches nothing
    (merge_slashes off), and any redirect the routing would still make is a 404, as JSON."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.url_map.merge_slashes = False  # before any rule is added: rules copy it

    def raise_routing_exception(self, request):
        if isinstance(request.routing_exception, RequestRedirect):
            raise NotFound()
        super().raise_routing_exception(request)


def create_app(config: dict | None = None) -> Flask:
    app = ApiFlask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.update(connection.settings_from_env())
    app.config["REDIS_KEY_PREFIX"] = K.Layout.from_env().prefix
    app.config.from_prefixed_env("DAILYREC_API")
    for key in RAW_TEXT_SETTINGS:
        if os.environ.get(f"DAILYREC_API_{key}") is not None:
            app.config[key] = os.environ[f"DAILYREC_API_{key}"]
    app.config.update(config or {})
    app.json.sort_keys = False
    # OPTIONS is a 405 like any method a route does not take (serving/openapi.json): Flask's own
    # answer would be a 200 with an empty HTML body.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    pattern = app.config["USER_ID_PATTERN"]
    app.config["USER_ID_PATTERN"] = re.compile(pattern) if isinstance(pattern, str) else pattern

    client = connection.client(app.config, timeout=float(app.config["REDIS_TIMEOUT"]),
                               max_connections=app.config["REDIS_MAX_CONNECTIONS"])
    app.extensions["dailyrec.publish"] = RecommendationStore(
        client, K.Layout(app.config["REDIS_KEY_PREFIX"]))
    Telemetry().init_app(app)
    auth.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    errors.init_app(app)
    hot.install(app)
    return app
