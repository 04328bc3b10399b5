"""Redis connection settings from the environment, shared by publish and the API.

    REDIS_URL            redis://[[user]:password@]host:port/db, or rediss://... for TLS
                         (default redis://127.0.0.1:6379/0)
    REDIS_PASSWORD       password (overrides one in the URL; keeps it out of process listings)
    REDIS_USERNAME       ACL user name (overrides one in the URL)
    REDIS_TLS_CA_CERTS   CA bundle that signed the server certificate (rediss://)
    REDIS_TLS_CERTFILE   client certificate and key, for servers that require them (rediss://)
    REDIS_TLS_KEYFILE
    REDIS_TLS_VERIFY     "required" (default) or "none" (test servers with self-signed certificates)
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dailyrec.core import env
from dailyrec.core.errors import ConfigError


def settings_from_env(environ=os.environ) -> dict:
    """Connection settings as a plain dict (what create_app's config also accepts)."""
    return {
        "REDIS_URL": environ.get(env.REDIS_URL) or env.DEFAULT_REDIS_URL,
        "REDIS_PASSWORD": environ.get("REDIS_PASSWORD") or None,
        "REDIS_USERNAME": environ.get("REDIS_USERNAME") or None,
        "REDIS_TLS_CA_CERTS": environ.get("REDIS_TLS_CA_CERTS") or None,
        "REDIS_TLS_CERTFILE": environ.get("REDIS_TLS_CERTFILE") or None,
        "REDIS_TLS_KEYFILE": environ.get("REDIS_TLS_KEYFILE") or None,
        "REDIS_TLS_VERIFY": environ.get("REDIS_TLS_VERIFY") or "required",
    }


def client(settings: dict | None = None, *, timeout: float = 30.0, retries: int = 1,
           max_connections: int | None = None) -> redis.Redis:
    """A client (with its own pool) for the settings; nothing is connected until first use.

    One quick retry, no backoff: it replaces a pooled connection that a Redis restart closed, while
    a Redis that is really down still fails fast (the API answers 503 at once, never hangs).
    """
    s = {**settings_from_env(), **(settings or {})}
    url = s["REDIS_URL"]
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{env.REDIS_URL}: unsupported scheme {scheme!r} in {redacted(url)} "
                          "(use redis://, rediss:// or unix://)")
    kwargs: dict = {"socket_timeout": timeout, "socket_connect_timeout": min(timeout, 2.0),
                    "retry": Retry(NoBackoff(), retries), "health_check_interval": 30}
    if max_connections:
        kwargs["max_connections"] = max_connections
    if s.get("REDIS_PASSWORD"):
        kwargs["password"] = s["REDIS_PASSWORD"]
    if s.get("REDIS_USERNAME"):
        kwargs["username"] = s["REDIS_USERNAME"]
    if scheme == "rediss":
        kwargs["ssl_cert_reqs"] = "none" if s.get("REDIS_TLS_VERIFY") == "none" else "required"
        if s["REDIS_TLS_VERIFY"] == "none":
            kwargs["ssl_check_hostname"] = False
        for key, arg in (("REDIS_TLS_CA_CERTS", "ssl_ca_certs"),
                         ("REDIS_TLS_CERTFILE", "ssl_certfile"),
                         ("REDIS_TLS_KEYFILE", "ssl_keyfile")):
            if s.get(key):
                kwargs[arg] = s[key]
    return redis.Redis.from_url(url, **kwargs)


def redacted(url: str) -> str:
    """The URL with any password replaced, for logs and metrics files."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
