"""The writer half of the version protocol: publish a version with one switch, roll back, tidy.

A publish (stages/publish.py checks the quality gate first):
  1. (the stage) obeys the quality gate: metrics/gate.json must say passed=true, unless --force;
  2. takes the publish lock (one publish or rollback at a time), removes what a killed one left;
  3. numbers a new version (run.date + a Redis sequence) and registers it as `writing`;
  4. writes the most-popular list (users per item) as the fallback for unknown users;
  5. scores users with implicit's batch recommend, publish.batch_size users at a time, leaving out
     items they already have (publish.filter_already_liked), and writes each batch with pipelined
     HSETs (raw RESP built with Arrow: no Python loop per user) while the next batch is scored,
     with a progress bar;
  6. checks the counts in Redis against what it wrote, then, in ONE atomic Lua script, checks it
     still holds the lock, marks the version complete and points `current` at it: readers go from
     one whole version to the other at once;
  7. keeps the newest publish.keep_versions complete versions (and the served one) for rollback and
     removes the rest with UNLINK (freed off Redis's main thread);
  8. (the stage) writes metrics/publish.json and moves the MLflow alias to the served version.

The key layout is dailyrec/store/keys.py; connection settings (REDIS_URL, password, TLS) are in
dailyrec/store/connection.py; the API's half is dailyrec/store/reader.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from dailyrec.errors import Busy, ConfigError, DataError
from dailyrec.model import artifacts
from dailyrec.model.recommender import ALSRecommender, PopularRecommender
from dailyrec.settings.serving import PublishSettings
from dailyrec.store import keys as K

LOCK_TTL_S = 60  # renewed every LOCK_TTL_S/4 by a heartbeat thread while publish runs
COMMANDS_PER_ROUND_TRIP = 1024


# --- the publish lock ---------------------------------------------------------------------------

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
                                 "token": uuid.uuid4().hex, "purpose": purpose, "since": _now()})
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PublishLock":
        if not self.client.set(self.key, self.value, nx=True, px=self.ttl_ms):
            held = self.client.get(self.key)
            if held is None or not self._take_over_from_dead(held):
                raise Busy(f"{self.key} is held by {_text(held)}: another publish or rollback "
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
            raise RuntimeError(f"lost {self.key} before switching to {version}; nothing switched")

    def check(self) -> None:
        if self.lost.is_set():
            raise RuntimeError(f"lost {self.key} (expired while Redis was unreachable?); "
                               "stopping before serving anything")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.client.eval(self._RELEASE, 1, self.key, self.value)
        except Exception:  # the TTL frees it anyway
            pass

# --- writing a version --------------------------------------------------------------------------

def hset_commands(layout: K.Layout, version: str, buckets: np.ndarray, user_ids,
                  records: np.ndarray) -> list[tuple[bytes, memoryview]]:
    """One raw RESP `HSET bucket user record ...` per run of equal buckets (buckets sorted).

    Arrow builds every user's `$len\\r\\nid\\r\\n$width\\r\\nrecord\\r\\n` in one vectorised join,
    so a bucket's fields are one contiguous slice of a buffer; only the bucket loop is Python.
    """
    n, width = records.shape
    if n == 0:
        return []
    uid = user_ids.cast(pa.binary())
    lengths = pc.cast(pc.binary_length(uid), pa.string()).cast(pa.binary())
    values = pa.Array.from_buffers(pa.binary(width), n,
                                   [None, pa.py_buffer(np.ascontiguousarray(records))])

    def lit(b: bytes):
        return pa.scalar(b, pa.binary())

    pieces = pc.binary_join_element_wise(lit(b"$"), lengths, lit(b"\r\n"), uid,
                                         lit(b"\r\n$%d\r\n" % width), values.cast(pa.binary()),
                                         lit(b"\r\n"), lit(b""))
    offsets = np.frombuffer(pieces.buffers()[1], dtype=np.int32, count=n + 1,
                            offset=pieces.offset * 4)
    data = memoryview(pieces.buffers()[2])
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    ends = np.r_[starts[1:], n]
    commands = []
    for bucket, s, e in zip(buckets[starts].tolist(), starts.tolist(), ends.tolist()):
        key = layout.bucket(version, bucket).encode()
        header = b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n" % (2 + 2 * (e - s), len(key), key)
        commands.append((header, data[offsets[s]:offsets[e]]))
    return commands


def send_commands(client, commands: list[tuple[bytes, memoryview]]) -> int:
    """Pipeline raw commands on one connection; returns the sum of their integer replies."""
    total = 0
    conn = client.connection_pool.get_connection()
    try:
        for start in range(0, len(commands), COMMANDS_PER_ROUND_TRIP):
            group = commands[start:start + COMMANDS_PER_ROUND_TRIP]
            conn.send_packed_command([b"".join(part for command in group for part in command)],
                                     check_health=False)
            for _ in group:
                total += conn.read_response()
    except BaseException:
        conn.disconnect()  # replies may be left unread: never hand this connection back as is
        raise
    finally:
        client.connection_pool.release(conn)
    return total


def bucket_lengths(client, layout: K.Layout, version: str, n_buckets: int) -> int:
    total = 0
    for start in range(0, n_buckets, COMMANDS_PER_ROUND_TRIP):
        pipe = client.pipeline(transaction=False)
        for b in range(start, min(n_buckets, start + COMMANDS_PER_ROUND_TRIP)):
            pipe.hlen(layout.bucket(version, b))
        total += sum(pipe.execute())
    return total


def new_version(client, layout: K.Layout, run_date: dt.date, meta: dict) -> str:
    """Number and register a version (status `writing`) in one transaction."""
    seq = client.incr(layout.sequence)
    version = f"{run_date.isoformat()}.{seq}"
    pipe = client.pipeline(transaction=True)
    pipe.zadd(layout.versions, {version: seq})
    pipe.hset(layout.meta(version), mapping={**meta, "status": "writing", "seq": seq,
                                             "format": K.FORMAT, "created_at": _now()})
    pipe.execute()
    return version


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def version_table(client, layout: K.Layout) -> list[dict]:
    """Registered versions, oldest first, with their meta and whether they are served."""
    current = _text(client.get(layout.current))
    versions = [_text(v) for v in client.zrange(layout.versions, 0, -1)]
    pipe = client.pipeline(transaction=False)
    for v in versions:
        pipe.hgetall(layout.meta(v))
    rows = []
    for v, meta in zip(versions, pipe.execute()):
        meta = {_text(k): _text(x) for k, x in meta.items()}
        rows.append({"version": v, "served": v == current, **meta})
    return rows


def version_meta(client, layout: K.Layout, version: str) -> dict[str, str]:
    """A version's meta hash, decoded."""
    return {_text(k): _text(v) for k, v in client.hgetall(layout.meta(version)).items()}


