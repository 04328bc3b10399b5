"""Personal data stays out of git: files committed with dvc.lock (the metrics, the validation
report, the ledger) name users, IPs and user agents only by salted hashes.

    pseudonym("42") -> "h:3f2a9c41d07e"     HMAC-SHA256 of the value under the salt, 12 hex digits

The salt comes from DAILYREC_PII_SALT; without it, one is made once per machine and kept in the
state directory (never committed), so the same user has the same pseudonym from day to day on that
machine and cannot be found by hashing candidate ids. The full values stay in DVC-cached outputs
(reports/filter/offenders.json, data/quarantine/), which live in the DVC cache and remote, not git.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from functools import lru_cache
from typing import Any

from dailyrec.core import env

SALT_ENV = "DAILYREC_PII_SALT"
SALT_FILE = "pii-salt"
# Keys whose values identify a person (or a person's device or network).
PERSONAL_KEYS = ("user_id", "ip", "user_agent", "event_id")


@lru_cache(maxsize=1)
def salt() -> bytes:
    given = os.environ.get(SALT_ENV)
    if given:
        return given.encode()
    path = env.state_dir() / SALT_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def pseudonym(value: Any) -> Any:
    if value is None:
        return None
    digest = hmac.new(salt(), str(value).encode("utf-8", "backslashreplace"), hashlib.sha256)
    return "h:" + digest.hexdigest()[:12]


def pseudonymise(data: Any, keys: tuple[str, ...] = PERSONAL_KEYS) -> Any:
    """A copy of nested dicts and lists with the values of personal keys replaced by pseudonyms
    (a few dozen offenders or examples: the loop is over those, never over events)."""
    if isinstance(data, dict):
        return {k: (pseudonym(v) if k in keys and not isinstance(v, (dict, list)) else
                    pseudonymise(v, keys)) for k, v in data.items()}
    if isinstance(data, list):
        return [pseudonymise(v, keys) for v in data]
    return data
