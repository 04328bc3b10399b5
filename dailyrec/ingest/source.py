"""Source tables -> canonical events: what fetch_delta does, as a library.

    fetch(source, window, url, out_dir) -> counts
        every configured table's rows in the window, normalised (dailyrec.core.schema), deduplicated on
        event_id, written to out_dir/events.parquet; unusable rows to out_dir/quarantine.parquet
        with the field, the raw value (non-UTF-8 bytes escaped) and the reason.

Each table is read with one SELECT built by SQLAlchemy from reflected metadata: table and column
names are checked against the database and quoted by the dialect, the window column's declared type
against the table's window_format (before any query), and the window bounds are values this code
computes (never text from a user). PostgreSQL is read through ADBC, Arrow-native: ids
stay exact 64-bit integers whatever a batch holds (no float on the way, which would turn
9007199254740993 into 9007199254740992.0), and it is several times faster than row tuples. Other
databases stream rows through SQLAlchemy in chunks of source.chunk_rows; each column becomes an
Arrow array (int64 with NULLs kept exact) or, when it mixes types, stays as Python objects.

The database's own errors are sorted by kind (source_error): one that is down, drops the connection
or does not answer within source.timeout_seconds is ServiceUnavailable (exit 69, the next run
retries); a query it refuses is ConfigError (exit 2) naming the table and column. The outputs are
written in a folder beside out_dir and put in its place only when whole: a failed fetch leaves
out_dir as it was.

Nothing fetched is lost: fetched = kept + quarantined + duplicates + ignored, per table.
    quarantined   unusable rows, one reason each (QUARANTINE_REASONS), plus event_id:conflict, a
                  second row with an event id already fetched but other content (the first wins)
    duplicates    rows identical to one already fetched (same event id, same content)
    ignored       rows of an event type the table lists in ignore_event_types, counted by type
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from dailyrec.core import files
from dailyrec.core import schema as S
from dailyrec.core.errors import ConfigError, DailyrecError, ServiceUnavailable
from dailyrec.ingest.settings import (TS_OFFSET, TS_OFFSET_UNITS, WINDOW_FORMATS, SourceSettings,
                                      TableConfig, Window)
from dailyrec.ingest.streams import prefetched

REQUIRED_SOURCE_FIELDS = ("user_id", "item_id", "event_type", "ts")
ID_FIELDS = ("event_id", "user_id", "item_id")
ADBC_BATCH_BYTES = 16 << 20  # the PostgreSQL driver's batch size hint


def resolve_columns(cfg: TableConfig, actual: list[str]) -> dict[str, str]:
    """Canonical field -> source column: the configured mapping first, then aliases; and
    TS_OFFSET -> its column when the table maps one (never found by alias)."""
    mapping: dict[str, str] = {}
    offset = _configured_column(cfg, TS_OFFSET, actual) if TS_OFFSET in cfg.columns else None
    for fld in S.SOURCE_FIELDS:
        if fld in cfg.columns:
            mapping[fld] = _configured_column(cfg, fld, actual)
            continue
        taken = set(mapping.values()) | {offset}
        by_fold = {S.fold_name(c): c for c in actual if c not in taken}
        for alias in (S.fold_name(fld), *S.FIELD_ALIASES[fld]):
            if alias in by_fold:
                mapping[fld] = by_fold[alias]
                break
    if cfg.event_type is not None:
        mapping.pop("event_type", None)  # every row is cfg.event_type: no column is read
    missing = [f for f in REQUIRED_SOURCE_FIELDS if f not in mapping
               and not (f == "event_type" and cfg.event_type is not None)]
    if missing:
        raise ConfigError(
            f"table '{cfg.name}': no column found for {missing}; the table has {actual}. "
            f"Map them under source.tables.{cfg.name}.columns in params.yaml")
    if offset is not None:
        mapping[TS_OFFSET] = offset
    return mapping


def _configured_column(cfg: TableConfig, fld: str, actual: list[str]) -> str:
    if cfg.columns[fld] not in actual:
        raise ConfigError(f"table '{cfg.name}': column '{cfg.columns[fld]}' (mapped to {fld} in "
                          f"params.yaml) does not exist; the table has {actual}")
    return cfg.columns[fld]


def _window_formats(column_type: sa.types.TypeEngine) -> tuple[str, ...] | None:
    """The window formats a column of this declared type can hold; None where it declares none
    (SQLite lets a column go untyped): nothing to judge before the query."""
    if isinstance(column_type, sa.types.NullType):
        return None
    if isinstance(column_type, sa.Boolean):
        return ()
    if isinstance(column_type, (sa.Integer, sa.Numeric, sa.Float)):
        return ("epoch_s", "epoch_ms")
    if isinstance(column_type, (sa.DateTime, sa.Date)):
        return ("datetime",)
    return ()


def _type_name(column_type: sa.types.TypeEngine, dialect: sa.Dialect) -> str:
    try:
        return column_type.compile(dialect=dialect)
    except sa.exc.SQLAlchemyError:
        return type(column_type).__name__


def check_column_types(cfg: TableConfig, table: sa.Table, mapping: dict[str, str],
                       dialect: sa.Dialect) -> None:
    """Refuse, before any query, a window column whose declared type cannot hold the table's
    window_format (PostgreSQL would refuse the comparison, SQLite would compare text with
    numbers and fetch the wrong rows) and a ts_offset column that cannot hold a number."""
    window = table.c[cfg.window_column]
    fits = _window_formats(window.type)
    if fits is not None and cfg.window_format not in fits:
        kind = _type_name(window.type, dialect)
        hint = (f"it fits window_format {' or '.join(fits)}" if fits else
                f"a {kind} column fits none of {', '.join(WINDOW_FORMATS)}: window on a number "
                "(epoch) or a timestamp or date column")
        raise ConfigError(f"table '{cfg.name}': window column '{window.name}' is {kind}, which "
                          f"window_format {cfg.window_format} cannot read (source.tables."
                          f"{cfg.name}.window_format); {hint}")
    if TS_OFFSET in mapping:
        offset = table.c[mapping[TS_OFFSET]]
        numeric = (sa.types.NullType, sa.Integer, sa.Numeric, sa.Float, sa.String)
        if isinstance(offset.type, sa.Boolean) or not isinstance(offset.type, numeric):
            raise ConfigError(
                f"table '{cfg.name}': ts_offset column '{offset.name}' is "
                f"{_type_name(offset.type, dialect)}; an offset must be a number of "
                f"{cfg.ts_offset_unit} (source.tables.{cfg.name}.columns.ts_offset)")


def _bound(moment: dt.datetime, fmt: str, column_type: sa.types.TypeEngine):
    if fmt == "epoch_s":
        return int(moment.timestamp())
    if fmt == "epoch_ms":
        return int(moment.timestamp() * 1000)
    if isinstance(column_type, sa.Date):
        return moment.date()  # the window's bounds are midnights: exact as days
    aware = getattr(column_type, "timezone", False)
    return moment if aware else moment.replace(tzinfo=None)


def source_engine(url: str, timeout_s: int) -> sa.Engine:
    """An engine whose connections give up after timeout_s: connecting (libpq's
    connect_timeout), per statement (PostgreSQL's statement_timeout, set at connection start)
    and waiting on a lock (SQLite's busy timeout)."""
    parsed = sa.make_url(url)
    args: dict[str, object] = {}
    if parsed.get_backend_name() == "sqlite":
        args["timeout"] = timeout_s
    elif parsed.get_backend_name() == "postgresql" and \
            parsed.get_driver_name() in ("psycopg", "psycopg2"):
        own = parsed.query.get("options", "")  # the URL's own server options are kept
        args["connect_timeout"] = timeout_s
        args["options"] = f"{own} -c statement_timeout={timeout_s * 1000}".strip()
    return sa.create_engine(parsed, connect_args=args)


def read_table(engine: sa.Engine, cfg: TableConfig, window: Window, chunk_rows: int,
               timeout_s: int) -> tuple[dict[str, str], Iterator[pd.DataFrame]]:
    """Reflect the table, resolve its columns, check their types and stream the window's rows
    in chunks. The database's errors come out as source_error says."""
    try:
        with _reading(cfg, timeout_s):
            table = sa.Table(cfg.name, sa.MetaData(), autoload_with=engine)
    except sa.exc.NoSuchTableError:
        raise ConfigError(f"source table '{cfg.name}' does not exist in the source database "
                          f"(configured in params.yaml source.tables)") from None
    actual = [c.name for c in table.columns]
    if cfg.window_column not in actual:
        raise ConfigError(f"table '{cfg.name}': window column '{cfg.window_column}' does not "
                          f"exist; the table has {actual}")
    mapping = resolve_columns(cfg, actual)
    check_column_types(cfg, table, mapping, engine.dialect)
    wanted = list(dict.fromkeys(mapping.values()))
    wcol = table.c[cfg.window_column]
    start = window.start - dt.timedelta(days=cfg.lookback_days)
    stmt = (sa.select(*[table.c[c] for c in wanted])
            .where(wcol >= sa.bindparam("lo", _bound(start, cfg.window_format, wcol.type)),
                   wcol < sa.bindparam("hi", _bound(window.end, cfg.window_format, wcol.type))))
    id_columns = {mapping[f] for f in ID_FIELDS if f in mapping}
    if engine.dialect.name == "postgresql" and _adbc_postgresql() is not None:
        return mapping, _adbc_chunks(engine, stmt, id_columns, cfg, timeout_s)
    return mapping, _sqlalchemy_chunks(engine, stmt, wanted, id_columns, chunk_rows, cfg,
                                       timeout_s)


def _adbc_postgresql():
    try:
        import adbc_driver_postgresql.dbapi as driver
    except ImportError:  # the optional fast path: SQLAlchemy reads PostgreSQL too
        return None
    return driver


def _adbc_chunks(engine: sa.Engine, stmt, id_columns: set[str], cfg: TableConfig,
                 timeout_s: int) -> Iterator[pd.DataFrame]:
    """Arrow record batches straight from PostgreSQL (COPY binary underneath). The SELECT is
    rendered by SQLAlchemy's PostgreSQL dialect; its only literals are the window bounds. The
    connection gives up after timeout_s, connecting and running the query."""
    sql = str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    uri = engine.url.set(drivername="postgresql").update_query_dict(
        {"connect_timeout": str(timeout_s)}).render_as_string(hide_password=False)
    driver = _adbc_postgresql()
    with _reading(cfg, timeout_s):
        conn = driver.connect(uri)
    cur = None
    try:
        with _reading(cfg, timeout_s):
            cur = conn.cursor()
            cur.execute(f"SET statement_timeout = {int(timeout_s) * 1000}")
            cur.adbc_statement.set_options(
                **{"adbc.postgresql.batch_size_hint_bytes": str(ADBC_BATCH_BYTES)})
            cur.execute(sql)
            batches = cur.fetch_record_batch()
        for batch in _driver_calls(batches, cfg, timeout_s):
            if batch.num_rows:
                yield _frame({name: batch.column(name) for name in batch.schema.names},
                             id_columns)
    finally:
        # A connection the server dropped may fail to close as well; the first error is the one
        # that says what happened.
        for handle in (cur, conn):
            with contextlib.suppress(Exception):
                if handle is not None:
                    handle.close()


def _lenient_text(raw: bytes) -> str:
    """SQLite TEXT that is not UTF-8 (latin-1, a stray BLOB) would stop the whole fetch with
    UnicodeDecodeError: its bytes are kept as surrogates, then quarantined with a reason."""
    return raw.decode("utf-8", "surrogateescape")


def _sqlalchemy_chunks(engine: sa.Engine, stmt, wanted: list[str], id_columns: set[str],
                       chunk_rows: int, cfg: TableConfig, timeout_s: int
                       ) -> Iterator[pd.DataFrame]:
    with contextlib.ExitStack() as stack:
        with _reading(cfg, timeout_s):
            conn = stack.enter_context(
                engine.connect().execution_options(stream_results=True, yield_per=chunk_rows))
            if engine.dialect.name == "sqlite":
                conn.connection.dbapi_connection.text_factory = _lenient_text
            result = conn.execute(stmt)
        for rows in _driver_calls(result.partitions(chunk_rows), cfg, timeout_s):
            columns = list(zip(*rows)) if rows else [() for _ in wanted]
            yield _frame(dict(zip(wanted, columns)), id_columns)


# --- the database's errors, by kind ---------------------------------------------------------------

# SQLSTATE classes (or codes) of a database that is down, restarting, overloaded, lost the
# connection or gave up waiting: 08 connection, 53 resources, 57 operator intervention
# (shutdown, a statement timeout), 58 system I/O, 40 a serialisation failure or deadlock, 55P03
# a lock timeout. Worth retrying the next night.
TRANSIENT_SQLSTATES = ("08", "53", "57", "58", "40", "55P03")
# ... and of a query the database refuses: 42 syntax or access (no such column, a comparison of
# text with a number), 22 data, 0A not supported, 3F no such schema. (A login it refuses is the
# connection's, as ADBC reports it too: unavailable.)
REFUSED_SQLSTATES = ("42", "22", "0A", "3F")
# SQLite's result codes of a file that is busy, locked, unreadable, full or out of reach; its
# SQLITE_ERROR (1) is a statement it refuses.
SQLITE_TRANSIENT = {5, 6, 9, 10, 13, 14, 15}
SQLITE_REFUSED = {1}
UNAVAILABLE, REFUSED = "unavailable", "refused"
T = TypeVar("T")
_END = object()


def error_kind(err: BaseException) -> str | None:
    """UNAVAILABLE for a database that is down, dropped the connection or did not answer in
    time; REFUSED for a query it refuses; None when the error is not the database's (a bug).
    Knows SQLAlchemy's wrappers (psycopg, sqlite3 underneath), ADBC's errors and the OSError
    its Arrow stream raises when the connection breaks mid-read."""
    if isinstance(err, (sa.exc.DisconnectionError, sa.exc.TimeoutError)):
        return UNAVAILABLE
    if isinstance(err, sa.exc.DBAPIError) and err.connection_invalidated:
        return UNAVAILABLE
    orig = _driver_error(err)
    state = _sqlstate(orig)
    if state:
        if state.startswith(TRANSIENT_SQLSTATES):
            return UNAVAILABLE
        if state.startswith(REFUSED_SQLSTATES):
            return REFUSED
    if isinstance(orig, sqlite3.Error) and getattr(orig, "sqlite_errorcode", None) is not None:
        code = orig.sqlite_errorcode & 0xFF  # the primary code of an extended one
        return UNAVAILABLE if code in SQLITE_TRANSIENT else REFUSED if code in SQLITE_REFUSED \
            else None
    adbc = _adbc_errors()
    if adbc is not None and isinstance(orig, adbc.Error):
        if isinstance(orig, adbc.OperationalError) or orig.status_code in (
                adbc.AdbcStatusCode.IO, adbc.AdbcStatusCode.TIMEOUT,
                adbc.AdbcStatusCode.CANCELLED):
            return UNAVAILABLE
        if isinstance(orig, (adbc.ProgrammingError, adbc.NotSupportedError)):
            return REFUSED
        return None
    if isinstance(err, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return UNAVAILABLE
    if isinstance(err, (sa.exc.ProgrammingError, sa.exc.NotSupportedError)):
        return REFUSED
    if isinstance(orig, OSError):  # a socket, or libpq through ADBC's Arrow stream
        return UNAVAILABLE
    return None


def source_error(err: BaseException, cfg: TableConfig, timeout_s: int, midway: bool = False
                 ) -> DailyrecError | None:
    """The error to raise for a database error met reading cfg's table (midway: after its rows
    began to arrive), in one line naming the table (and the timeout setting, or the window
    column); None when it is not the database's."""
    kind = error_kind(err)
    if kind is None:
        return None
    detail = _driver_message(err)
    if kind == REFUSED:
        return ConfigError(
            f"table '{cfg.name}': the source database refused the query on window column "
            f"'{cfg.window_column}' (window_format {cfg.window_format}): {detail}. Check "
            f"source.tables.{cfg.name} in params.yaml against the table's columns and types")
    if _timed_out(err, detail):
        return ServiceUnavailable(
            f"cannot read the source database: table '{cfg.name}' took longer than "
            f"source.timeout_seconds ({timeout_s} s): {detail}; the next run retries")
    if midway:
        return ServiceUnavailable(f"cannot read the source database: reading table '{cfg.name}' "
                                  f"broke off midway: {detail}; the next run retries")
    return ServiceUnavailable(f"cannot read the source database: table '{cfg.name}': {detail}; "
                              "the next run retries")


@contextlib.contextmanager
def _reading(cfg: TableConfig, timeout_s: int, midway: bool = False) -> Iterator[None]:
    """Calls into the database driver: its errors become source_error's kinds."""
    try:
        yield
    except DailyrecError:
        raise
    except Exception as err:
        raised = source_error(err, cfg, timeout_s, midway)
        if raised is None:
            raise
        raise raised from err


def _driver_calls(items: Iterable[T], cfg: TableConfig, timeout_s: int) -> Iterator[T]:
    """The items of a driver's iterator, each next() under _reading (the work done with each
    item is not: its errors are not the database's)."""
    iterator = iter(items)
    while True:
        with _reading(cfg, timeout_s, midway=True):
            item = next(iterator, _END)
        if item is _END:
            return
        yield item


def _driver_error(err: BaseException) -> BaseException:
    """The driver's own exception under SQLAlchemy's wrapper."""
    orig = getattr(err, "orig", None) if isinstance(err, sa.exc.DBAPIError) else None
    return orig if isinstance(orig, BaseException) else err


def _sqlstate(err: BaseException) -> str | None:
    state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def _adbc_errors():
    try:
        import adbc_driver_manager
    except ImportError:
        return None
    return adbc_driver_manager


def _timed_out(err: BaseException, detail: str) -> bool:
    """A statement, lock or connection timeout (a query cancelled by hand says otherwise)."""
    orig = _driver_error(err)
    if isinstance(orig, TimeoutError) or "timeout" in detail.lower():
        return True
    if isinstance(orig, sqlite3.Error):  # busy or locked past the busy timeout
        return (getattr(orig, "sqlite_errorcode", 0) or 0) & 0xFF in (5, 6)
    adbc = _adbc_errors()
    return adbc is not None and isinstance(orig, adbc.Error) and \
        orig.status_code == adbc.AdbcStatusCode.TIMEOUT


_SERVER_WORDS = re.compile(r"\b(?:ERROR|FATAL|PANIC):\s+(.*)")


def _driver_message(err: BaseException) -> str:
    """The driver's message in one line: the server's own words where libpq or ADBC wrapped
    them ("IO: [libpq] ... FATAL:  terminating connection ..." -> "terminating connection
    ..."), at most 300 characters."""
    text = str(_driver_error(err)).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()),
                 type(_driver_error(err)).__name__)
    server = _SERVER_WORDS.search(first)
    return (server.group(1) if server else first)[:300]


def _frame(columns: dict[str, object], id_columns: set[str]) -> pd.DataFrame:
    """A chunk as a DataFrame whose values are exact: a column becomes an Arrow array when its
    values have one type (an int64 column with NULLs stays int64: never float), integer ids
    become their decimal text, binary columns text where they are UTF-8, and anything else
    (mixed types, bytes that are not UTF-8) stays as Python objects for sanitise()."""
    out = {}
    for name, values in columns.items():
        array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else _typed(values)
        if array is None:
            out[name] = pd.Series(np.asarray(values, dtype=object), dtype=object)
            continue
        if pa.types.is_integer(array.type) and name in id_columns:
            array = pc.cast(array, pa.string())
        elif pa.types.is_date(array.type):  # midnight UTC: the datetime fast path reads it
            array = pc.cast(array, pa.timestamp("us"))
        elif pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
            try:
                array = pc.cast(array, pa.string())  # Arrow checks the UTF-8
            except pa.ArrowInvalid:
                out[name] = pd.Series(array.to_numpy(zero_copy_only=False), dtype=object)
                continue
        out[name] = array.to_pandas()
    return pd.DataFrame(out)


def _typed(values) -> pa.Array | None:
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, UnicodeEncodeError, OverflowError):
        return None


