"""The alert throttle: the same error (the same place in the code, the same subject with its
variable parts left out) is mailed at most once per window, across every process on the machine,
and the next mail says how many were held back. Its state is a small SQLite file.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
import traceback
from pathlib import Path


log = logging.getLogger("dailyrec.ops.notify")


class Throttle:
    """At most one mail per key per window, across processes (SQLite in the state directory).

    admit() answers whether to send now, and how many occurrences were held back since the last
    mail, so that mail can say so. If the state file cannot be used, an in-process table stands in.
    """

    _fallback: dict[str, tuple[float, int]] = {}
    _fallback_lock = threading.Lock()

    def __init__(self, path: Path, minutes: float):
        self.path = Path(path)
        self.window = max(0.0, float(minutes)) * 60.0

    def admit(self, key: str, now: float | None = None) -> tuple[bool, int, float | None]:
        now = time.time() if now is None else now
        failure: Exception | None = None
        for attempt in range(5):  # a locked database is waited for, not given up on
            try:
                return self._admit_sqlite(key, now)
            except sqlite3.OperationalError as err:
                failure = err
                if "locked" not in str(err):
                    break
                time.sleep(0.05 * (attempt + 1))
            except (sqlite3.Error, OSError) as err:
                failure = err
                break
        # The state file cannot be used: throttle in this process only.
        log.warning("alert throttle state %s unusable (%s); throttling in this process only",
                    self.path, failure)
        with self._fallback_lock:
            last, held = self._fallback.get(key, (None, 0))
            if last is not None and now - last < self.window:
                self._fallback[key] = (last, held + 1)
                return False, held + 1, last
            self._fallback[key] = (now, 0)
            return True, held, last

    _local = threading.local()  # one connection per thread and process, kept open

    def _connect(self) -> sqlite3.Connection:
        """A connection to the state file, opened once per thread (and again after a fork).
        Closing a WAL database checkpoints it, which costs more than the whole check."""
        key = (os.getpid(), str(self.path.resolve()))
        cache = self._local.__dict__.setdefault("connections", {})
        if key in cache:
            return cache[key]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Switching a fresh file to WAL takes an exclusive lock that SQLite's busy timeout does
        # not wait for: processes opening it at once (a storm hitting every API worker) got
        # "database is locked", throttled only themselves, and each mailed. One at a time here.
        with open(self.path.with_name(self.path.name + ".setup-lock"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                  check_same_thread=False)
            # WAL + synchronous=NORMAL: a held-back alert costs a fraction of a millisecond,
            # which matters when every request of an error storm comes through here.
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, "
                        "last_sent REAL NOT NULL, held INTEGER NOT NULL DEFAULT 0)")
        cache[key] = con
        return con

    def _forget_connection(self) -> None:
        cache = self._local.__dict__.get("connections", {})
        con = cache.pop((os.getpid(), str(self.path.resolve())), None)
        if con is not None:
            try:
                con.close()
            except sqlite3.Error:
                pass

    def _admit_sqlite(self, key: str, now: float) -> tuple[bool, int, float | None]:
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")  # one writer at a time: check-and-set is atomic
            row = con.execute("SELECT last_sent, held FROM alerts WHERE key = ?", (key,)).fetchone()
            last, held = row if row else (None, 0)
            if last is not None and now - last < self.window:
                con.execute("UPDATE alerts SET held = held + 1 WHERE key = ?", (key,))
                con.execute("COMMIT")
                return False, held + 1, last
            con.execute("INSERT INTO alerts (key, last_sent, held) VALUES (?, ?, 0) "
                        "ON CONFLICT(key) DO UPDATE SET last_sent = excluded.last_sent, held = 0",
                        (key, now))
            # Forget keys quiet for a week, so the table stays small.
            con.execute("DELETE FROM alerts WHERE last_sent < ? AND held = 0", (now - 7 * 86400,))
            con.execute("COMMIT")
            return True, held, last
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            self._forget_connection()
            raise


_VARIABLE_PARTS = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|0x[0-9a-fA-F]+|[0-9a-fA-F]{8,}|\d+")


def fingerprint(subject: str, error: BaseException | None) -> str:
    """What makes two alerts 'the same error': the subject and, for an exception, its type and
    where it was raised (numbers, ids and addresses normalised, so a storm over many users or
    requests counts as one)."""
    parts = [_VARIABLE_PARTS.sub("#", subject)]
    if error is not None:
        parts.append(f"{type(error).__module__}.{type(error).__qualname__}")
        frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
        if frames:
            parts += [f"{f.filename}:{f.name}:{f.lineno}" for f in frames]
        else:
            parts.append(_VARIABLE_PARTS.sub("#", str(error)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
