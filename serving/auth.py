"""Bearer tokens: who may read the lists (they reveal what a person looked at).

    DAILYREC_API_TOKENS          tokens that may call /recommendations and /items (several, for
                                 rotation: comma, space or newline separated, or a JSON list)
    DAILYREC_API_TOKENS_FILE     the same, read from a file (a mounted secret)
    DAILYREC_API_METRICS_TOKENS  tokens for /metrics; unset: /metrics stays open (a scraper
                                 inside the cluster), set: only these tokens may scrape
    DAILYREC_API_REQUIRE_TOKENS  true: refuse to start without API tokens (set it in production)

With tokens set, a request without `Authorization: Bearer <token>`, or with a token not in the
set, gets 401 JSON and `WWW-Authenticate: Bearer`. /healthz, /readyz and /openapi.json stay open
(probes and the contract). Tokens are compared as SHA-256 digests with hmac.compare_digest
against every configured token, so the time taken tells nothing about how close a guess was,
nor which token matched. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

from flask import Flask, current_app, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

MIN_TOKEN_LENGTH = 16  # a token shorter than this is refused at start-up, not guessed later


class TokenError(ValueError):
    """A token setting the API cannot start with."""


def parse_tokens(value, where: str) -> tuple[bytes, ...]:
    """The SHA-256 digests of the tokens in a setting: a string (comma, space or newline
    separated, or a JSON list) or a list."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        text = value.strip()
        tokens = json.loads(text) if text.startswith("[") else re.split(r"[\s,]+", text)
    else:
        tokens = list(value)
    tokens = [str(t).strip() for t in tokens if str(t).strip()]
    short = [i for i, t in enumerate(tokens, start=1) if len(t) < MIN_TOKEN_LENGTH]
    if short:
        raise TokenError(f"{where}: token {short[0]} of {len(tokens)} is shorter than "
                         f"{MIN_TOKEN_LENGTH} characters (use e.g. `openssl rand -hex 32`)")
    return tuple(hashlib.sha256(t.encode()).digest() for t in tokens)


class TokenSet:
    def __init__(self, digests: tuple[bytes, ...]):
        self.digests = digests

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def allows(self, token: str) -> bool:
        presented = hashlib.sha256(token.encode()).digest()
        found = False
        for digest in self.digests:  # no early exit: every token is compared
            found |= hmac.compare_digest(presented, digest)
        return found


def init_app(app: Flask) -> None:
    cfg = app.config
    api = parse_tokens(cfg.get("TOKENS"), "DAILYREC_API_TOKENS")
    if cfg.get("TOKENS_FILE"):
        path = Path(cfg["TOKENS_FILE"])
        try:
            text = path.read_text()
        except OSError as err:
            raise TokenError(f"DAILYREC_API_TOKENS_FILE: cannot read {path}: {err}") from err
        api += parse_tokens(text, f"DAILYREC_API_TOKENS_FILE ({path})")
    if cfg.get("REQUIRE_TOKENS") and not api:
        raise TokenError("DAILYREC_API_REQUIRE_TOKENS is on but no token is set "
                         "(DAILYREC_API_TOKENS or DAILYREC_API_TOKENS_FILE)")
    metrics = parse_tokens(cfg.get("METRICS_TOKENS"), "DAILYREC_API_METRICS_TOKENS")
    if not api:
        app.logger.warning("the recommendations API is open to anyone who can reach it: set "
                           "DAILYREC_API_TOKENS in production (docs/serving.md)")
    app.extensions["dailyrec.auth"] = {"api": TokenSet(api), "metrics": TokenSet(metrics)}


def bearer_token(authorization: str) -> str:
    """The token of an `Authorization: Bearer <token>` header ("" for any other header)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def require(scope: str) -> None:
    """Raise 401 unless the request carries a token of `scope` (a no-op when it has none)."""
    tokens: TokenSet = current_app.extensions["dailyrec.auth"][scope]
    if not tokens.enabled:
        return
    token = bearer_token(request.headers.get("Authorization", ""))
    if not token:
        raise Unauthorized("a bearer token is required: send `Authorization: Bearer <token>`",
                           www_authenticate=WWWAuthenticate("bearer", {"realm": "dailyrec"}))
    if not tokens.allows(token):
        raise Unauthorized("the bearer token is not valid",
                           www_authenticate=WWWAuthenticate(
                               "bearer", {"realm": "dailyrec", "error": "invalid_token"}))


def require_api() -> None:
    require("api")
