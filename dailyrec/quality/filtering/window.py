"""The training window as the noise rules see it: each text column as integer codes over its
distinct values (Coded), the times as microseconds in history order, and the other columns read
only when data/clean is written (Window). read_window reads the history's day files a day at a
time; window_of turns a table already in memory into the same (the Spark engine's groups).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dailyrec.core import schema as S
from dailyrec.core.errors import DataError
from dailyrec.ingest.history import partition_day
from dailyrec.quality.filtering import clean, ip_texts

DICTIONARY_COLUMNS = clean.DICTIONARY_COLUMNS  # the text columns but event_id


@dataclass
class Coded:
    """A dictionary-coded column: codes index values; -1 is NULL."""
    codes: np.ndarray
    values: pa.Array

    def lookup(self, flags: np.ndarray) -> np.ndarray:
        """Per-value booleans -> per-event booleans (NULL -> False)."""
        return np.append(flags, False)[self.codes]

    def array(self, start: int, stop: int) -> pa.DictionaryArray:
        """Rows start:stop as an Arrow dictionary array over all the values."""
        codes = self.codes[start:stop]
        nulls = codes < 0
        return pa.DictionaryArray.from_arrays(codes, self.values,
                                              mask=nulls if nulls.any() else None)


# The window's columns as the rules read them: strings dictionary-encoded (handled once per
# distinct value), everything else as in the canonical schema. The rules need the dictionary
# columns and ts; the others (event_id, quantity) are read only to write data/clean, a day at a
# time, so the window in memory is codes and times: about 36 bytes an event. The schema is
# data/clean's files' (dailyrec.quality.filtering.clean), which the kept events are written in.
WINDOW_SCHEMA = clean.FILE_SCHEMA


RULE_COLUMNS = [*DICTIONARY_COLUMNS, "ts"]


PLAIN_COLUMNS = [name for name in S.COLUMNS if name not in DICTIONARY_COLUMNS]  # with ts


@dataclass
class Window:
    coded: dict[str, Coded]  # per dictionary column, codes into the window's distinct values
    ts_us: np.ndarray  # int64 microseconds since the epoch, non-decreasing
    sec: np.ndarray  # int32 seconds since the window's first midnight (UTC)
    plain: Callable[[], Iterable[pa.Table]]  # the PLAIN_COLUMNS, piece by piece, window order
    days: list[dt.date] = field(default_factory=list)
    left_out: list[dt.date] = field(default_factory=list)
    # per history day read: its date, its files and its rows (start, stop), in order
    spans: list[tuple[dt.date, list[Path], int, int]] = field(default_factory=list)

    user = property(lambda self: self.coded["user_id"])
    item = property(lambda self: self.coded["item_id"])
    event_type = property(lambda self: self.coded["event_type"])
    user_agent = property(lambda self: self.coded["user_agent"])
    ip = property(lambda self: self.coded["ip"])

    @functools.cached_property
    def addresses(self) -> pa.Array:
        """Per distinct IP text (ip.values): its canonical address, null where it is no address
        (dailyrec.quality.filtering.ip_texts decides); computed once for the rules and the counters."""
        return ip_texts.canonical_ips(self.ip.values)

    def __len__(self) -> int:
        return len(self.ts_us)

    def pieces(self) -> Iterator[pa.Table]:
        """The events in WINDOW_SCHEMA, a piece (a day of history) at a time, in window order:
        the plain columns as read, the dictionary columns rebuilt from the codes, chunked as
        the plain ones are (so a table of the pieces is the one reading everything at once
        gives)."""
        start = 0
        for plain in self.plain():
            stop = start + plain.num_rows
            if stop > len(self):
                break
            yield self._piece(plain, start)
            start = stop
        if start != len(self):
            raise DataError("the window's history changed while filter_noise read it: "
                            f"{len(self):,} events when the rules ran, {start:,} when writing")

    def piece(self, span: int) -> pa.Table:
        """The events of one of the spans (a history day), as pieces() gives them."""
        _, files, start, stop = self.spans[span]
        plain = _read_day(files, PLAIN_COLUMNS)
        if plain.num_rows != stop - start:
            raise DataError(f"{files[0].parent}: changed while filter_noise read it: "
                            f"{stop - start:,} events when the rules ran, {plain.num_rows:,} now")
        return self._piece(plain, start)

    def _piece(self, plain: pa.Table, start: int) -> pa.Table:
        bounds = np.cumsum([start, *(len(c) for c in plain.column(0).chunks)])
        return pa.Table.from_arrays(
            [pa.chunked_array([self.coded[f.name].array(a, b) for a, b in
                               zip(bounds[:-1], bounds[1:])], f.type)
             if f.name in DICTIONARY_COLUMNS else plain.column(f.name)
             for f in WINDOW_SCHEMA], schema=WINDOW_SCHEMA)

    def to_table(self) -> pa.Table:
        """All the events as one table (tests, small windows: the whole window in memory)."""
        pieces = list(self.pieces())
        return pa.concat_tables(pieces) if pieces else WINDOW_SCHEMA.empty_table()


def read_window(files: list[Path], days: list[dt.date] = ()) -> Window:
    """The window's events from its history files, as codes and times, in time order.

    A day's partition is its own file (sorted) and the arrivals other runs wrote into it, whose
    events interleave with it: each day with arrivals is put in time order on its own (stable, in
    file order); a partition holds its own day's events only, so the days concatenated are in
    time order, the order a stable sort of the whole window gives. The codes are written into
    arrays sized from the files' footers, a day at a time, and each day's values are added to the
    window's in the order Arrow's dictionary unification gives: the codes are the ones unifying
    the whole window at once gives, without holding it."""
    by_day = [[path for path in files if path.parent == folder]
              for folder in dict.fromkeys(path.parent for path in files)]  # days, in order
    n = sum(_footer(path).num_rows for path in files)
    codes = {name: np.empty(n, np.int32) for name in DICTIONARY_COLUMNS}
    values = {name: pa.array([], pa.string()) for name in DICTIONARY_COLUMNS}
    ts = np.empty(n, np.int64)
    start, spans = 0, []
    for day_files in by_day:  # a loop over days
        day = _read_day(day_files, RULE_COLUMNS)
        stop = start + day.num_rows
        if stop > n:
            raise DataError(f"{day_files[0].parent}: more rows than its files' footers say")
        for name in DICTIONARY_COLUMNS:
            coded = _coded(_unified(values[name], day.column(name)))
            codes[name][start:stop], values[name] = coded.codes, coded.values
        ts[start:stop] = S.ts_micros(day)
        if start and stop > start and ts[start] < ts[start - 1]:
            raise DataError(f"{day_files[0].parent}: holds events earlier than the day before "
                            "it (a partition holds its own UTC day's events only)")
        spans.append((_folder_day(day_files[0]), day_files, start, stop))
        start = stop
    if start != n:
        raise DataError(f"the window's files hold {start:,} rows, their footers say {n:,}")
    w = _window({name: Coded(codes[name], values[name]) for name in DICTIONARY_COLUMNS}, ts,
                lambda: (_read_day(day_files, PLAIN_COLUMNS) for day_files in by_day), days)
    w.spans = spans
    return w


def _folder_day(path: Path) -> dt.date | None:
    """The history day a file belongs to; None for a file outside a day=YYYY-MM-DD folder."""
    try:
        return partition_day(path)
    except ValueError:
        return None


def _footer(path: Path) -> pq.FileMetaData:
    try:
        return pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"{path}: not a Parquet file ({err})") from None


def _read_day(files: list[Path], columns: list[str]) -> pa.Table:
    tables = [_read_history_file(path, columns) for path in files]
    return tables[0] if len(tables) == 1 else _in_time_order(pa.concat_tables(tables))


def _read_history_file(path: Path, columns: list[str]) -> pa.Table:
    try:
        present = set(pq.read_schema(path).names)
        t = pq.read_table(path, columns=[c for c in columns if c in present],
                          read_dictionary=[c for c in DICTIONARY_COLUMNS if c in present])
        for f in S.EVENT_SCHEMA:  # files written before a nullable column existed
            if f.name in columns and f.nullable and f.name not in present:
                t = t.append_column(f.name, pa.nulls(t.num_rows, f.type))
        return t.select(columns).cast(pa.schema([WINDOW_SCHEMA.field(c) for c in columns]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError, ValueError) as err:
        raise DataError(f"{path}: not canonical events ({err})") from None


def _unified(values: pa.Array, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column with one dictionary: the values so far, then its new ones in the order Arrow's
    unifier adds them (a chunk with no rows carries the values so far in front)."""
    head = pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), values)
    return pa.table({"c": pa.chunked_array([head, *column.chunks], column.type)}) \
        .unify_dictionaries().column("c")


