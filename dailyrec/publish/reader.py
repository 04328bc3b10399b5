"""Reading recommendations from Redis: the API's half of the version protocol (dailyrec/publish/keys.py).

A lookup is one round trip: a small Lua script (atomic in Redis) reads `current` and, if it still
names the version this process saw last, the user's record from that version's bucket (and, when
asked, their history; or an item's similar items). Versions
never change once complete, so what the API knows about one (its item ids, fallback list, bucket
count, and on first use its item factors, for folding in visitors) is loaded once and cached; when `current` has moved on, the lookup loads the new version and
asks again. Pointer and record come from the same instant, so even a version removed right after a
switch cannot be half-read. Both keys are passed as KEYS, as Redis Cluster would require.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import redis

from dailyrec.model.foldin import FoldIn
from dailyrec.publish import keys as K


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
    kind: str = "model"  # "model", or "popular": the most-popular list only
    n_item_buckets: int = 0  # 0: no similar items in this version
    explain_items: int = 0  # 0: no user histories in this version
    fold_in_confidence: float | None = None  # None: no item factors in this version
    regularization: float = 0.0
    n_factors: int = 0
    run_date: str | None = None  # the day its data ends (run.date)
    max_age_hours: float | None = None  # serving.max_age_hours when it was published
    _positions: dict = field(default_factory=dict, compare=False, repr=False)
    # Per-process values derived from this version (the API's pre-encoded JSON of its item ids,
    # serving/render.py): a version never changes once complete, so neither do they, and a switch
    # brings a new Version, with an empty memo.
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def positions(self, item_ids: list[str]) -> np.ndarray:
        """Item ids -> positions in this version's catalogue (-1: unknown)."""
        if not self._positions and self.item_ids:
            self._positions.update(zip(self.item_ids, range(len(self.item_ids))))
        return np.array([self._positions.get(i, -1) for i in item_ids], dtype=np.int64)


@dataclass(frozen=True)
class Freshness:
    """How old the served lists' data is: hours since the end of the day they were built from
    (run.date 00:00 UTC), against serving.max_age_hours as it was when they were published."""

    version: str
    run_date: str | None
    age_hours: float | None  # None: a version without a run_date
    max_age_hours: float | None  # None: published without one; no age is judged

    @property
    def stale(self) -> bool:
        return (self.age_hours is not None and self.max_age_hours is not None
                and self.age_hours > self.max_age_hours)

    def as_dict(self) -> dict:
        return {"model_version": self.version, "run_date": self.run_date,
                "age_hours": None if self.age_hours is None else round(self.age_hours, 2),
                "max_age_hours": self.max_age_hours, "stale": self.stale}


def freshness(version: Version, now: dt.datetime | None = None) -> Freshness:
    now = now or dt.datetime.now(dt.timezone.utc)
    age = None
    if version.run_date:
        data_end = dt.datetime.combine(dt.date.fromisoformat(version.run_date), dt.time(),
                                       tzinfo=dt.timezone.utc)
        age = (now - data_end).total_seconds() / 3600
    return Freshness(version.name, version.run_date, age, version.max_age_hours)


# flags=no-writes (Redis >= 7): a read-only script, so it still runs during CLIENT PAUSE WRITE
# (failovers) and on read replicas. KEYS[2..]: hashes to read ARGV[2] from.
_LOOKUP = """#!lua flags=no-writes
local current = redis.call('GET', KEYS[1])
if current and current == ARGV[1] then
  local out = {current}
  for i = 2, #KEYS do out[i] = redis.call('HGET', KEYS[i], ARGV[2]) end
  return out
end
return {current}
"""


