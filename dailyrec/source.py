"""Source tables -> canonical events: what fetch_delta does, as a library.

    fetch(source, window, url, out_dir) -> metrics
        every configured table's rows in the window, normalised (dailyrec.schema), deduplicated on
        event_id, written to out_dir/events.parquet; unusable rows to out_dir/quarantine.parquet
        with the field, raw value and reason.

Each table is read with one SELECT built by SQLAlchemy from reflected metadata: table and column
names are checked against the database and quoted by the dialect, the window bounds are bound
parameters, and rows stream in chunks of source.chunk_rows so memory stays bounded.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from dailyrec import schema as S
from dailyrec.errors import ConfigError, ServiceUnavailable
from dailyrec.settings.ingest import SourceSettings, TableConfig, Window

REQUIRED_SOURCE_FIELDS = ("user_id", "item_id", "event_type", "ts")


def resolve_columns(cfg: TableConfig, actual: list[str]) -> dict[str, str]:
    """Canonical field -> source column: the configured mapping first, then aliases."""
    mapping: dict[str, str] = {}
    for fld in S.SOURCE_FIELDS:
        if fld in cfg.columns:
            if cfg.columns[fld] not in actual:
                raise ConfigError(
                    f"table '{cfg.name}': column '{cfg.columns[fld]}' (mapped to {fld} in "
                    f"params.yaml) does not exist; the table has {actual}")
            mapping[fld] = cfg.columns[fld]
            continue
        taken = set(mapping.values())
        by_fold = {S.fold_name(c): c for c in actual if c not in taken}
        for alias in (S.fold_name(fld), *S.FIELD_ALIASES[fld]):
            if alias in by_fold:
                mapping[fld] = by_fold[alias]
                break
    missing = [f for f in REQUIRED_SOURCE_FIELDS if f not in mapping]
    if missing:
        raise ConfigError(
            f"table '{cfg.name}': no column found for {missing}; the table has {actual}. "
            f"Map them under source.tables.{cfg.name}.columns in params.yaml")
    return mapping


def _bound(moment: dt.datetime, fmt: str, column_type: sa.types.TypeEngine):
    if fmt == "epoch_s":
        return int(moment.timestamp())
    if fmt == "epoch_ms":
        return int(moment.timestamp() * 1000)
    aware = getattr(column_type, "timezone", False)
    return moment if aware else moment.replace(tzinfo=None)


def read_table(engine: sa.Engine, cfg: TableConfig, window: Window, chunk_rows: int
               ) -> tuple[dict[str, str], Iterator[pd.DataFrame]]:
    """Reflect the table, resolve its columns and stream the window's rows in chunks."""
    try:
        table = sa.Table(cfg.name, sa.MetaData(), autoload_with=engine)
    except sa.exc.NoSuchTableError:
        raise ConfigError(f"source table '{cfg.name}' does not exist in the source database "
                            f"(configured in params.yaml source.tables)") from None
    actual = [c.name for c in table.columns]
    if cfg.window_column not in actual:
        raise ConfigError(f"table '{cfg.name}': window column '{cfg.window_column}' does not "
                            f"exist; the table has {actual}")
    mapping = resolve_columns(cfg, actual)
    wanted = list(dict.fromkeys(mapping.values()))
    wcol = table.c[cfg.window_column]
    start = window.start - dt.timedelta(days=cfg.lookback_days)
    stmt = (sa.select(*[table.c[c] for c in wanted])
            .where(wcol >= sa.bindparam("lo", _bound(start, cfg.window_format, wcol.type)),
                   wcol < sa.bindparam("hi", _bound(window.end, cfg.window_format, wcol.type))))

    def chunks() -> Iterator[pd.DataFrame]:
        with engine.connect().execution_options(stream_results=True, yield_per=chunk_rows) as conn:
            result = conn.execute(stmt)
            for rows in result.partitions(chunk_rows):
                # Plain tuples: pandas builds a frame from Row objects five times slower.
                yield pd.DataFrame.from_records(list(map(tuple, rows)), columns=wanted)

    return mapping, chunks()


# Quarantine reasons in priority order: a row is quarantined for the first one that applies.
QUARANTINE_REASONS: tuple[tuple[str, str], ...] = (
    ("user_id", "missing"), ("user_id", "invalid"), ("item_id", "missing"), ("item_id", "invalid"),
    ("event_type", "missing"), ("event_type", "unknown"),
    ("ts", "missing"), ("ts", "unparseable"), ("ts", "future"), ("ts", "too_old"),
)
_REASON_LABELS = np.array([f"{f}:{r}" for f, r in QUARANTINE_REASONS], dtype=object)


