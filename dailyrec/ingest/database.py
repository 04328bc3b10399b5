"""Reading a source table, and the database's own errors sorted by kind (fetch_delta).

Each table is read with one SELECT built by SQLAlchemy from reflected metadata: table and column
names are checked against the database and quoted by the dialect, the window column's declared type
against the table's window_format (before any query), and the window bounds are values this code
computes (never text from a user). PostgreSQL is read through ADBC, Arrow-native: ids stay exact
64-bit integers whatever a batch holds (no float on the way, which would turn 9007199254740993 into
9007199254740992.0), and it is several times faster than row tuples. Other databases stream rows
through SQLAlchemy in chunks of source.chunk_rows; each column becomes an Arrow array (int64 with
NULLs kept exact) or, when it mixes types, stays as Python objects.

The database's own errors are sorted by kind (source_error): one that is down, drops the connection
or does not answer within source.timeout_seconds is ServiceUnavailable (exit 69, the next run
retries); a query it refuses is ConfigError (exit 2) naming the table and column.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import sqlite3
from typing import Iterable, Iterator, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from dailyrec.ingest import normalise as N
from dailyrec.core.errors import ConfigError, DailyrecError, ServiceUnavailable
from dailyrec.ingest.tables import TS_OFFSET, WINDOW_FORMATS, TableConfig
from dailyrec.ingest.settings import Window

UNAVAILABLE, REFUSED = "unavailable", "refused"
REQUIRED_SOURCE_FIELDS = ("user_id", "item_id", "event_type", "ts")


ID_FIELDS = ("event_id", "user_id", "item_id")




ADBC_BATCH_BYTES = 16 << 20  # the PostgreSQL driver's batch size hint


def resolve_columns(cfg: TableConfig, actual: list[str]) -> dict[str, str]:
    """Canonical field -> source column: the configured mapping first, then aliases; and
    TS_OFFSET -> its column when the table maps one (never found by alias)."""
    mapping: dict[str, str] = {}
    offset = _configured_column(cfg, TS_OFFSET, actual) if TS_OFFSET in cfg.columns else None
    for fld in N.SOURCE_FIELDS:
        if fld in cfg.columns:
            mapping[fld] = _configured_column(cfg, fld, actual)
            continue
        taken = set(mapping.values()) | {offset}
        by_fold = {N.fold_name(c): c for c in actual if c not in taken}
        for alias in (N.fold_name(fld), *N.FIELD_ALIASES[fld]):
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
        array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else as_arrow(values)
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


def as_arrow(values) -> pa.Array | None:
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, UnicodeEncodeError, OverflowError):
        return None


def escaped_text(value) -> str | None:
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
