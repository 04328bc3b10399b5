"""Reading params.yaml and the environment: the only place stages learn their settings.

Settings that shape results live in params.yaml (DVC tracks them); endpoints and secrets come from
environment variables, never from a committed file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path(os.environ.get("DAILYREC_PARAMS", "params.yaml"))

# Environment variables and their one-machine defaults.
SOURCE_URL_ENV = "DAILYREC_SOURCE_URL"
DEFAULT_SOURCE_URL = "sqlite:///source.db"
REDIS_URL_ENV = "REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ConfigError(Exception):
    """A setting or input that cannot be used; the message says which and where."""


def load(path: Path | str | None = None) -> dict[str, Any]:
    path = Path(path or PARAMS_FILE)
    if not path.exists():
        raise ConfigError(f"{path}: parameters file not found")
    with path.open() as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml: section '{name}' is missing or not a mapping")
    return value


def run_date(params: dict[str, Any]) -> dt.date:
    """run.date: the day the scheduler runs for; the data window is the 24 hours before it."""
    raw = section(params, "run").get("date")
    if isinstance(raw, dt.date):
        return raw
    try:
        return dt.date.fromisoformat(str(raw))
    except ValueError:
        raise ConfigError(f"params.yaml: run.date must be YYYY-MM-DD, got {raw!r}") from None


def integer(value: Any, name: str) -> int:
    """A whole-number setting (a bool is not one); the error names the params.yaml key."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"params.yaml: {name} must be an integer, got {value!r}")
    return value


def positive_int(value: Any, name: str) -> int:
    if integer(value, name) < 1:
        raise ConfigError(f"params.yaml: {name} must be >= 1, got {value!r}")
    return value


def flag(value: Any, name: str) -> bool:
    """A true/false setting; anything else (a 'yes' string, 0/1) is an error naming the key."""
    if not isinstance(value, bool):
        raise ConfigError(f"params.yaml: {name} must be true or false, got {value!r}")
    return value


def day_window(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC of the 24 hours before `day`."""
    end = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    return end - dt.timedelta(days=1), end


def source_url() -> str:
    return os.environ.get(SOURCE_URL_ENV, DEFAULT_SOURCE_URL)


def redis_url() -> str:
    return os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)


def write_json(path: Path | str, payload: Any) -> None:
    """Write JSON atomically (temp file + rename), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def run_stage(name: str, body, argv=None) -> int:
    """Run a stage's body; a ConfigError becomes one clear line on stderr and exit status 2."""
    import sys

    try:
        return body(argv) or 0
    except ConfigError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2


def set_run_date(day: dt.date, path: Path | str | None = None) -> None:
    """Set run.date in params.yaml, changing that one line and nothing else (comments, layout and
    every other byte stay), so the scheduler's daily commit shows a one-line diff."""
    import re

    path = Path(path or PARAMS_FILE)
    text = path.read_text()
    # The `date:` key indented under the top-level `run:` section (comment lines may sit between).
    pattern = re.compile(r"^(run:[ \t]*(?:#.*)?\n(?:(?:[ \t]+#.*|[ \t]*)\n|[ \t]+\S.*\n)*?"
                         r"[ \t]+date:[ \t]*)(\S+?)([ \t]*(?:#.*)?)$", re.M)
    new, count = pattern.subn(lambda m: f"{m.group(1)}'{day.isoformat()}'{m.group(3)}", text,
                              count=1)
    if count != 1:
        raise ConfigError(f"{path}: no run.date line to set (expected `run:` with `date:` under it)")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(new)
    tmp.replace(path)


def file_md5(path: Path | str) -> str:
    """MD5 of a file's bytes, read in blocks: the hash DVC records for a file output."""
    import hashlib

    digest = hashlib.md5()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
