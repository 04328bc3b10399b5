"""data/clean: the training window's trusted events, one Parquet file per UTC day of their ts.

    data/clean/YYYY-MM-DD.parquet   the kept events of that day, in history order

Why a file per day: DVC stores and pushes a directory output file by file, by content. A day whose
kept events did not change since the last run is the same file, byte for byte, so `dvc push` and
the cache take the new day and the few days a window-level decision touched (a bot flagged today
loses its older days too), not the whole window again (412 MB a day at 20M events).

A day file's bytes depend only on that day's kept events: the text columns are written as Parquet
dictionary pages whose values are the ones the day's rows use, sorted (the window's own dictionary
changes as days enter and leave it). Readers get exactly the canonical schema back (no Arrow schema
is stored), and the days concatenated in name order are the window in history order.

The same makes the write follow the day: KeptDays keeps each day file a run wrote (a read-only
hard link under $DAILYREC_STATE_DIR/clean-days/) by the MD5 of the day's history files, which of
their events were kept and the code, and the next run links a day with the same key instead of
reading its columns again and writing it.

The directory is built beside the old one and swapped in: a reader sees the old days or the new,
and a run killed in between leaves no data/clean, which DVC runs filter_noise again for.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dailyrec.core import schema as S
from dailyrec.core.errors import DataError
from dailyrec.core.files import replace_dir, tmp_path

SUFFIX = ".parquet"
KEPT_FOLDER = "clean-days"  # KeptDays, under $DAILYREC_STATE_DIR
EPOCH = dt.date(1970, 1, 1)
# The text columns written as dictionary pages. Statistics only for ts (min/max of the string
# columns cost as much as the rest of the write and help no reader).
DICTIONARY_COLUMNS = ["user_id", "item_id", "event_type", "source", "user_agent", "ip"]
PARQUET = {"store_schema": False, "use_dictionary": DICTIONARY_COLUMNS, "write_statistics": ["ts"]}
ROW_GROUP_ROWS = 1024 * 1024  # pyarrow's default
FILE_SCHEMA = pa.schema([f.with_type(pa.dictionary(pa.int32(), f.type))
                         if f.name in DICTIONARY_COLUMNS else f for f in S.EVENT_SCHEMA])


def day_files(path: Path | str) -> list[Path]:
    """The day files of a data/clean directory, in day (= history) order; a single Parquet file
    (an older layout, a test's events) is its own list."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.glob(f"*{SUFFIX}") if p.is_file())


def columns_of(path: Path | str) -> list[str]:
    """The column names data/clean's files have (the canonical ones when there is no day)."""
    files = day_files(path)
    return pq.read_schema(files[0]).names if files else list(S.COLUMNS)


def read(path: Path | str, columns: list[str], read_dictionary: list[str] = ()) -> pa.Table:
    """The columns of every day, concatenated in history order (a dictionary column keeps each
    file's dictionary as a chunk of its own)."""
    tables = [pq.read_table(f, columns=columns, read_dictionary=list(read_dictionary))
              for f in day_files(path)]
    if tables:
        return pa.concat_tables(tables)
    return pa.schema([FILE_SCHEMA.field(c) if c in read_dictionary else S.EVENT_SCHEMA.field(c)
                      for c in columns]).empty_table()


def canonical(column: pa.ChunkedArray | pa.Array, ranks: Ranks, name: str) -> pa.DictionaryArray:
    """A text column as a dictionary array over the values its rows use, sorted: the same array
    for the same rows whatever dictionary (or none) they came with. ranks keeps each value's place
    in the sorted dictionary per column name, for pieces that share one (the window's)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not chunks:
        return pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), pa.array([], pa.string()))
    if not pa.types.is_dictionary(chunks[0].type):
        chunks = [pc.dictionary_encode(pa.chunked_array(chunks).combine_chunks())]
    elif any(not _same_buffers(c.dictionary, chunks[0].dictionary) for c in chunks[1:]):
        chunks = [pa.table({"c": pa.chunked_array(chunks)}).unify_dictionaries().column("c")
                  .combine_chunks()]
    dictionary = chunks[0].dictionary
    codes = np.concatenate([pc.fill_null(c.indices, 0).to_numpy() if c.null_count
                            else c.indices.to_numpy() for c in chunks])  # a null's index: any
    valid = np.concatenate([c.is_valid().to_numpy(zero_copy_only=False) for c in chunks]) \
        if any(c.null_count for c in chunks) else None
    present = np.zeros(len(dictionary), bool)
    present[codes if valid is None else codes[valid]] = True
    used = np.flatnonzero(present)
    order = used[np.argsort(ranks.of(name, dictionary)[used])]
    renumber = np.zeros(max(len(dictionary), 1), np.int32)
    renumber[order] = np.arange(len(order), dtype=np.int32)
    indices = pa.array(renumber[codes], pa.int32(), mask=None if valid is None else ~valid)
    return pa.DictionaryArray.from_arrays(indices, dictionary.take(pa.array(order)))


def _same_buffers(a: pa.Array, b: pa.Array) -> bool:
    return len(a) == len(b) and a.offset == b.offset and \
        [x.address if x else 0 for x in a.buffers()] == [x.address if x else 0 for x in b.buffers()]


class Ranks:
    """Each value's place in its dictionary sorted, per column: sorted once per dictionary, not
    once per day (the window's pieces all carry the window's). The dictionary is held, so the
    buffers compared are alive and never another's."""

    def __init__(self):
        self._by_column: dict[str, tuple[pa.Array, np.ndarray]] = {}

    def of(self, name: str, dictionary: pa.Array) -> np.ndarray:
        found = self._by_column.get(name)
        if found is None or not _same_buffers(found[0], dictionary):
            ranks = np.empty(len(dictionary), np.int64)
            ranks[pc.sort_indices(dictionary).to_numpy()] = np.arange(len(dictionary))
            found = self._by_column[name] = (dictionary, ranks)
        return found[1]


def day_name(day: dt.date) -> str:
    return day.isoformat() + SUFFIX


class DayWriter:
    """Writes events, given in history order in pieces of any size, as data/clean's day files.

        with DayWriter(Path("data/clean")) as out:
            for piece in pieces:
                out.add(piece)
        out.rows  # events written
    """

    def __init__(self, out: Path | str):
        self.out = Path(out)
        self.staging = self.out.with_name(f".{self.out.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        self.rows = 0
        self._day: int | None = None
        self._pending: list[pa.Table] = []
        self._linked = False  # the current day's file came whole (add_file)
        self._ranks = Ranks()
        self.written: list[str] = []  # the day files this writer wrote (not linked), by name

    def __enter__(self) -> DayWriter:
        for left in self.out.parent.glob(f".{self.out.name}.*.tmp"):  # a killed run's
            _remove(left)
        for left in self.out.parent.glob(f".{self.out.name}.*.old"):
            _remove(left)
        self.staging.mkdir(parents=True)
        return self

    def add(self, table: pa.Table) -> None:
        """Events later than (or as late as) every event added before."""
        if not table.num_rows:
            return
        days = S.ts_micros(table) // S.MICROS_PER_DAY
        cuts = np.flatnonzero(np.diff(days)) + 1
        for start, stop in zip([0, *cuts], [*cuts, len(days)]):
            if self._day is not None and (days[start] < self._day or  # it would replace a day
                                          days[start] == self._day and self._linked):
                raise DataError(f"{self.out}: events out of time order: a day "
                                f"{np.datetime64(int(days[start]), 'D')} after "
                                f"{np.datetime64(self._day, 'D')}")
            if days[start] != self._day:
                self._flush()
                self._day, self._linked = int(days[start]), False
            self._pending.append(table.slice(start, stop - start))

    def add_file(self, day: dt.date, source: Path, rows: int) -> bool:
        """A day's file as an earlier run wrote it (KeptDays), linked in whole; days in order.
        False when it cannot be linked or copied (gone meanwhile): write the day instead."""
        number = (day - EPOCH).days
        if self._day is not None and number <= self._day:
            raise DataError(f"{self.out}: day {day} added after {np.datetime64(self._day, 'D')}")
        self._flush()
        try:
            _link_or_copy(source, self.staging / day_name(day))
        except OSError:
            return False
        self._day, self._linked = number, True
        self.rows += rows
        return True

    def _flush(self) -> None:
        if not self._pending:
            return
        day = pa.concat_tables(self._pending)
        self._pending = []
        # one chunk per column: the pages Parquet cuts depend on the rows, not on the pieces
        arrays = [canonical(day.column(f.name), self._ranks, f.name) if f.name in DICTIONARY_COLUMNS
                  else day.column(f.name).cast(f.type).combine_chunks() for f in FILE_SCHEMA]
        name = day_name(EPOCH + dt.timedelta(days=self._day))
        self.written.append(name)
        pq.write_table(pa.Table.from_arrays(arrays, schema=FILE_SCHEMA), self.staging / name,
                       row_group_size=ROW_GROUP_ROWS, **PARQUET)
        self.rows += day.num_rows

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:  # half a window must not become data/clean
            _remove(self.staging)
            return
        try:
            self._flush()
        except BaseException:
            _remove(self.staging)
            raise
        replace_dir(self.staging, self.out)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class KeptDays:
    """The day files runs wrote, under $DAILYREC_STATE_DIR/clean-days/, by what made them: the
    MD5 of the code and library versions (salt), the day's history files' MD5s and which of their
    events were kept. A later run whose day has the same key links that file into data/clean
    instead of reading the day's columns again and writing it: a day file is a function of its
    kept events (the module docstring), and those are a function of the files and the mask.
    As in DVC's cache, an entry is a read-only hard link (a copy across filesystems), trusted once
    its footer reads and its row count matches; an entry this run did not use is removed. Any
    failure here only costs a write."""

    def __init__(self, folder: Path, salt: str):
        self.folder, self.salt = Path(folder), salt
        self.used: set[str] = set()
        self.reused = 0

    def key(self, file_md5s: list[str], kept: np.ndarray) -> str:
        text = "|".join([self.salt, *file_md5s, str(len(kept))]).encode()
        return hashlib.md5(text + np.packbits(kept).tobytes()).hexdigest()

    def find(self, key: str, rows: int) -> Path | None:
        path = self.folder / (key + SUFFIX)
        try:
            if path.is_file() and pq.read_metadata(path).num_rows == rows:
                self.used.add(key)
                self.reused += 1
                return path
        except (OSError, pa.ArrowInvalid):
            pass
        return None

    def keep(self, written: dict[str, Path]) -> None:
        """Remember the day files this run wrote (key -> file in data/clean); forget the rest."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for key, path in written.items():
                _link_or_copy(path, self.folder / (key + SUFFIX))
                (self.folder / (key + SUFFIX)).chmod(0o444)
            wanted = {key + SUFFIX for key in (*self.used, *written)}
            for entry in self.folder.iterdir():
                if entry.name not in wanted:
                    _remove(entry)
        except OSError:
            pass


def _link_or_copy(source: Path, target: Path) -> None:
    """target becomes source's bytes (a hard link where the filesystem allows), atomically."""
    tmp = tmp_path(target)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        tmp.replace(target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
