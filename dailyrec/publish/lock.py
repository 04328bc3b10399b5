"""One publish or rollback at a time, per Redis keyspace (PublishLock), and THE switch: one atomic
script that checks the lock is still held, marks a version complete and points `current` at it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import threading
import uuid


from dailyrec.core.errors import Busy, ServiceUnavailable
from dailyrec.publish import keys as K



def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def as_text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisLost(ServiceUnavailable):
    """Redis lost what this publish wrote or the lock it held (emptied, restarted without
    persistence, evicting): nothing was switched; the next run publishes again."""


LOCK_TTL_S = 60  # renewed every LOCK_TTL_S/4 by a heartbeat thread while publish runs


class PublishLock:
    """One publish or rollback at a time, per Redis keyspace.

    The lock is a key holding who took it (host, pid, token) with a TTL that a heartbeat thread
    renews. A holder that died frees it when the TTL runs out; one that died on this host (a killed
    publish) is noticed at once and taken over, so a rerun need not wait.
    """

    _RENEW = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
              "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end")
    _RELEASE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                "return redis.call('DEL', KEYS[1]) else return 0 end")
    _TAKEOVER = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                 "return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) else return nil end")

    def __init__(self, client, key: str, purpose: str, ttl_s: float = LOCK_TTL_S):
        self.client, self.key, self.ttl_ms = client, key, int(ttl_s * 1000)
        self.value = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "token": uuid.uuid4().hex, "purpose": purpose, "since": now()})
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PublishLock":
        if not self.client.set(self.key, self.value, nx=True, px=self.ttl_ms):
            held = self.client.get(self.key)
            if held is None or not self._take_over_from_dead(held):
                raise Busy(f"{self.key} is held by {as_text(held)}: another publish or rollback "
                              f"is running (a dead holder's lock expires within "
                              f"{self.ttl_ms // 1000} s); nothing changed")
        self._thread = threading.Thread(target=self._heartbeat, name="publish-lock", daemon=True)
        self._thread.start()
        return self

    def _take_over_from_dead(self, held: bytes) -> bool:
        try:
            holder = json.loads(held)
            pid = int(holder["pid"])
            if holder.get("host") != socket.gethostname():
                return False
            os.kill(pid, 0)
            return False  # alive
        except ProcessLookupError:
            pass
        except (ValueError, KeyError, TypeError, PermissionError):
            return False
        taken = self.client.eval(self._TAKEOVER, 1, self.key, held, self.value, self.ttl_ms)
        if taken:
            print(f"publish: took over {self.key} from pid {pid}, which is no longer running",
                  file=sys.stderr)
        return bool(taken)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 4000):
            try:
                if not self.client.eval(self._RENEW, 1, self.key, self.value, self.ttl_ms):
                    self.lost.set()
                    return
            except Exception:  # Redis unreachable for a moment: the next beat tries again
                pass

    _SWITCH = ("if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
               "if #ARGV > 2 then redis.call('HSET', KEYS[3], unpack(ARGV, 3)) end "
               "redis.call('SET', KEYS[2], ARGV[2]) return 1")

    def switch(self, layout: K.Layout, version: str, meta: dict | None = None) -> None:
        """THE switch: one atomic script checks we still hold the lock, marks the version
        (complete), and points `current` at it. Readers go from one whole version to another."""
        fields = [str(x) for kv in (meta or {}).items() for x in kv]
        if not self.client.eval(self._SWITCH, 3, self.key, layout.current, layout.meta(version),
                                self.value, version, *fields):
            raise RedisLost(f"lost {self.key} before switching to {version} (Redis emptied or "
                            "restarted?); nothing switched")

    def check(self) -> None:
        if self.lost.is_set():
            raise RedisLost(f"lost {self.key} (expired while Redis was unreachable, or Redis was "
                            "emptied); stopping before serving anything")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.client.eval(self._RELEASE, 1, self.key, self.value)
        except Exception:  # the TTL frees it anyway
            pass
