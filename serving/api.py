"""The recommendation routes (the contract: serving/openapi.json).

GET /recommendations/<user_id>?n=20&recent=<item>,<item>&explain=1
    A known user: their nightly list ("personalized"), the items in `recent` left out (they were
    just seen). An unknown visitor with known items in `recent`: a list folded in from those
    items at request time ("session"). Anyone else: the most-popular list ("fallback"), `recent`
    left out. explain=1 adds to each item the past (or recent) items that contributed most.
GET /items/<item_id>/similar?n=20
    The item's most similar items (cosine of the model's item factors); 404 for an item the
    served version does not know.
"""

from __future__ import annotations

import re

import numpy as np
from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, NotFound

from serving import auth, render

bp = Blueprint("recommendations", __name__)
bp.before_request(auth.require_api)  # 401 without a valid token, when tokens are set
_DIGITS = re.compile(r"[0-9]{1,6}")
# The list route's rule: also the metrics' endpoint label, which serving/hot.py records too.
LIST_ROUTE = "/recommendations/<user_id>"
# The exception serving/hot.py met on this request (a failed lookup: Redis down, nothing
# published...), handed over with it: raised here, so that serving/errors.py answers it as it
# answers this route's own, without a second call to Redis.
HOT_PATH_ERROR = "dailyrec.hot_path.error"
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _checked_id(value: str, what: str) -> str:
    cfg = current_app.config
    limit = cfg["USER_ID_MAX_LENGTH"]
    if len(value) > limit:
        raise BadRequest(f"{what} is {len(value)} characters long; at most {limit} are allowed")
    if not cfg["USER_ID_PATTERN"].fullmatch(value):
        raise BadRequest(f"{what} may contain only letters, digits and . _ : @ + -")
    return value


def _n(version) -> int:
    raw = request.args.get("n")
    if raw is not None and not _DIGITS.fullmatch(raw):
        raise BadRequest(f"n must be a whole number, got {raw[:20]!r}")
    n = version.top_n if raw is None else int(raw)
    if not 1 <= n <= version.top_n:
        raise BadRequest(f"n must be between 1 and {version.top_n}, got {n}")
    return n


def _recent() -> list[str]:
    raw = request.args.get("recent")
    if raw is None:
        return []
    ids = list(dict.fromkeys(i for i in raw.split(",") if i))  # in order, once each
    limit = current_app.config["MAX_RECENT_ITEMS"]
    if len(ids) > limit:
        raise BadRequest(f"recent lists {len(ids)} items; at most {limit} are allowed")
    for item in ids:
        _checked_id(item, f"recent item {item[:40]!r}")
    return ids


def _explain() -> bool:
    raw = request.args.get("explain")
    if raw is None:
        return False
    if raw.lower() not in _FLAGS:
        raise BadRequest(f"explain must be 1 or 0, got {raw[:20]!r}")
    return _FLAGS[raw.lower()]


def _because(version, past: np.ndarray, contributions: np.ndarray) -> list[dict]:
    """The items that contributed most to one recommendation (positive contributions only)."""
    top = current_app.config["EXPLAIN_TOP"]
    order = np.argsort(-contributions, kind="stable")[:top]
    return [{"id": version.item_ids[past[j]], "weight": round(float(contributions[j]), 6)}
            for j in order if past[j] >= 0 and contributions[j] > 0]


@bp.get(LIST_ROUTE)
def recommendations(user_id: str):
    failed = request.environ.get(HOT_PATH_ERROR)
    if failed is not None:
        raise failed
    _checked_id(user_id, "user_id")
    recent, explain = _recent(), _explain()
    app = current_app._get_current_object()
    store = app.extensions["dailyrec.publish"]
    telemetry = app.extensions["dailyrec.telemetry"]
    if not recent and not explain and render.compatible(app):
        # The hot path: the stored list (or the fallback) as it is, its JSON joined from
        # per-version pre-encoded pieces; the same body as the general path below.
        version, raw = store.lookup_record(user_id)
        n = _n(version)
        source = "personalized" if raw is not None else "fallback"
        telemetry.count_list(source)
        return app.response_class(render.list_body(version, user_id, raw, n),
                                  mimetype=app.json.mimetype)
    version, record, history = store.lookup(user_id, history=explain)
    n = _n(version)
    seen = version.positions(recent) if recent else np.zeros(0, dtype=np.int64)
    known = seen[seen >= 0]
    just_seen = set(known.tolist())
    if recent:
        telemetry.recent_items.labels("known").inc(len(known))
        telemetry.recent_items.labels("unknown").inc(len(recent) - len(known))
    fold_in = store.fold_in(version) if (record is None and len(known)) or explain else None
    solved = None
    if record is not None:
        source = "personalized"
        chosen = [(i, s) for i, s in record if i not in just_seen][:n]
        if explain and history and fold_in is not None:
            past = np.array([i for i, _ in history])
            solved = fold_in.solve(past[None, :], np.array([c for _, c in history])[None, :])
    elif len(known) and fold_in is not None:
        source = "session"
        solved = fold_in.solve(known[None, :], version.fold_in_confidence)
        positions, scores = fold_in.recommend(solved, n)
        chosen = [(int(i), float(s)) for i, s in zip(positions[0], scores[0]) if i >= 0]
    else:
        source = "fallback"
        chosen = [(i, s) for i, s in version.fallback if i not in just_seen][:n]
    telemetry.count_list(source)
    items = [{"id": version.item_ids[i], "score": round(s, 6)} for i, s in chosen]
    if explain:
        if solved is not None and chosen:
            contributions = fold_in.explain(solved, np.array([[i for i, _ in chosen]]))[0]
            for item, row in zip(items, contributions):
                item["because"] = _because(version, solved.items[0], row)
        else:
            for item in items:
                item["because"] = []
    body = {"user_id": user_id, "items": items, "model_version": version.name, "source": source}
    if recent:
        body["recent"] = {"given": len(recent), "known": int(len(known)),
                          "unknown": int(len(recent) - len(known))}
    return jsonify(body)


@bp.get("/items/<item_id>/similar")
def similar_items(item_id: str):
    _checked_id(item_id, "item_id")
    store = current_app.extensions["dailyrec.publish"]
    version, record = store.similar(item_id)
    n = _n(version)
    if record is None:
        why = ("has no similar items (publish.similar_items is off, or it is the most-popular "
               "list only)") if not version.n_item_buckets else "does not know this item"
        raise NotFound(f"item {item_id!r}: the served version {version.name} {why}")
    items = [{"id": version.item_ids[i], "score": round(s, 6)} for i, s in record[:n]]
    return jsonify(item_id=item_id, items=items, model_version=version.name)
