"""Operations endpoints: /healthz (the process answers), /readyz (Redis answers and a version is
published), /metrics (Prometheus)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="alive")


@bp.get("/readyz")
def readyz():
    version = current_app.extensions["dailyrec.store"].ready()  # raises -> 503 via serving.errors
    return jsonify(status="ready", model_version=version)


@bp.get("/metrics")
def metrics():
    body, content_type = current_app.extensions["dailyrec.telemetry"].render()
    return Response(body, content_type=content_type)
