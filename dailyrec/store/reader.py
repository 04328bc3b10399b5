"""Reading recommendations from Redis: the API's half of the version protocol (dailyrec/store/keys.py).

A lookup is one round trip: a small Lua script (atomic in Redis) reads `current` and, if it still
names the version this process saw last, the user's record from that version's bucket. Versions
never change once complete, so what the API knows about one (its item ids, fallback list, bucket
count) is loaded once and cached; when `current` has moved on, the lookup loads the new version and
asks again. Pointer and record come from the same instant, so even a version removed right after a
switch cannot be half-read. Both keys are passed as KEYS, as Redis Cluster would require.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import redis

from dailyrec.store import keys as K


class RedisUnavailable(Exception):
    """Redis cannot be reached (down, restarting, loading, timing out): the API answers 503."""


class NotPublished(Exception):
    """Redis is up but serves no version yet: the API answers 503."""


class _VersionGone(Exception):
    """The version `current` named was removed before it could be read; look again."""


@dataclass(frozen=True)
class Version:
    name: str
    top_n: int
    n_buckets: int
    item_ids: list[str]
    fallback: list[tuple[int, float]]


# flags=no-writes (Redis >= 7): a read-only script, so it still runs during CLIENT PAUSE WRITE
# (failovers) and on read replicas.
_LOOKUP = """#!lua flags=no-writes
local current = redis.call('GET', KEYS[1])
if current and current == ARGV[1] then
  return {current, redis.call('HGET', KEYS[2], ARGV[2])}
end
return {current}
"""


class RecommendationStore:
    def __init__(self, client: redis.Redis, layout: K.Layout):
        self.client = client
        self.layout = layout
        self._lookup = client.register_script(_LOOKUP)  # EVALSHA; reloaded if Redis restarted
        self._versions: dict[str, Version] = {}
        self._latest: Version | None = None
        self._loading = threading.Lock()

    def lookup(self, user_id: str) -> tuple[Version, list[tuple[int, float]] | None]:
        """(served version, the user's [(item position, score)] or None if not in it)."""
        try:
            for _ in range(5):
                hint = self._latest
                if hint is not None:
                    bucket = self.layout.bucket(hint.name, K.bucket_of(user_id, hint.n_buckets))
                    replies = self._lookup(keys=[self.layout.current, bucket],
                                           args=[hint.name, user_id])
                else:
                    replies = [self.client.get(self.layout.current)]
                current = replies[0].decode() if replies[0] is not None else None
                if current is None:
                    raise NotPublished("no recommendations have been published yet")
                if hint is not None and current == hint.name:
                    raw = replies[1] if len(replies) > 1 else None
                    return hint, (K.decode_record(raw, hint.top_n) if raw is not None else None)
                try:
                    self._latest = self.version(current)
                except _VersionGone:
                    continue
            raise RedisUnavailable("the served version kept changing while being read")
        except redis.exceptions.ConnectionError as err:  # includes timeouts' cousins and LOADING
            raise RedisUnavailable(str(err)) from err
        except redis.exceptions.TimeoutError as err:
            raise RedisUnavailable(str(err)) from err

    def version(self, name: str) -> Version:
        """A complete version's item ids, fallback and shape, loaded once."""
        found = self._versions.get(name)
        if found is not None:
            return found
        with self._loading:
            found = self._versions.get(name)
            if found is not None:
                return found
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(self.layout.meta(name))
            pipe.get(self.layout.items(name))
            pipe.get(self.layout.fallback(name))
            meta, items, fallback = pipe.execute()
            meta = {k.decode(): v.decode() for k, v in meta.items()}
            if meta.get("status") != "complete" or items is None or fallback is None:
                raise _VersionGone(name)
            if meta.get("format") != K.FORMAT:
                raise RuntimeError(f"version {name} has key layout format {meta.get('format')!r}; "
                                   f"this API reads format {K.FORMAT}")
            top_n = int(meta["top_n"])
            found = Version(name=name, top_n=top_n, n_buckets=int(meta["buckets"]),
                            item_ids=json.loads(items), fallback=K.decode_record(fallback, top_n))
            # keep a few: the served one and any a rollback may return to
            if len(self._versions) >= 4:
                self._versions.pop(next(iter(self._versions)))
            self._versions[name] = found
            return found

    def ready(self) -> str:
        """The served version's name, once Redis answers and the version is readable."""
        try:
            current = self.client.get(self.layout.current)
            if current is None:
                raise NotPublished("no recommendations have been published yet")
            self._latest = self.version(current.decode())
            return self._latest.name
        except _VersionGone:
            raise NotPublished("the served version is being replaced; try again") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
            raise RedisUnavailable(str(err)) from err
