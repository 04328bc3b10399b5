"""Operations endpoints: /healthz (the process answers), /readyz (Redis answers and a version is
published; "degraded" when its data is stale), /metrics (Prometheus), /openapi.json (the API
contract, serving/openapi.json)."""

from __future__ import annotations

import functools
from importlib import resources

from flask import Blueprint, Response, current_app, jsonify

from dailyrec.publish.reader import freshness
from serving import auth

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="alive")


@bp.get("/readyz")
def readyz():
    """200 "ready", or 200 "degraded" when the served lists are older than their
    serving.max_age_hours (still served: better than none; the age says how stale); 503 when
    Redis does not answer or nothing is published."""
    version = current_app.extensions["dailyrec.publish"].ready()  # raises -> 503 via serving.errors
    fresh = freshness(version)
    return jsonify(status="degraded" if fresh.stale else "ready", kind=version.kind,
                   **fresh.as_dict())


@bp.get("/metrics")
def metrics():
    auth.require("metrics")  # open unless DAILYREC_API_METRICS_TOKENS is set
    body, content_type = current_app.extensions["dailyrec.telemetry"].render()
    return Response(body, content_type=content_type)


@functools.cache
def openapi_document() -> bytes:
    """serving/openapi.json, byte for byte (package data: shipped by a non-editable install too),
    read once per process."""
    return resources.files(__package__).joinpath("openapi.json").read_bytes()


@bp.get("/openapi.json")
def openapi():
    return Response(openapi_document(), mimetype="application/json")
