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
  6. writes each user's most confident past items (publish.explain_items, for explanations), the
     item factors (for folding in visitors at request time) and every item's top_n similar items
     (publish.similar_items; implicit's similar_items, cosine of the item factors, in batches);
  7. checks the counts in Redis against what it wrote, then, in ONE atomic Lua script, checks it
     still holds the lock, marks the version complete and points `current` at it: readers go from
     one whole version to the other at once;
  8. keeps the newest publish.keep_versions complete versions (and the served one) for rollback and
     removes the rest with UNLINK (freed off Redis's main thread);
  9. (the stage) writes metrics/publish.json and moves the MLflow alias to the served version.

publish_popular writes a version holding only the most-popular list (kind "popular"): what a
brand-new deployment serves until a model passes the gate.

The key layout is dailyrec/publish/keys.py; connection settings (REDIS_URL, password, TLS) are in
dailyrec/publish/connection.py; the API's half is dailyrec/publish/reader.py.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from dailyrec.core.errors import ConfigError, DataError, NotPublished
from dailyrec.model import artifacts
from dailyrec.model.recommender import ALSRecommender, PopularRecommender
from dailyrec.publish.settings import PublishSettings
from dailyrec.publish import keys as K
from dailyrec.publish.lock import PublishLock, RedisLost, as_text, now
from dailyrec.publish.lists import fold_in_confidence, histories, similar_items

COMMANDS_PER_ROUND_TRIP = 1024


# --- the publish lock ---------------------------------------------------------------------------


# --- writing a version --------------------------------------------------------------------------

def hset_commands(key_of: Callable[[int], str], buckets: np.ndarray, user_ids,
                  records: np.ndarray) -> list[tuple[bytes, memoryview]]:
    """One raw RESP `HSET key_of(bucket) id record ...` per run of equal buckets (buckets
    sorted).

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
        key = key_of(bucket).encode()
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


def bucket_lengths(client, key_of: Callable[[int], str], n_buckets: int) -> int:
    total = 0
    for start in range(0, n_buckets, COMMANDS_PER_ROUND_TRIP):
        pipe = client.pipeline(transaction=False)
        for b in range(start, min(n_buckets, start + COMMANDS_PER_ROUND_TRIP)):
            pipe.hlen(key_of(b))
        total += sum(pipe.execute())
    return total


def _max_age(cfg: PublishSettings) -> dict[str, str]:
    """serving.max_age_hours rides with the version: the API reads it from there (it never
    reads params.yaml)."""
    return {} if cfg.max_age_hours is None else {"max_age_hours": repr(float(cfg.max_age_hours))}


def new_version(client, layout: K.Layout, run_date: dt.date, meta: dict) -> str:
    """Number and register a version (status `writing`) in one transaction."""
    seq = client.incr(layout.sequence)
    version = f"{run_date.isoformat()}.{seq}"
    pipe = client.pipeline(transaction=True)
    pipe.zadd(layout.versions, {version: seq})
    pipe.hset(layout.meta(version), mapping={**meta, "status": "writing", "seq": seq,
                                             "format": K.FORMAT, "created_at": now()})
    pipe.execute()
    return version


def version_table(client, layout: K.Layout) -> list[dict]:
    """Registered versions, oldest first, with their meta and whether they are served."""
    current = as_text(client.get(layout.current))
    versions = [as_text(v) for v in client.zrange(layout.versions, 0, -1)]
    pipe = client.pipeline(transaction=False)
    for v in versions:
        pipe.hgetall(layout.meta(v))
    rows = []
    for v, meta in zip(versions, pipe.execute()):
        meta = {as_text(k): as_text(x) for k, x in meta.items()}
        rows.append({"version": v, "served": v == current, **meta})
    return rows


def version_meta(client, layout: K.Layout, version: str) -> dict[str, str]:
    """A version's meta hash, decoded."""
    return {as_text(k): as_text(v) for k, v in client.hgetall(layout.meta(version)).items()}


def remove_version(client, layout: K.Layout, version: str) -> None:
    """UNLINK a version's keys (freed off Redis's main thread), then unregister it.
    Never the served one."""
    if as_text(client.get(layout.current)) == version:
        raise RuntimeError(f"refusing to remove the served version {version}")
    buckets, item_buckets = client.hmget(layout.meta(version), "buckets", "item_buckets")
    if buckets is not None:
        names = layout.version_keys(version, int(buckets), int(item_buckets or 0))
        names = names[1:] + names[:1]  # meta last: a crash midway can still find the rest
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


def newer_served(client, layout: K.Layout, run_date: dt.date) -> tuple[str, str] | None:
    """(version, its run.date) when the served version was built from a later run.date."""
    current = as_text(client.get(layout.current))
    served_day = as_text(client.hget(layout.meta(current), "run_date")) if current else None
    if served_day and served_day > run_date.isoformat():
        return current, served_day
    return None


def publish(bundle: artifacts.ModelBundle, client, cfg: PublishSettings, *, run_date: dt.date,
            layout: K.Layout | None = None, gate: dict | None = None, model_run: dict | None = None,
            progress: bool | None = None, replace_newer: bool = False) -> dict:
    """Write the bundle's recommendations as a new version and serve it; returns the summary.
    A model of an older run.date than the served version's is refused (NotPublished), unless
    replace_newer: rebuilding a past day must not take newer lists away from users."""
    layout = layout or K.Layout.from_env()
    t0 = time.perf_counter()
    n_users, n_items = len(bundle.user_ids), len(bundle.item_ids)
    _check_bundle(bundle)
    factors = bundle.model.item_factors
    with PublishLock(client, layout.lock, "publish") as lock:
        newer = None if replace_newer else newer_served(client, layout, run_date)
        if newer is not None:
            raise NotPublished(f"not replacing the served version {newer[0]} (run.date "
                               f"{newer[1]}) with a model of the older run.date {run_date}: "
                               "rebuilding a past day leaves the newer lists served "
                               "(`python -m stages.publish --force` replaces them)")
        removed = tidy(client, layout, cfg.keep_versions)
        previous = as_text(client.get(layout.current))
        n_buckets = K.bucket_count(n_users)
        n_item_buckets = K.bucket_count(n_items) if cfg.similar_items else 0
        version = new_version(client, layout, run_date, {
            "kind": "model", "top_n": cfg.top_n, "buckets": n_buckets, "users": n_users,
            "items": n_items, "item_buckets": n_item_buckets,
            "explain_items": cfg.explain_items, "factors": factors.shape[1],
            "regularization": repr(float(bundle.model.regularization)),
            "fold_in_confidence": repr(fold_in_confidence(bundle)),
            "filter_already_liked": int(cfg.filter_already_liked), "run_date": run_date.isoformat(),
            **_max_age(cfg), "forced": int(bool(gate and gate.get("forced"))),
            "model_run": json.dumps(model_run or {}, sort_keys=True, default=str)})
        try:
            added, empty, t_score, t_wait = _write_users(bundle, client, layout, version, cfg,
                                                         n_buckets, lock, progress)
            t_written = time.perf_counter()
            similar = _write_items(bundle, client, layout, version, cfg, n_item_buckets, lock)
            t_items = time.perf_counter()
            written = n_users - empty
            _verify(client, layout, version, n_buckets, expected=written, added=added,
                    histories=cfg.explain_items > 0)
            if n_item_buckets and bucket_lengths(client, lambda b: layout.similar(version, b),
                                                 n_item_buckets) != similar:
                raise RedisLost(f"version {version}: Redis holds fewer similar-item lists "
                                f"than the {similar} written; not served")
            lock.switch(layout, version, {"status": "complete", "completed_at": now(),
                                          "users_written": written,
                                          "items_with_similar": similar})
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
        "version": version, "kind": "model", "previous_version": previous, "users": n_users,
        "users_written": written, "users_without_recommendations": empty, "items": n_items,
        "items_with_similar": similar, "top_n": cfg.top_n,
        "filter_already_liked": cfg.filter_already_liked, "explain_items": cfg.explain_items,
        "buckets": n_buckets, "item_buckets": n_item_buckets, "kept_versions": kept,
        "removed_versions": removed,
        "seconds": {"total": round(seconds, 3), "score_and_encode": round(t_score, 3),
                    "waiting_for_redis": round(t_wait, 3),
                    "similar_items_and_factors": round(t_items - t_written, 3),
                    "verify_and_switch": round(done - t_items, 3)},
        "users_per_second": round(written / seconds, 1) if seconds > 0 else None,
    }


def publish_popular(bundle: artifacts.ModelBundle, client, cfg: PublishSettings, *,
                    run_date: dt.date, layout: K.Layout | None = None, reason: str = "") -> str:
    """Serve the most-popular list as a version of its own (kind "popular": no users, no
    factors), if nothing is served yet. Returns the version, or None when one is served."""
    layout = layout or K.Layout.from_env()
    with PublishLock(client, layout.lock, "publish") as lock:
        if client.get(layout.current) is not None:
            return None
        tidy(client, layout, cfg.keep_versions)
        version = new_version(client, layout, run_date, {
            "kind": "popular", "top_n": cfg.top_n, "buckets": 1, "users": 0,
            "items": len(bundle.item_ids), "item_buckets": 0, "explain_items": 0,
            "run_date": run_date.isoformat(), **_max_age(cfg), "forced": 0, "reason": reason[:500],
            "model_run": "{}"})
        try:
            _write_items_table(bundle, client, layout, version, cfg)
            lock.switch(layout, version, {"status": "complete", "completed_at": now(),
                                          "users_written": 0})
        except BaseException:
            try:
                remove_version(client, layout, version)
            except Exception:
                pass
            raise
        return version


def _write_items_table(bundle, client, layout: K.Layout, version: str,
                       cfg: PublishSettings) -> None:
    """The item ids (records refer to items by position) and the most-popular list."""
    fallback = K.encode_records(*PopularRecommender(bundle.user_items).top_list(cfg.top_n))
    pipe = client.pipeline(transaction=False)
    pipe.set(layout.items(version), json.dumps(bundle.item_ids.tolist()))
    pipe.set(layout.fallback(version), fallback[0].tobytes())
    pipe.execute()


def _write_users(bundle, client, layout: K.Layout, version: str, cfg: PublishSettings,
                 n_buckets: int,
                 lock, progress: bool | None) -> tuple[int, int, float, float]:
    """Items table, fallback, then every user's record (and history); returns (HSET fields
    added: lists and histories, users without any item, t_score, t_wait). Redis writes run on a second thread while the next batch is scored (both
    release the GIL)."""
    user_ids = bundle.user_ids
    n_users = len(user_ids)
    _write_items_table(bundle, client, layout, version, cfg)

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
            ids = all_ids.take(rows)
            commands = hset_commands(lambda b: layout.bucket(version, b), buckets[rows], ids,
                                     K.encode_records(positions[has_any], scores[has_any]))
            if cfg.explain_items:
                commands += hset_commands(lambda b: layout.history(version, b), buckets[rows],
                                          ids, K.encode_records(*histories(
                                              bundle.user_items, rows, cfg.explain_items)))
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


def _write_items(bundle, client, layout: K.Layout, version: str, cfg: PublishSettings,
                 n_item_buckets: int, lock) -> int:
    """The item factors, and every item's similar items; returns how many items have a list."""
    factors = np.ascontiguousarray(bundle.model.item_factors, dtype="<f4")
    client.set(layout.factors(version), factors.tobytes())
    if not n_item_buckets:
        return 0
    item_ids = pa.array(np.asarray(bundle.item_ids, dtype=str))
    buckets = K.buckets_of(item_ids, n_item_buckets)
    order = np.argsort(buckets, kind="stable")
    batch = max(1, min(cfg.batch_size, 20_000_000 // max(1, len(order))))  # bounds the scores
    written = 0
    with threadpool_limits(1, "blas"):
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            positions, scores = similar_items(bundle.model, rows, cfg.top_n)
            has_any = positions[:, 0] >= 0
            rows = rows[has_any]
            written += send_commands(client, hset_commands(
                lambda b: layout.similar(version, b), buckets[rows], item_ids.take(rows),
                K.encode_records(positions[has_any], scores[has_any])))
            lock.check()
    return written


def _verify(client, layout: K.Layout, version: str, n_buckets: int, *, expected: int,
            added: int, histories: bool) -> None:
    """Redis holds what was written: `expected` users (and as many histories); `added` is what
    the HSETs reported."""
    stored = bucket_lengths(client, lambda b: layout.bucket(version, b), n_buckets)
    if added != expected * (2 if histories else 1) or stored != expected:
        raise RedisLost(f"Redis holds {stored} users for version {version} (HSET added "
                        f"{added} fields), expected {expected}: Redis lost what was written "
                        "(emptied, restarted or evicting?); the version is not served")
    if histories and bucket_lengths(client, lambda b: layout.history(version, b),
                                    n_buckets) != expected:
        raise RedisLost(f"version {version}: Redis holds fewer user histories than the "
                        f"{expected} written; not served")
    if client.exists(layout.items(version), layout.fallback(version),
                     layout.factors(version)) != 3:
        raise RedisLost(f"version {version}: items, fallback or factors key missing; "
                        "not served")


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
