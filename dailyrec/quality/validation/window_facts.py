"""The training window's checks answered from per-file facts, each history file read once.

    WindowFacts(facts_dir).of(path) -> (key, FileFacts)   a file's facts, read once, then kept
    window_counts(facts, paths, first_day, end_day, columns) -> {expectation: Count or rows}
(dailyrec.quality.validation.expectations.window_from_facts turns the counts into the suite's outcomes.)

Why it is safe to reuse a file's facts: every expectation of the window suite is a sum over rows
(NULLs, event types, timestamps outside the window, the row count) or a question about distinct
values (event ids seen twice, ids that break the id format) that per-file facts answer exactly:
  - a file's facts are a function of its bytes alone: they are keyed by the file's MD5, the version
    of this code (FACTS_VERSION), the canonical key columns' types and the id format;
  - nothing a run decides goes into them: the window's bounds, the vocabulary of event types and the
    `mostly` tolerances are applied when the facts are combined, every run, so a new run.date or a
    changed params.yaml never meets a stale answer;
  - timestamps are kept as events per UTC day, and the window's bounds are whole UTC days, so "how
    many events lie outside [first, run.date)" is exact;
  - event ids are kept as 64-bit hashes; ids whose hashes repeat are then read back and compared
    as text, so a hash collision can never count as a duplicate;
  - a history file has no NULL key (read_key_columns refuses one, on this path and on Great
    Expectations'), so every row counts for every expectation and the NULL checks count 0.
A new day therefore costs one file's facts: the work grows with the day, not the window. When the
combined answer fails any expectation, the caller runs the Great Expectations suite on the whole
window instead: a failing window gets GX's own verdict and example rows.

Entries live under the state directory (DAILYREC_STATE_DIR/window-facts, outside DVC): a lost or
damaged entry is recomputed, never trusted; entries of files no longer in the window are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dailyrec.core import env
from dailyrec.core import schema as S
from dailyrec.core.arrays import repeated
from dailyrec.core.errors import DataError
from dailyrec.core.files import file_md5

FACTS_VERSION = 2
KEY_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "ts"]
KEY_SCHEMA = pa.schema([S.EVENT_SCHEMA.field(c) for c in KEY_COLUMNS])
_SALT = hashlib.md5(f"{FACTS_VERSION}|{KEY_SCHEMA}|{S.ID_REGEX.pattern}".encode()).hexdigest()[:12]


def default_dir() -> Path:
    return env.state_dir() / "window-facts"


def read_key_columns(path: Path) -> pa.Table:
    """A history file's key columns in their canonical types (what training uses): NOT NULL, so a
    file with a NULL key is refused as damaged."""
    try:
        return pq.read_table(path, columns=KEY_COLUMNS).cast(KEY_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError, ValueError) as err:
        text = " ".join(str(err).split())[:200]
        raise DataError(f"{path}: not canonical events ({text}); the history partition is "
                        "damaged") from None


@dataclass
class FileFacts:
    rows: int
    event_types: dict[str, int]  # event_type -> events
    days: np.ndarray  # int64 UTC day numbers (days since 1970-01-01) of the events ...
    day_counts: np.ndarray  # ... and the events on each
    event_ids: np.ndarray  # uint64 hashes of the event ids, one per row
    ids: pa.Table  # distinct ids: id (string), kind (0 user, 1 item), bad (id format)

    @classmethod
    def of(cls, table: pa.Table) -> "FileFacts":
        """The facts of a table as read_key_columns gives it."""
        types = pc.value_counts(table["event_type"])
        micros = S.ts_micros(table)
        days, day_counts = np.unique(np.floor_divide(micros, S.MICROS_PER_DAY), return_counts=True)
        parts = []
        for kind, column in enumerate(("user_id", "item_id")):
            distinct = pc.unique(table[column])
            # The test Great Expectations' id-format expectation runs on pandas: str.contains.
            bad = ~pd.Series(distinct.to_numpy(zero_copy_only=False), dtype="str").str.contains(
                S.ID_REGEX.pattern).to_numpy(dtype=bool)
            parts.append(pa.table({"id": distinct, "kind": pa.array(np.full(len(distinct), kind,
                                                                             dtype=np.int8)),
                                   "bad": pa.array(bad)}))
        counts = zip(types.field("values").to_pylist(), types.field("counts").to_pylist())
        return cls(rows=table.num_rows, event_types={str(v): int(n) for v, n in counts},
                   days=days.astype(np.int64), day_counts=day_counts.astype(np.int64),
                   event_ids=S.id_hashes(table["event_id"]),
                   ids=pa.concat_tables(parts))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "facts.json").write_text(json.dumps(
            {"rows": self.rows, "event_types": self.event_types}))
        np.savez(folder / "arrays.npz", days=self.days, day_counts=self.day_counts,
                 event_ids=self.event_ids)
        pq.write_table(self.ids, folder / "ids.parquet")

    @classmethod
    def load(cls, folder: Path) -> "FileFacts":
        scalars = json.loads((folder / "facts.json").read_text())
        with np.load(folder / "arrays.npz") as arrays:
            days, counts, hashes = arrays["days"], arrays["day_counts"], arrays["event_ids"]
        ids = pq.read_table(folder / "ids.parquet")
        facts = cls(rows=int(scalars["rows"]), event_types=scalars["event_types"], days=days,
                    day_counts=counts, event_ids=hashes, ids=ids)
        if int(counts.sum()) != facts.rows or len(hashes) != facts.rows:
            raise ValueError("inconsistent entry")
        return facts


class WindowFacts:
    """Per-file facts, cached by content under facts_dir."""

    def __init__(self, facts_dir: Path):
        self.facts_dir = Path(facts_dir)
        self.computed = self.reused = 0

    def key(self, path: Path) -> str:
        return f"{file_md5(path)}-{_SALT}"

    def of(self, path: Path) -> tuple[str, FileFacts]:
        key = self.key(path)
        folder = self.facts_dir / key
        if folder.is_dir():
            try:
                facts = FileFacts.load(folder)
                self.reused += 1
                return key, facts
            except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
                shutil.rmtree(folder, ignore_errors=True)  # damaged: recomputed below
        facts = FileFacts.of(read_key_columns(path))
        self.computed += 1
        staging = self.facts_dir / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            facts.save(staging)
            os.replace(staging, folder)  # whole entries only: a killed run leaves a .tmp
        except OSError:  # the cache is an optimisation: a read-only state dir still validates
            shutil.rmtree(staging, ignore_errors=True)
        return key, facts

    def prune(self, keep: set[str]) -> None:
        """Remove entries (and killed runs' staging folders) of files no longer in the window."""
        if not self.facts_dir.is_dir():
            return
        for entry in self.facts_dir.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)


