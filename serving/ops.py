"""Operations endpoints: /healthz (the process answers), /readyz (Redis answers and a version is
published), /metrics (Prometheus), /openapi.json (the API contract, serving/openapi.json)."""

from __future__ import annotations

import functools
from importlib import resources

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="alive")


@bp.get("/readyz")
def readyz():
    version = current_app.extensions["dailyrec.store"].ready()  # raises -> 503 via serving.errors
    return jsonify(status="ready", model_version=version.name, kind=version.kind)


@bp.get("/metrics")
def metrics():
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