def normalise(raw: pd.DataFrame, cfg: TableConfig, mapping: dict[str, str], window: Window
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Source rows -> (canonical events, quarantined rows). Vectorised; no loop over rows."""
    events, quarantine = normalise_table(raw, cfg, mapping, window)
    return S.to_frame(events).reset_index(drop=True), quarantine


def normalise_table(raw: pd.DataFrame, cfg: TableConfig, mapping: dict[str, str], window: Window
                    ) -> tuple[pa.Table, pd.DataFrame]:
    """normalise, with the events as an Arrow table in EVENT_SCHEMA (what fetch writes)."""
    # Ids and event types as distinct values + positions, times as int64 microseconds: the
    # checks run on those, and each output column is taken once, for the kept rows only.
    user = S.encode_ids(raw[mapping["user_id"]])
    item = S.encode_ids(raw[mapping["item_id"]])
    raw_type = raw[mapping["event_type"]]
    etype = S.encode_event_types(raw_type, cfg.event_types)
    raw_ts = raw[mapping["ts"]]
    ts = S.timestamp_micros(raw_ts)
    user_problem, item_problem = user.problems(), item.problems()
    conditions = [
        user_problem == 1, user_problem == 2, item_problem == 1, item_problem == 2,
        np.asarray(raw_type.isna()), np.asarray(etype.take().is_null()),
        np.asarray(raw_ts.isna()), ts == S.NAT, ts > _micros(window.max_future),
        (ts != S.NAT) & (ts < _micros(window.min_ts)),
    ]  # in QUARANTINE_REASONS' order
    # 0 = good, k = the k-th reason (small ints: no per-row strings for the good rows).
    code = np.select(conditions, np.arange(1, len(conditions) + 1, dtype=np.int8), default=0)
    bad = code > 0
    quarantine = _quarantine_rows(raw.take(np.flatnonzero(bad)), code[bad], mapping, cfg.name)

    keep = np.flatnonzero(~bad)
    kept = pa.array(keep)
    table = pa.table({
        "user_id": user.take(keep), "item_id": item.take(keep), "event_type": etype.take(keep),
        "ts": pa.array(ts[keep], type=S.EVENT_SCHEMA.field("ts").type),
    })
    if "event_id" in mapping:
        own = pc.binary_join_element_wise(
            pa.scalar(cfg.name + ":", pa.large_string()),
            _optional_text(raw, mapping["event_id"]).take(kept), pa.scalar("", pa.large_string()))
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
    })
    return events.cast(S.EVENT_SCHEMA), quarantine


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
                     source: str) -> pd.DataFrame:
    """One row per quarantined source row: the reason, the field and its raw value as text, and
    the whole raw row as JSON. code is the 1-based index into QUARANTINE_REASONS."""
    if bad.empty:
        return S.empty_quarantine()
    fields = _REASON_FIELDS[code - 1]
    values = np.full(len(bad), None, dtype=object)
    for fld in np.unique(fields):  # a handful of fields, not rows
        rows = fields == fld
        values[rows] = bad[mapping[fld]].astype("str").to_numpy(dtype=object)[rows]
    raw_json = bad.to_json(orient="records", lines=True, date_format="iso", default_handler=str)
    return pd.DataFrame({"source": source, "reason": _REASON_LABELS[code - 1], "field": fields,
                         "value": pd.Series(values, dtype="str").to_numpy(),
                         "raw": raw_json.splitlines()})


class SeenIds:
    """The event ids fetched so far this run, as sorted 64-bit hashes: memory stays at 8 bytes
    an event and each chunk costs a binary search plus one merge, never a rescan of the day."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.uint64)

    def add(self, event_ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Remember these ids; True where an id is new (not seen before, not repeated earlier in
        this batch)."""
        ids = np.asarray(event_ids.to_numpy(zero_copy_only=False), dtype=object)
        hashes = pd.util.hash_array(ids, categorize=False)
        first = ~pd.Series(hashes).duplicated().to_numpy()
        known = np.zeros(len(hashes), dtype=bool)
        if len(self.hashes):
            pos = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
            known = self.hashes[pos] == hashes
        fresh = first & ~known
        # Two sorted runs: the stable sort (timsort) merges them in linear time.
        self.hashes = np.sort(np.concatenate([self.hashes, np.sort(hashes[fresh])]),
                              kind="stable")
        return fresh


def fetch(source: SourceSettings, window: Window, url: str, out_dir: Path) -> dict:
    """Fetch every table into out_dir; returns the counts (fetch_delta writes them as metrics).

    A database that cannot be reached is ServiceUnavailable (retry later); a table or column that
    does not match the configuration is ConfigError."""
    try:
        return _fetch(source, window, url, out_dir)
    except sa.exc.OperationalError as err:
        raise ServiceUnavailable(f"cannot read the source database: "
                                 f"{str(err.orig).strip()}") from None


def _fetch(source: SourceSettings, window: Window, url: str, out_dir: Path) -> dict:
    engine = sa.create_engine(url)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_events = out_dir / ".events.parquet.tmp"
    seen = SeenIds()
    per_table: dict[str, dict[str, int]] = {}
    reasons: Counter[str] = Counter()
    quarantined: list[pd.DataFrame] = []
    try:
        with pq.ParquetWriter(tmp_events, S.EVENT_SCHEMA) as writer:
            for cfg in source.tables:
                mapping, chunks = read_table(engine, cfg, window, source.chunk_rows)
                counts = Counter(fetched=0, kept=0, quarantined=0, duplicates=0)
                for raw in chunks:
                    events, bad = normalise_table(raw, cfg, mapping, window)
                    fresh = seen.add(events["event_id"])
                    writer.write_table(take_rows(events, fresh))
                    counts.update(fetched=len(raw), kept=int(fresh.sum()), quarantined=len(bad),
                                  duplicates=int((~fresh).sum()))
                    reasons.update(bad["reason"].value_counts().to_dict())
                    quarantined.append(bad)
                per_table[cfg.name] = {**{k: 0 for k in ("fetched", "kept", "quarantined",
                                                          "duplicates")}, **dict(counts)}
                per_table[cfg.name]["columns"] = mapping
    finally:
        engine.dispose()
    q = pd.concat(quarantined, ignore_index=True) if quarantined else S.empty_quarantine()
    tmp_quarantine = out_dir / ".quarantine.parquet.tmp"
    pq.write_table(pa.Table.from_pandas(q, schema=S.QUARANTINE_SCHEMA, preserve_index=False),
                   tmp_quarantine)
    tmp_events.replace(out_dir / "events.parquet")
    tmp_quarantine.replace(out_dir / "quarantine.parquet")
    totals = {k: sum(t[k] for t in per_table.values())
              for k in ("fetched", "kept", "quarantined", "duplicates")}
    return {
        "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
        **totals,
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "tables": per_table,
    }