@dataclass
class Count:
    """What Great Expectations counts for a column expectation: rows, and rows unexpected (with no
    NULL key, every row is considered)."""
    element: int
    unexpected: int


def window_counts(facts: list[FileFacts], paths: list[Path], first_day: int, end_day: int,
                  columns: list[str]) -> dict[str, Any]:
    """The window suite's counts from the files' facts, by expectation name.
    first_day / end_day: UTC day numbers of the window's first day and of run.date."""
    rows = sum(f.rows for f in facts)
    counts: dict[str, Any] = {f"window.not_null.{c}": Count(rows, 0) for c in columns}
    types: dict[str, int] = {}
    for f in facts:
        for value, n in f.event_types.items():
            types[value] = types.get(value, 0) + n
    counts["window.event_types"] = Count(rows, sum(n for v, n in types.items()
                                                   if v not in S.EVENT_TYPES))
    days = np.concatenate([f.days for f in facts] or [np.empty(0, np.int64)])
    per_day = np.concatenate([f.day_counts for f in facts] or [np.empty(0, np.int64)])
    outside = int(per_day[(days < first_day) | (days >= end_day)].sum())
    counts["window.ts_in_window"] = Count(rows, outside)
    counts["window.event_id_unique"] = Count(rows, _duplicated_rows(facts, paths))
    counts["window.events"] = rows
    ids = pa.concat_tables([f.ids for f in facts]) if facts else \
        pa.table({"id": pa.array([], pa.string()), "kind": pa.array([], pa.int8()),
                  "bad": pa.array([], pa.bool_())})
    distinct = ids.group_by(["kind", "id"]).aggregate([("bad", "max")])
    n_ids = distinct.num_rows
    counts["window_ids.id_format"] = Count(n_ids, int(pc.sum(distinct["bad_max"]).as_py() or 0))
    return counts


def _duplicated_rows(facts: list[FileFacts], paths: list[Path]) -> int:
    """Rows whose event id appears more than once in the window (GX's unique: every copy counts).
    Hashes find the candidates; their ids are then compared as text, so collisions never count."""
    candidates = repeated(np.concatenate([f.event_ids for f in facts] or
                                         [np.empty(0, np.uint64)]))
    if not len(candidates):
        return 0
    texts = []
    for f, path in zip(facts, paths):
        if np.isin(f.event_ids, candidates).any():  # only the files that hold a candidate
            ids = read_key_columns(path)["event_id"]
            texts.append(ids.filter(pa.array(np.isin(S.id_hashes(ids), candidates))))
    text = pd.Series(pa.chunked_array(texts, pa.string()).to_numpy(zero_copy_only=False))
    return int(text.duplicated(keep=False).sum())
