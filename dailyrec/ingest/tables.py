"""Settings of the source tables: params.yaml `source` (fetch_delta): per table, the column the
day's window is applied to and how it stores time, the columns mapped to canonical fields, and
its event-type spellings, each checked and named in its error."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dailyrec.core import schema as S
from dailyrec.core.settings import ConfigError, Params
from dailyrec.ingest import normalise as N


IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]{0,62}"


WINDOW_FORMATS = ("epoch_s", "epoch_ms", "datetime")


TABLE_KEYS = ("window_column", "window_format", "lookback_days", "columns", "event_types",
              "event_type", "ignore_event_types", "ts_offset_unit")


# A column added to ts (a table whose only time is a date, with the event's offset into it):
# mapped under columns like a canonical field, with its unit in ts_offset_unit.
TS_OFFSET = "ts_offset"


TS_OFFSET_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}  # microseconds per unit


@dataclass(frozen=True)
class TableConfig:
    """One source table. The optional keys of a table default here (a table is the user's own)."""

    name: str
    window_column: str
    window_format: str
    lookback_days: int = 0
    columns: dict[str, str] = field(default_factory=dict)
    event_types: dict[str, str] = field(default_factory=dict)
    event_type: str | None = None  # every row is this type: a click log has no type column
    ignore_event_types: tuple[str, ...] = ()  # sent but not interest: counted, not quarantined
    ts_offset_unit: str | None = None  # the unit of columns[TS_OFFSET], when a table maps one


@dataclass(frozen=True)
class SourceSettings:
    tables: tuple[TableConfig, ...]
    chunk_rows: int
    timeout_seconds: int  # connect, per query (PostgreSQL), waiting on a lock (SQLite)


def _identifier(params: Params, key: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(IDENTIFIER, value):
        raise params.fail(key, "a plain SQL identifier (letters, digits and _ only, not starting "
                          "with a digit)", value)
    return value


def source(params: Params) -> SourceSettings:
    """source.tables (at least one), source.chunk_rows and source.timeout_seconds."""
    tables = params.mapping("source.tables")
    if not tables:
        raise ConfigError(f"{params.source}: source.tables must name at least one table")
    configs = []
    for name in tables:
        where = f"source.tables.{name}"
        _identifier(params, where, name)
        if params.get(where) is None:
            raise params.fail(where, "a mapping with window_column and window_format", None)
        params.known(where, TABLE_KEYS)
        columns = params.mapping(f"{where}.columns", {})
        bad_fields = set(columns) - {*N.SOURCE_FIELDS, TS_OFFSET}
        if bad_fields:
            raise ConfigError(f"{params.source}: {where}.columns: {sorted(bad_fields)} are not "
                              f"canonical fields (expected some of {N.SOURCE_FIELDS}, or "
                              f"{TS_OFFSET})")
        event_types = {str(k): str(v) for k, v in
                       params.mapping(f"{where}.event_types", {}).items()}
        for spelling, target in event_types.items():
            if target not in S.EVENT_TYPES:
                raise params.fail(f"{where}.event_types.{spelling}", f"one of {S.EVENT_TYPES}",
                                  target)
        constant = params.get(f"{where}.event_type", None)
        if constant is not None and constant not in S.EVENT_TYPES:
            raise params.fail(f"{where}.event_type", f"one of {S.EVENT_TYPES} (the type of "
                              "every row of a table without a type column)", constant)
        ignore = params.items(f"{where}.ignore_event_types", [])
        if not all(isinstance(t, str) and t.strip() for t in ignore):
            raise params.fail(f"{where}.ignore_event_types", "a list of event type names", ignore)
        clash = sorted({N.fold_event_type(t) for t in ignore} &
                       ({N.fold_event_type(k) for k in event_types} | set(S.EVENT_TYPES)))
        if clash:
            raise ConfigError(f"{params.source}: {where}.ignore_event_types: {clash} are also "
                              "mapped or canonical types; a type is either used or ignored")
        configs.append(TableConfig(
            name=name,
            window_column=_identifier(params, f"{where}.window_column",
                                      params.get(f"{where}.window_column")),
            window_format=params.choice(f"{where}.window_format", WINDOW_FORMATS),
            lookback_days=params.integer(f"{where}.lookback_days", low=0, default=0),
            columns={f: _identifier(params, f"{where}.columns.{f}", c) for f, c in columns.items()},
            event_types=event_types,
            event_type=constant,
            ignore_event_types=tuple(ignore),
            ts_offset_unit=_ts_offset_unit(params, where, TS_OFFSET in columns),
        ))
    return SourceSettings(tables=tuple(configs),
                          chunk_rows=params.integer("source.chunk_rows", low=1),
                          timeout_seconds=params.integer("source.timeout_seconds", low=1))


def _ts_offset_unit(params: Params, where: str, mapped: bool) -> str | None:
    """A table's ts_offset_unit: required with a ts_offset column (a unit is a fact about the
    source, never guessed), refused without one."""
    if not mapped:
        if params.get(f"{where}.ts_offset_unit", None) is not None:
            raise ConfigError(f"{params.source}: {where}.ts_offset_unit is set but "
                              f"{where}.columns maps no {TS_OFFSET} column")
        return None
    return params.choice(f"{where}.ts_offset_unit", list(TS_OFFSET_UNITS))
