"""The Redis key layout: the one contract between publish (the writer) and the API (the reader).

    {prefix}:current               string  the served version (publish and rollback set it)
    {prefix}:versions              zset    every version publish has started, scored by sequence
    {prefix}:seq                   string  INCR counter that numbers versions
    {prefix}:publish-lock          string  held (with a TTL) by the one publish or rollback running
    {prefix}:v:{version}:meta      hash    status (writing|complete), top_n, buckets, users, run...
    {prefix}:v:{version}:items     string  JSON list of item ids; records refer to them by position
    {prefix}:v:{version}:fallback  string  the most-popular record, for users the model lacks
    {prefix}:v:{version}:b:{i}     hash    user id -> record, for the users whose bucket is i
    {prefix}:v:{version}:h:{i}     hash    user id -> the user's most confident past items (a
                                           record of explain_items positions and confidences)
    {prefix}:v:{version}:s:{i}     hash    item id -> its similar items' record, for the items
                                           whose bucket (of item_buckets) is i
    {prefix}:v:{version}:factors   string  the item factors, float32, items x factors, row-major,
                                           for folding in visitors at request time

A version's meta also says its kind: "model" (an ALS model that passed the gate) or "popular"
(the most-popular list only, served before any model has passed a gate: no users, no factors).

A version's keys are written once and never changed, and readers only reach a version through
`current`, which points at complete versions only: so a reader sees one whole version or another,
never a mix, whatever happens to a publish midway.

Users are spread over 2^k hash buckets (about USERS_PER_BUCKET users each) rather than one key per
user: less memory (docs/benchmarks.md), and a version is removed with a few thousand UNLINKs, not
a SCAN over millions of keys. The bucket of a user id is FNV-1a (32 bit) of its UTF-8 bytes,
finished with MurmurHash3's fmix32, modulo the bucket count; `bucket_of` (one id, the API) and
`buckets_of` (vectorised, publish) must agree, and a test holds them to it.

A record is fixed width: top_n little-endian uint32 item positions, then top_n float32 scores.
A slot with no item (a user with fewer candidates than top_n) holds MISSING_ITEM.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PREFIX_ENV = "REDIS_KEY_PREFIX"
DEFAULT_PREFIX = "dailyrec"
FORMAT = "2"  # bump when the record or key layout changes; the API refuses versions it cannot read
READABLE_FORMATS = ("1", "2")  # 1: no similar items, histories or factors
USERS_PER_BUCKET = 128
MISSING_ITEM = 0xFFFFFFFF

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Layout:
    prefix: str = DEFAULT_PREFIX

    @classmethod
    def from_env(cls, environ=os.environ) -> "Layout":
        return cls(environ.get(PREFIX_ENV) or DEFAULT_PREFIX)

    @property
    def current(self) -> str:
        return f"{self.prefix}:current"

    @property
    def versions(self) -> str:
        return f"{self.prefix}:versions"

    @property
    def sequence(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def lock(self) -> str:
        return f"{self.prefix}:publish-lock"

    def meta(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:meta"

    def items(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:items"

    def fallback(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:fallback"

    def bucket(self, version: str, index: int) -> str:
        return f"{self.prefix}:v:{version}:b:{index}"

    def history(self, version: str, index: int) -> str:
        return f"{self.prefix}:v:{version}:h:{index}"

    def similar(self, version: str, index: int) -> str:
        return f"{self.prefix}:v:{version}:s:{index}"

    def factors(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:factors"

    def version_keys(self, version: str, n_buckets: int, n_item_buckets: int = 0) -> list[str]:
        """Every key a version may own, given its bucket counts (from its meta); the meta first."""
        fixed = [self.meta(version), self.items(version), self.fallback(version),
                 self.factors(version)]
        return (fixed + [self.bucket(version, i) for i in range(n_buckets)]
                + [self.history(version, i) for i in range(n_buckets)]
                + [self.similar(version, i) for i in range(n_item_buckets)])

    def version_pattern(self, version: str) -> str:
        """SCAN pattern for a version's keys, for when its meta is gone (a publish killed early)."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in version)
        return f"{self.prefix}:v:{escaped}:*"


def bucket_count(n_users: int) -> int:
    """A power of two giving about USERS_PER_BUCKET users per bucket (at least 1 bucket)."""
    need = max(1, -(-int(n_users) // USERS_PER_BUCKET))
    return 1 << (need - 1).bit_length()


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def user_hash(user_id: str) -> int:
    h = _FNV_OFFSET
    for byte in user_id.encode("utf-8"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK32
    return _fmix32(h)


def bucket_of(user_id: str, n_buckets: int) -> int:
    return user_hash(user_id) & (n_buckets - 1)


def user_hashes(user_ids) -> np.ndarray:
    """user_hash of many ids at once: one NumPy pass per byte position, not per user."""
    import pyarrow as pa

    arr = user_ids if isinstance(user_ids, pa.Array) else pa.array(np.asarray(user_ids, dtype=str))
    arr = arr.cast(pa.binary())
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else \
        np.zeros(0, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint32)
    prime = np.uint32(_FNV_PRIME)
    for j in range(int(lengths.max())):
        live = np.flatnonzero(lengths > j)
        h[live] = (h[live] ^ data[starts[live] + j]) * prime
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def buckets_of(user_ids, n_buckets: int) -> np.ndarray:
    return (user_hashes(user_ids) & np.uint32(n_buckets - 1)).astype(np.int64)


def record_width(top_n: int) -> int:
    return 8 * top_n


def encode_records(item_positions: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(n, top_n) positions (negative = no item) and scores -> (n, 8*top_n) uint8 records."""
    positions = np.asarray(item_positions)
    n, top_n = positions.shape
    ids = np.where(positions >= 0, positions, MISSING_ITEM).astype("<u4", copy=False)
    vals = np.where(positions >= 0, scores, 0).astype("<f4", copy=False)
    out = np.empty((n, record_width(top_n)), dtype=np.uint8)
    out[:, : 4 * top_n] = np.ascontiguousarray(ids).view(np.uint8).reshape(n, 4 * top_n)
    out[:, 4 * top_n:] = np.ascontiguousarray(vals).view(np.uint8).reshape(n, 4 * top_n)
    return out


@lru_cache(maxsize=16)
def _record_struct(top_n: int) -> struct.Struct:
    return struct.Struct(f"<{top_n}I{top_n}f")


def decode_record(raw: bytes, top_n: int) -> list[tuple[int, float]]:
    """A record -> [(item position, score)], best first, empty slots dropped."""
    values = _record_struct(top_n).unpack(raw)
    return [(i, s) for i, s in zip(values[:top_n], values[top_n:]) if i != MISSING_ITEM]