def remove_version(client, layout: K.Layout, version: str) -> None:
    """UNLINK a version's keys (freed off Redis's main thread), then unregister it.
    Never the served one."""
    if _text(client.get(layout.current)) == version:
        raise RuntimeError(f"refusing to remove the served version {version}")
    buckets = client.hget(layout.meta(version), "buckets")
    if buckets is not None:
        names = layout.version_keys(version, int(buckets))
        names = names[3:] + names[:3]  # meta last: a crash midway can still find the rest
    else:  # killed before its meta was written: find its keys without blocking Redis
        names = [k for k in client.scan_iter(match=layout.version_pattern(version), count=1000)]
    for start in range(0, len(names), 1000):
        client.unlink(*names[start:start + 1000])
    client.zrem(layout.versions, version)


def tidy(client, layout: K.Layout, keep: int) -> list[str]:
    """Remove unfinished versions and complete ones beyond the newest keep.

    Only called under the publish lock, so an unfinished version is one a killed publish left.
    """
    rows = version_table(client, layout)
    complete = [r["version"] for r in rows if r.get("status") == "complete"]
    served = next((r["version"] for r in rows if r["served"]), None)
    kept = set(complete[-keep:]) | {served}
    removed = []
    for r in rows:
        if r["version"] not in kept:
            remove_version(client, layout, r["version"])
            removed.append(r["version"])
    return removed


def publish(bundle: artifacts.ModelBundle, client, cfg: PublishSettings, *, run_date: dt.date,
            layout: K.Layout | None = None, gate: dict | None = None, model_run: dict | None = None,
            progress: bool | None = None) -> dict:
    """Write the bundle's recommendations as a new version and serve it; returns the summary."""
    layout = layout or K.Layout.from_env()
    t0 = time.perf_counter()
    n_users, n_items = len(bundle.user_ids), len(bundle.item_ids)
    _check_bundle(bundle)
    with PublishLock(client, layout.lock, "publish") as lock:
        removed = tidy(client, layout, cfg.keep_versions)
        previous = _text(client.get(layout.current))
        n_buckets = K.bucket_count(n_users)
        version = new_version(client, layout, run_date, {
            "top_n": cfg.top_n, "buckets": n_buckets, "users": n_users, "items": n_items,
            "filter_already_liked": int(cfg.filter_already_liked), "run_date": run_date.isoformat(),
            "forced": int(bool(gate and gate.get("forced"))),
            "model_run": json.dumps(model_run or {}, sort_keys=True, default=str)})
        try:
            written, empty, t_score, t_wait = _write_users(bundle, client, layout, version, cfg,
                                                           n_buckets, lock, progress)
            t_written = time.perf_counter()
            _verify(client, layout, version, n_buckets, expected=n_users - empty, written=written)
            lock.switch(layout, version, {"status": "complete", "completed_at": _now(),
                                          "users_written": written})
        except BaseException:
            try:  # best effort; a killed publish is tidied by the next one
                remove_version(client, layout, version)
            except Exception:
                pass
            raise
        removed += tidy(client, layout, cfg.keep_versions)
        kept = [r["version"] for r in version_table(client, layout)]
    done = time.perf_counter()
    seconds = done - t0
    return {
        "version": version, "previous_version": previous, "users": n_users,
        "users_written": written, "users_without_recommendations": empty, "items": n_items,
        "top_n": cfg.top_n, "filter_already_liked": cfg.filter_already_liked,
        "buckets": n_buckets, "kept_versions": kept, "removed_versions": removed,
        "seconds": {"total": round(seconds, 3), "score_and_encode": round(t_score, 3),
                    "waiting_for_redis": round(t_wait, 3),
                    "verify_and_switch": round(done - t_written, 3)},
        "users_per_second": round(written / seconds, 1) if seconds > 0 else None,
    }