def _escaped(value) -> str | None:
    """Text a value that is not UTF-8 is shown as (its bad bytes as \\xNN), or None if it is."""
    if isinstance(value, (bytes, bytearray)):
        try:
            bytes(value).decode("utf-8")
            return None
        except UnicodeDecodeError:
            return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return None
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


def sanitise(raw: pd.DataFrame, mapping: dict[str, str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Find the values that are not UTF-8 text (bytes, or text read with surrogates), in the
    columns left as Python objects only; replace each with its escaped form (so the quarantined
    raw row shows it) and decoded UTF-8 bytes with their text. Returns the frame and, per row,
    the 1-based position in S.SOURCE_FIELDS of the first field that was not UTF-8 (0: none)."""
    bad_field = np.zeros(len(raw), dtype=np.int8)
    for position, fld in enumerate(S.SOURCE_FIELDS, start=1):
        column = mapping.get(fld)
        if column is None or raw[column].dtype != object:
            continue
        codes, uniques = pd.factorize(raw[column], use_na_sentinel=True)
        kind = pd.api.types.infer_dtype(uniques, skipna=True)
        if kind == "string" and _typed(list(uniques)) is not None:
            continue  # plain text after all: the common case costs one Arrow conversion
        # distinct values only (a few per chunk)
        escaped = np.array([_escaped(v) for v in uniques], dtype=object)
        decoded = np.array([bytes(v).decode("utf-8") if isinstance(v, (bytes, bytearray))
                            and e is None else v for v, e in zip(uniques, escaped)],
                           dtype=object)
        broken = np.array([e is not None for e in escaped], dtype=bool)
        replacement = np.where(broken, escaped, decoded)
        rows = codes >= 0
        values = raw[column].to_numpy(dtype=object).copy()
        values[rows] = replacement[codes[rows]]
        raw = raw.assign(**{column: pd.Series(values, index=raw.index, dtype=object)})
        hit = np.zeros(len(raw), dtype=bool)
        hit[rows] = broken[codes[rows]]
        bad_field[hit & (bad_field == 0)] = position
    return raw, bad_field


# Quarantine reasons in priority order: a row is quarantined for the first one that applies.
NOT_UTF8 = tuple((f, "not_utf8") for f in S.SOURCE_FIELDS)
QUARANTINE_REASONS: tuple[tuple[str, str], ...] = (
    *NOT_UTF8,
    ("user_id", "missing"), ("user_id", "invalid"), ("item_id", "missing"), ("item_id", "invalid"),
    ("event_id", "invalid"),
    ("event_type", "missing"), ("event_type", "unknown"),
    ("ts", "missing"), ("ts", "unparseable"), (TS_OFFSET, "invalid"), ("ts", "future"),
    ("ts", "too_old"), ("ts", "too_late"), ("quantity", "invalid"),
)
# Found after normalisation, against the rows fetched before: not in the priority list.
CONFLICT = ("event_id", "conflict")
_REASON_LABELS = np.array([f"{f}:{r}" for f, r in QUARANTINE_REASONS], dtype=object)


def normalise(raw: pd.DataFrame, cfg: TableConfig, mapping: dict[str, str], window: Window
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Source rows -> (canonical events, quarantined rows). Vectorised; no loop over rows."""
    events, quarantine, _ = normalise_table(raw, cfg, mapping, window)
    return S.to_frame(events).reset_index(drop=True), quarantine


def normalise_table(raw: pd.DataFrame, cfg: TableConfig, mapping: dict[str, str], window: Window
                    ) -> tuple[pa.Table, pd.DataFrame, Counter]:
    """normalise, with the events as an Arrow table in EVENT_SCHEMA (what fetch writes), and the
    rows of ignored event types counted by their (folded) type."""
    raw, not_utf8 = sanitise(raw, mapping)
    n = len(raw)
    # Ids and event types as distinct values + positions, times as int64 microseconds: the
    # checks run on those, and each output column is taken once, for the kept rows only.
    user = S.encode_ids(raw[mapping["user_id"]])
    item = S.encode_ids(raw[mapping["item_id"]])
    own_id = S.encode_ids(raw[mapping["event_id"]], distinct=False) \
        if "event_id" in mapping else None
    if cfg.event_type is not None:
        raw_type = pd.Series(cfg.event_type, index=raw.index, dtype="str")
    else:
        raw_type = raw[mapping["event_type"]]
    etype = S.encode_event_types(raw_type, cfg.event_types, cfg.ignore_event_types)
    ignored = etype.ignored[etype.slots]
    raw_ts = raw[mapping["ts"]]
    ts = S.timestamp_micros(raw_ts)
    no_ts = ts == S.NAT
    offset, bad_offset = _offset_micros(raw, mapping.get(TS_OFFSET), cfg.ts_offset_unit)
    ts = np.where(no_ts | bad_offset, ts, ts + offset)
    quantity, bad_quantity = _quantity(raw, mapping.get("quantity"))
    user_problem, item_problem = user.problems(), item.problems()
    oldest = window.start - max(window.max_late, dt.timedelta(days=cfg.lookback_days))
    conditions = [
        *(not_utf8 == k for k in range(1, len(NOT_UTF8) + 1)),
        user_problem == 1, user_problem == 2, item_problem == 1, item_problem == 2,
        own_id.problems() == 2 if own_id is not None else np.zeros(n, dtype=bool),
        np.asarray(raw_type.isna()), np.asarray(etype.take().is_null()),
        np.asarray(raw_ts.isna()), no_ts, bad_offset, ts > _micros(window.max_future),
        ~no_ts & (ts < _micros(window.min_ts)), ~no_ts & (ts < _micros(oldest)),
        bad_quantity,
    ]  # in QUARANTINE_REASONS' order
    # 0 = good, k = the k-th reason (small ints: no per-row strings for the good rows).
    code = np.select(conditions, np.arange(1, len(conditions) + 1, dtype=np.int8), default=0)
    # An event type the table ignores is counted as such, whatever else is wrong with the row
    # (it would never be used); a row that is not UTF-8 is quarantined first.
    ignore = ignored & (not_utf8 == 0)
    code[ignore] = 0
    ignored_by_type = Counter(pd.Series(etype.names[etype.slots[ignore]]).value_counts()
                              .to_dict()) if ignore.any() else Counter()
    bad = code > 0
    quarantine = _quarantine_rows(raw.take(np.flatnonzero(bad)), code[bad], mapping, cfg)

    keep = np.flatnonzero(~bad & ~ignore)
    kept = pa.array(keep)
    table = pa.table({
        "user_id": user.take(keep), "item_id": item.take(keep), "event_type": etype.take(keep),
        "ts": pa.array(ts[keep], type=S.EVENT_SCHEMA.field("ts").type),
    })
    if own_id is not None:
        own = pc.binary_join_element_wise(
            pa.scalar(cfg.name + ":", pa.large_string()),
            own_id.take(keep).cast(pa.large_string()), pa.scalar("", pa.large_string()))
        lacking = np.asarray(own.is_null())
        if lacking.any():  # derive ids only for the rows without their own
            derived = np.full(len(lacking), None, dtype=object)
            derived[lacking] = S.derive_event_ids(_key_frame(take_rows(table, lacking)))
            own = pc.coalesce(own, pa.array(derived, type=pa.large_string()))
        event_id = own
    else:
        event_id = pa.array(S.derive_event_ids(_key_frame(table)).array)
    events = pa.table({
        "event_id": event_id, **{c: table[c] for c in ("user_id", "item_id", "event_type", "ts")},
        "source": pa.repeat(pa.scalar(cfg.name, pa.string()), len(keep)),
        "user_agent": _optional_text(raw, mapping.get("user_agent")).take(kept),
        "ip": _optional_text(raw, mapping.get("ip")).take(kept),
        "quantity": pa.array(quantity[keep], type=pa.float64(), from_pandas=True),
    })
    return events.cast(S.EVENT_SCHEMA), quarantine, ignored_by_type


def _quantity(raw: pd.DataFrame, column: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(per row: the quantity, NaN where there is none, i.e. 1; per row: given but not a finite
    number >= 0)."""
    if column is None:
        return np.full(len(raw), np.nan), np.zeros(len(raw), dtype=bool)
    given = raw[column]
    values = pd.to_numeric(given, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    present = np.asarray(given.notna())
    bad = present & ~(np.isfinite(values) & (values >= 0))
    return np.where(bad, np.nan, values), bad


def _offset_micros(raw: pd.DataFrame, column: str | None, unit: str | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(per row: the ts_offset column in microseconds, 0 where unusable; per row: unusable, i.e.
    null, negative, not a number, or too large for a time). No column: all zero, all usable."""
    if column is None:
        return np.zeros(len(raw), dtype=np.int64), np.zeros(len(raw), dtype=bool)
    values = pd.to_numeric(raw[column], errors="coerce").to_numpy(dtype="float64",
                                                                   na_value=np.nan)
    with np.errstate(invalid="ignore", over="ignore"):
        micros = values * TS_OFFSET_UNITS[unit]
        usable = np.isfinite(micros) & (micros >= 0) & (micros < 2**62)
        return np.round(np.where(usable, micros, 0)).astype(np.int64), ~usable


def _micros(moment: dt.datetime) -> int:
    """A UTC moment in timestamp_micros' unit."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (moment - epoch) // dt.timedelta(microseconds=1)


def take_rows(data: pa.Table | pa.Array, mask: np.ndarray) -> pa.Table | pa.Array:
    """Rows where mask is True. Arrow's take, not filter: filter copies long strings (user
    agents) several times slower."""
    return data.take(pa.array(np.flatnonzero(mask)))


def _key_frame(table: pa.Table) -> pd.DataFrame:
    return table.select(["user_id", "item_id", "event_type", "ts"]).to_pandas()


def _optional_text(raw: pd.DataFrame, column: str | None) -> pa.Array:
    if column is None:
        return pa.nulls(len(raw), pa.large_string())
    text = S.trimmed_text(raw[column])
    blank = pc.equal(text, "")
    return pc.if_else(blank, pa.scalar(None, text.type), text) if pc.any(blank).as_py() else text


_REASON_FIELDS = np.array([f for f, _ in QUARANTINE_REASONS], dtype=object)


def _quarantine_rows(bad: pd.DataFrame, code: np.ndarray, mapping: dict[str, str],
                     cfg: TableConfig) -> pd.DataFrame:
    """One row per quarantined source row: the reason, the field and its raw value as text, and
    the whole raw row as JSON. code is the 1-based index into QUARANTINE_REASONS."""
    if bad.empty:
        return S.empty_quarantine()
    fields = _REASON_FIELDS[code - 1]
    values = np.full(len(bad), None, dtype=object)
    for fld in np.unique(fields):  # a handful of fields, not rows
        rows = fields == fld
        if fld == "event_type" and cfg.event_type is not None:
            values[rows] = cfg.event_type
        else:
            values[rows] = bad[mapping[fld]].astype("str").to_numpy(dtype=object)[rows]
    raw_json = bad.to_json(orient="records", lines=True, date_format="iso", default_handler=str)
    return pd.DataFrame({"source": cfg.name, "reason": _REASON_LABELS[code - 1], "field": fields,
                         "value": pd.Series(values, dtype="str").to_numpy(),
                         "raw": raw_json.splitlines()})


CONTENT_COLUMNS = ["user_id", "item_id", "event_type", "ts", "quantity"]


def content_hashes(events: pa.Table) -> np.ndarray:
    """A 64-bit hash of what an event says (user, item, type, time, quantity): two rows with one
    event id are duplicates when these agree, a conflict when they do not."""
    frame = events.select(CONTENT_COLUMNS).to_pandas()
    frame["ts"] = frame["ts"].astype("int64")
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


class SeenIds:
    """The event ids fetched so far this run, as sorted 64-bit hashes with the hash of each one's
    content: memory stays at 16 bytes an event and each chunk costs one sort of the chunk, a
    binary search of its sorted distinct hashes and one linear merge, never a rescan of the day."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.uint64)
        self.contents = np.empty(0, dtype=np.uint64)

    def add(self, event_ids: pa.ChunkedArray | pa.Array, contents: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
        """Remember these ids; returns (fresh, conflict): fresh where an id is new (not seen
        before, not repeated earlier in this batch), conflict where a repeated id comes with
        other content than the first row that had it. The rest are duplicates."""
        hashes = S.id_hashes(event_ids)
        contents = np.asarray(contents, dtype=np.uint64)
        n = len(hashes)
        if n == 0:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
        # The batch sorted by id hash; stable, so each id's first row in the batch leads its run.
        order = np.argsort(hashes, kind="stable")
        sorted_h, sorted_c = hashes[order], contents[order]
        leads = np.empty(n, dtype=bool)
        leads[0] = True
        np.not_equal(sorted_h[1:], sorted_h[:-1], out=leads[1:])
        run = np.cumsum(leads) - 1  # per sorted row: which distinct id
        distinct_h, first_c = sorted_h[leads], sorted_c[leads]
        # Sorted keys: the binary searches walk self.hashes forward (cache-friendly).
        pos = np.searchsorted(self.hashes, distinct_h)
        if len(self.hashes):
            at = np.minimum(pos, len(self.hashes) - 1)
            known = self.hashes[at] == distinct_h
            earlier = np.where(known, self.contents[at], first_c)
        else:
            known, earlier = np.zeros(len(distinct_h), dtype=bool), first_c
        fresh_sorted = leads & ~known[run]
        conflict_sorted = ~fresh_sorted & (sorted_c != earlier[run])
        fresh, conflict = np.empty(n, dtype=bool), np.empty(n, dtype=bool)
        fresh[order], conflict[order] = fresh_sorted, conflict_sorted
        # The new distinct hashes are sorted already: one linear merge puts each where the search
        # found its place.
        new = ~known
        slots = pos[new] + np.arange(int(new.sum()))  # their places in the merged arrays
        placed = np.zeros(len(self.hashes) + len(slots), dtype=bool)
        placed[slots] = True
        for name, values in (("hashes", distinct_h[new]), ("contents", first_c[new])):
            merged = np.empty(len(placed), dtype=np.uint64)
            merged[placed], merged[~placed] = values, getattr(self, name)
            setattr(self, name, merged)
        return fresh, conflict


def conflict_rows(events: pa.Table, rows: np.ndarray) -> pd.DataFrame:
    """Quarantine rows for events whose id was fetched before with other content."""
    if not len(rows):
        return S.empty_quarantine()
    picked = S.to_frame(events.take(pa.array(rows)))
    raw = picked.to_json(orient="records", lines=True, date_format="iso", default_handler=str)
    return pd.DataFrame({"source": picked["source"].to_numpy(dtype=object),
                         "reason": f"{CONFLICT[0]}:{CONFLICT[1]}", "field": CONFLICT[0],
                         "value": picked["event_id"].to_numpy(dtype=object),
                         "raw": raw.splitlines()})


def fetch(source: SourceSettings, window: Window, url: str, out_dir: Path) -> dict:
    """Fetch every table into out_dir; returns the counts (fetch_delta writes them as metrics).

    A database that cannot be reached, drops the connection or does not answer within
    source.timeout_seconds is ServiceUnavailable (retry later); a table or column that does not
    match the configuration is ConfigError. The files are written in a folder beside out_dir,
    which takes out_dir's place only when they are whole: on any failure out_dir is as it was."""
    _remove_leftovers(out_dir)
    staging = files.tmp_path(out_dir)
    staging.mkdir(parents=True)
    try:
        counts = _fetch(source, window, url, staging)
        files.replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def _remove_leftovers(out_dir: Path) -> None:
    """The folders a fetch killed mid-way (SIGKILL, power loss) left beside out_dir."""
    for pattern in (f".{out_dir.name}.*.tmp", f".{out_dir.name}.*.old"):
        for left in out_dir.parent.glob(pattern):
            shutil.rmtree(left, ignore_errors=True)


COUNTS = ("fetched", "kept", "quarantined", "duplicates", "ignored")


def _fetch(source: SourceSettings, window: Window, url: str, out_dir: Path) -> dict:
    engine = source_engine(url, source.timeout_seconds)
    seen = SeenIds()
    per_table: dict[str, dict] = {}
    reasons: Counter[str] = Counter()
    ignored: Counter[str] = Counter()
    quarantined: list[pd.DataFrame] = []
    try:
        with pq.ParquetWriter(out_dir / "events.parquet", S.EVENT_SCHEMA) as writer:
            for cfg in source.tables:
                mapping, chunks = read_table(engine, cfg, window, source.chunk_rows,
                                             source.timeout_seconds)
                counts: Counter[str] = Counter()
                # the driver fills the next chunk while this one is normalised and written;
                # closing() stops the reader (and gives its connection back) on an error here
                with contextlib.closing(prefetched(chunks)) as ahead:
                    for raw in ahead:
                        events, bad, skipped = normalise_table(raw, cfg, mapping, window)
                        fresh, conflict = seen.add(events["event_id"], content_hashes(events))
                        writer.write_table(take_rows(events, fresh))
                        bad = pd.concat([bad, conflict_rows(events, np.flatnonzero(conflict))],
                                        ignore_index=True)
                        counts.update(fetched=len(raw), kept=int(fresh.sum()), quarantined=len(bad),
                                      duplicates=int((~fresh & ~conflict).sum()),
                                      ignored=sum(skipped.values()))
                        reasons.update(bad["reason"].value_counts().to_dict())
                        ignored.update(skipped)
                        quarantined.append(bad)
                per_table[cfg.name] = {**{k: int(counts[k]) for k in COUNTS}, "columns": mapping}
    finally:
        engine.dispose()
    q = pd.concat(quarantined, ignore_index=True) if quarantined else S.empty_quarantine()
    pq.write_table(pa.Table.from_pandas(q, schema=S.QUARANTINE_SCHEMA, preserve_index=False),
                   out_dir / "quarantine.parquet")
    return {
        "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
        **{k: sum(t[k] for t in per_table.values()) for k in COUNTS},
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "ignored_by_type": dict(sorted(ignored.items())),
        "tables": per_table,
    }