def _in_time_order(table: pa.Table) -> pa.Table:
    """The table sorted by ts, ties in their order (stable); as it is when already sorted."""
    ts = S.ts_micros(table)
    if len(ts) > 1 and np.any(ts[1:] < ts[:-1]):
        return table.unify_dictionaries().take(np.argsort(ts, kind="stable"))
    return table


def window_of(table: pa.Table, days: list[dt.date] = ()) -> Window:
    """A Window over events already in memory, in WINDOW_SCHEMA, in history order (the order ties
    in ts keep): the Spark engine's group of users or addresses, a test's events."""
    table = table.unify_dictionaries()
    ts = S.ts_micros(table)
    if len(ts) > 1 and np.any(ts[1:] < ts[:-1]):
        table = table.take(np.argsort(ts, kind="stable")).unify_dictionaries()
        ts = S.ts_micros(table)
    plain = table.select(PLAIN_COLUMNS)
    return _window({name: _coded(table.column(name)) for name in DICTIONARY_COLUMNS}, ts,
                   lambda: [plain], days)


def _window(coded: dict[str, Coded], ts: np.ndarray, plain: Callable[[], Iterable[pa.Table]],
            days) -> Window:
    origin = int(ts[0]) // S.MICROS_PER_DAY * 86_400 if len(ts) else 0
    sec = (ts // 1_000_000 - origin).astype(np.int32)
    return Window(coded=coded, ts_us=ts, sec=sec, plain=plain, days=list(days))


def _coded(column: pa.ChunkedArray) -> Coded:
    """Codes of a dictionary column whose chunks share one dictionary (after unify)."""
    if column.num_chunks == 0:
        return Coded(np.empty(0, np.int32), pa.array([], pa.string()))
    values = column.chunk(0).dictionary
    codes = [(pc.fill_null(c.indices, -1) if c.null_count else c.indices)
             .to_numpy(zero_copy_only=False) for c in column.chunks]
    return Coded(np.concatenate(codes).astype(np.int32, copy=False) if codes else
                 np.empty(0, np.int32), values)
