"""GET /recommendations/<user_id>?n=20: a user's top-n list, or the most-popular list if unknown."""

from __future__ import annotations

import re

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

bp = Blueprint("recommendations", __name__)
_DIGITS = re.compile(r"[0-9]{1,6}")


@bp.get("/recommendations/<user_id>")
def recommendations(user_id: str):
    cfg = current_app.config
    limit = cfg["USER_ID_MAX_LENGTH"]
    if len(user_id) > limit:
        raise BadRequest(f"user_id is {len(user_id)} characters long; at most {limit} are allowed")
    if not cfg["USER_ID_PATTERN"].fullmatch(user_id):
        raise BadRequest("user_id may contain only letters, digits and . _ : @ + -")
    raw_n = request.args.get("n")
    if raw_n is not None and not _DIGITS.fullmatch(raw_n):
        raise BadRequest(f"n must be a whole number, got {raw_n[:20]!r}")

    store = current_app.extensions["dailyrec.store"]
    version, record = store.lookup(user_id)
    n = version.top_n if raw_n is None else int(raw_n)
    if not 1 <= n <= version.top_n:
        raise BadRequest(f"n must be between 1 and {version.top_n}, got {n}")
    source = "personalized" if record else "fallback"
    chosen = record if record else version.fallback
    current_app.extensions["dailyrec.telemetry"].recommendations.labels(source).inc()
    items = [{"id": version.item_ids[i], "score": round(s, 6)} for i, s in chosen[:n]]
    return jsonify(user_id=user_id, items=items, model_version=version.name, source=source)