def _write_users(bundle, client, layout: K.Layout, version: str, cfg: PublishSettings,
                 n_buckets: int,
                 lock, progress: bool | None) -> tuple[int, int, float, float]:
    """Items table, fallback, then every user's record; returns (written, empty, t_score, t_wait).

    Redis writes run on a second thread while the next batch is scored (both release the GIL).
    """
    user_ids, item_ids = bundle.user_ids, bundle.item_ids
    n_users = len(user_ids)
    fallback = K.encode_records(*PopularRecommender(bundle.user_items).top_list(cfg.top_n))
    pipe = client.pipeline(transaction=False)
    pipe.set(layout.items(version), json.dumps(item_ids.tolist()))
    pipe.set(layout.fallback(version), fallback[0].tobytes())
    pipe.execute()

    all_ids = pa.array(np.asarray(user_ids, dtype=str))
    buckets = K.buckets_of(all_ids, n_buckets)
    # scoring users in bucket order makes each batch fill whole buckets: ~one HSET per bucket
    order = np.argsort(buckets, kind="stable")
    written = empty = 0
    t_score = t_wait = 0.0
    bar = tqdm(total=n_users, unit="user", unit_scale=True, desc=f"publish {version}",
               mininterval=1.0, disable=None if progress is None else not progress,
               file=sys.stderr)
    model = ALSRecommender.from_bundle(bundle)
    with ThreadPoolExecutor(max_workers=1) as writer, threadpool_limits(1, "blas"):
        pending = None
        for start in range(0, n_users, cfg.batch_size):
            t = time.perf_counter()
            rows = order[start:start + cfg.batch_size]
            positions, scores = model.recommend(rows, None, cfg.top_n, cfg.filter_already_liked)
            has_any = positions[:, 0] >= 0
            empty += int((~has_any).sum())
            rows = rows[has_any]
            commands = hset_commands(layout, version, buckets[rows], all_ids.take(rows),
                                     K.encode_records(positions[has_any], scores[has_any]))
            t_score += time.perf_counter() - t
            t = time.perf_counter()
            if pending is not None:
                written += pending.result()
            t_wait += time.perf_counter() - t
            pending = writer.submit(send_commands, client, commands)
            lock.check()
            bar.update(len(positions))
        if pending is not None:
            t = time.perf_counter()
            written += pending.result()
            t_wait += time.perf_counter() - t
    bar.close()
    return written, empty, t_score, t_wait


def _verify(client, layout: K.Layout, version: str, n_buckets: int, *, expected: int,
            written: int) -> None:
    stored = bucket_lengths(client, layout, version, n_buckets)
    if written != expected or stored != expected:
        raise RuntimeError(f"Redis holds {stored} users for version {version} (HSET added "
                           f"{written}), expected {expected}; the version is not served")
    if client.exists(layout.items(version), layout.fallback(version)) != 2:
        raise RuntimeError(f"version {version}: items or fallback key missing; not served")


def _check_bundle(bundle: artifacts.ModelBundle) -> None:
    n_users, n_items = len(bundle.user_ids), len(bundle.item_ids)
    problems = []
    if bundle.user_items.shape != (n_users, n_items):
        problems.append(f"user_items is {bundle.user_items.shape}, ids give ({n_users}, {n_items})")
    if bundle.model.user_factors.shape[0] != n_users:
        problems.append(f"{bundle.model.user_factors.shape[0]} user factors for {n_users} users")
    if bundle.model.item_factors.shape[0] != n_items:
        problems.append(f"{bundle.model.item_factors.shape[0]} item factors for {n_items} items")
    if problems:
        raise DataError(f"{artifacts.MODELS_DIR}: inconsistent model files: "
                            + "; ".join(problems))


# --- rollback -----------------------------------------------------------------------------------

def rollback(client, layout: K.Layout | None = None, to: str | None = None) -> tuple[str, str]:
    """Point `current` at an older complete version; returns (was, now)."""
    layout = layout or K.Layout.from_env()
    with PublishLock(client, layout.lock, "rollback") as lock:
        rows = version_table(client, layout)
        complete = [r["version"] for r in rows if r.get("status") == "complete"]
        current = next((r["version"] for r in rows if r["served"]), None)
        if to is not None:
            if to not in complete:
                raise ConfigError(f"rollback: version {to!r} is not a complete version in Redis "
                                    f"(kept: {', '.join(complete) or 'none'})")
            target = to
        else:
            older = complete[: complete.index(current)] if current in complete else []
            if not older:
                raise ConfigError(f"rollback: no complete version older than {current} is kept "
                                    f"(kept: {', '.join(complete) or 'none'})")
            target = older[-1]
        lock.switch(layout, target)
        return current, target