class _Held:
    """A pooled connection that one thread keeps between its lookups (returned to the pool when
    the thread ends)."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn):
        self.conn = conn


class RecommendationStore:
    def __init__(self, client: redis.Redis, layout: K.Layout):
        self.client = client
        self.layout = layout
        self._lookup = client.register_script(_LOOKUP)  # EVALSHA; reloaded if Redis restarted
        self._held = threading.local()
        self._versions: dict[str, Version] = {}
        self._fold_ins: dict[str, FoldIn] = {}
        self._latest: Version | None = None
        self._loading = threading.Lock()

    def lookup(self, user_id: str, history: bool = False
               ) -> tuple[Version, list[tuple[int, float]] | None, list[tuple[int, float]] | None]:
        """(served version, the user's [(item position, score)] or None if not in it, and with
        history=True their most confident past [(item position, confidence)] or None)."""
        def keys(v: Version) -> list[str]:
            bucket = K.bucket_of(user_id, v.n_buckets)
            wanted = [self.layout.bucket(v.name, bucket)]
            if history and v.explain_items:
                wanted.append(self.layout.history(v.name, bucket))
            return wanted

        version, raw = self._read(user_id, keys)
        record = K.decode_record(raw[0], version.top_n) if raw[0] is not None else None
        past = None
        if len(raw) > 1 and raw[1] is not None:
            past = K.decode_record(raw[1], version.explain_items)
        return version, record, past

    def lookup_record(self, user_id: str) -> tuple[Version, bytes | None]:
        """(served version, the user's record as stored, or None if not in it): lookup() without
        decoding, for a caller that renders the record itself (serving/render.py)."""
        def keys(v: Version) -> list[str]:
            return [self.layout.bucket(v.name, K.bucket_of(user_id, v.n_buckets))]

        version, raw = self._read(user_id, keys)
        return version, raw[0]

    def similar(self, item_id: str) -> tuple[Version, list[tuple[int, float]] | None]:
        """(served version, the item's [(item position, similarity)] or None: an item it does
        not know, or a version without similar items)."""
        def keys(v: Version) -> list[str]:
            if not v.n_item_buckets:
                return []
            return [self.layout.similar(v.name, K.bucket_of(item_id, v.n_item_buckets))]

        version, raw = self._read(item_id, keys)
        if not raw or raw[0] is None:
            return version, None
        return version, K.decode_record(raw[0], version.top_n)

    def _read(self, field_name: str, keys) -> tuple[Version, list]:
        """One consistent read: the served version and field_name from each of keys(version)."""
        try:
            for _ in range(5):
                hint = self._latest
                if hint is not None:
                    replies = self._eval_lookup([self.layout.current, *keys(hint)],
                                                [hint.name, field_name])
                else:
                    replies = [self.client.get(self.layout.current)]
                current = replies[0].decode() if replies[0] is not None else None
                if current is None:
                    raise NotPublished("no recommendations have been published yet")
                if hint is not None and current == hint.name:
                    wanted = len(keys(hint))
                    return hint, list(replies[1:]) + [None] * (wanted - len(replies) + 1)
                try:
                    self._latest = self.version(current)
                except _VersionGone:
                    continue
            raise RedisUnavailable("the served version kept changing while being read")
        except redis.exceptions.ConnectionError as err:  # includes timeouts' cousins and LOADING
            raise RedisUnavailable(str(err)) from err
        except redis.exceptions.TimeoutError as err:
            raise RedisUnavailable(str(err)) from err

    def _eval_lookup(self, keys: list[str], args: list[str]) -> list:
        """The lookup script's reply. EVALSHA on a connection this thread keeps: what redis-py's
        Script call does, without taking a connection from the pool (and checking it) on every
        request. The same retry as the client's
        (connection.client: one, no backoff, on a fresh connection); a Redis that lost the
        script (restarted) gets it through redis-py's Script, which loads it."""
        held = getattr(self._held, "value", None)
        if held is None:
            held = self._held.value = self._hold()
        conn = held.conn
        packed = conn.pack_command("EVALSHA", self._lookup.sha, len(keys), *keys, *args)
        for attempt in range(2):
            try:
                conn.send_packed_command(packed)
                return conn.read_response()
            except redis.exceptions.NoScriptError:
                return self._lookup(keys=keys, args=args)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                conn.disconnect()  # the next attempt (or request) connects afresh
                if attempt:
                    raise
            except BaseException:
                conn.disconnect()  # a reply may be left half read
                raise
        raise AssertionError("unreachable")

    def _hold(self) -> _Held:
        pool = self.client.connection_pool
        conn = pool.get_connection()
        held = _Held(conn)
        weakref.finalize(held, pool.release, conn)  # when the thread (its local) goes
        return held

    def fold_in(self, version: Version) -> FoldIn | None:
        """The version's item factors as a FoldIn, loaded once per process (None: the version
        has none: a most-popular version, or one written before fold-in existed)."""
        if version.fold_in_confidence is None:
            return None
        found = self._fold_ins.get(version.name)
        if found is not None:
            return found
        with self._loading:
            found = self._fold_ins.get(version.name)
            if found is not None:
                return found
            try:
                raw = self.client.get(self.layout.factors(version.name))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
                raise RedisUnavailable(str(err)) from err
            if raw is None:
                return None
            factors = np.frombuffer(raw, dtype="<f4").reshape(len(version.item_ids),
                                                             version.n_factors)
            found = FoldIn(factors, version.regularization)
            if len(self._fold_ins) >= 2:  # the served one and the one before a switch
                self._fold_ins.pop(next(iter(self._fold_ins)))
            self._fold_ins[version.name] = found
            return found

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
            if meta.get("format") not in K.READABLE_FORMATS:
                raise RuntimeError(f"version {name} has key layout format {meta.get('format')!r}; "
                                   f"this API reads formats {', '.join(K.READABLE_FORMATS)}")
            top_n = int(meta["top_n"])
            confidence = meta.get("fold_in_confidence")
            found = Version(name=name, top_n=top_n, n_buckets=int(meta["buckets"]),
                            item_ids=json.loads(items), fallback=K.decode_record(fallback, top_n),
                            kind=meta.get("kind", "model"),
                            n_item_buckets=int(meta.get("item_buckets") or 0),
                            explain_items=int(meta.get("explain_items") or 0),
                            fold_in_confidence=float(confidence) if confidence else None,
                            regularization=float(meta.get("regularization") or 0.0),
                            n_factors=int(meta.get("factors") or 0),
                            run_date=meta.get("run_date") or None,
                            max_age_hours=float(meta["max_age_hours"])
                            if meta.get("max_age_hours") else None)
            # keep a few: the served one and any a rollback may return to
            if len(self._versions) >= 4:
                self._versions.pop(next(iter(self._versions)))
            self._versions[name] = found
            return found

    def ready(self) -> Version:
        """The served version, once Redis answers and the version is readable."""
        try:
            current = self.client.get(self.layout.current)
            if current is None:
                raise NotPublished("no recommendations have been published yet")
            self._latest = self.version(current.decode())
            return self._latest
        except _VersionGone:
            raise NotPublished("the served version is being replaced; try again") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
            raise RedisUnavailable(str(err)) from err
