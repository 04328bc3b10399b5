"""The one place errors become responses: every error is JSON with the request id.

    4xx (bad input, unknown route, wrong method)  -> that status, {"error", "message"}
    Redis down / nothing published                -> 503 with Retry-After; the process carries on
                                                     and answers again as soon as Redis does
    anything else                                 -> 500, logged with its traceback and alerted
                                                     (dailyrec.ops.notify.alert_later: off the request
                                                     thread), both naming the route's template
                                                     and the request id, never the path; the
                                                     client gets only the request id
"""

from __future__ import annotations

import time

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from dailyrec.ops import notify
from dailyrec.publish.reader import NotPublished, RedisUnavailable
from serving.telemetry import UNMATCHED, method_label, request_id

_last_unavailable_log = [0.0]


def init_app(app: Flask) -> None:
    app.register_error_handler(Exception, handle_error)


def _answer(status: int, error: str, message: str, **headers):
    body = jsonify(error=error, message=message, request_id=request_id())
    return body, status, headers


def _count(kind: str) -> None:
    telemetry = current_app.extensions.get("dailyrec.telemetry")
    if telemetry is not None:
        telemetry.errors.labels(kind).inc()


def handle_error(err: Exception):
    if isinstance(err, HTTPException):
        kind = (err.name or "error").lower().replace(" ", "_").replace("'", "")
        _count(kind)
        # The exception's own headers (a 405's Allow) go with the JSON body.
        extra = {k: v for k, v in err.get_headers() if k.lower() != "content-type"}
        return _answer(err.code or 500, kind, err.description or err.name, **extra)
    if isinstance(err, (RedisUnavailable, NotPublished)):
        kind = "redis_unavailable" if isinstance(err, RedisUnavailable) else "not_published"
        _count(kind)
        now = time.monotonic()
        if now - _last_unavailable_log[0] > 10:  # one line per 10 s, not one per request
            _last_unavailable_log[0] = now
            current_app.logger.warning("answering 503 (%s): %s", kind, err)
        message = ("recommendations are temporarily unavailable; retry later"
                   if kind == "redis_unavailable" else "no recommendations are published yet")
        retry_after = str(current_app.config["RETRY_AFTER"])
        return _answer(503, kind, message, **{"Retry-After": retry_after})
    rid = request_id()
    _count("internal")
    # Named by the route's template and the request id, never the path or query: they hold user
    # and item ids (PII); the request id is the one the client was told to quote. Keyed by where
    # it failed (the route, the exception type and the code location: throttle.fingerprint), so a
    # storm over many users is one alert; mailed off the request thread, from a bounded queue.
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = method_label(request.method)
    current_app.logger.error("request %s %s %s failed", rid, method, route, exc_info=err)
    try:
        notify.alert_later(f"dailyrec API: {type(err).__name__} on {method} {route}",
                           error=err, context={"request_id": rid, "method": method,
                                               "route": route},
                           throttle_minutes=float(current_app.config["ALERT_THROTTLE_MINUTES"]))
    except Exception:  # a broken alert must not hide the 500
        current_app.logger.exception("notify.alert_later failed")
    return _answer(500, "internal_error",
                   f"unexpected error; quote request id {rid} when reporting it")
