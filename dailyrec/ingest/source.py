"""Source tables -> canonical events: what fetch_delta does, as a library.

    fetch(source, window, url, out_dir) -> counts
        every configured table's rows in the window, normalised (dailyrec.core.schema), deduplicated on
        event_id, written to out_dir/events.parquet; unusable rows to out_dir/quarantine.parquet
        with the field, the raw value (non-UTF-8 bytes escaped) and the reason.

How each table is read, and the database's errors sorted by kind: dailyrec.ingest.database. The
outputs are written in a folder beside out_dir and put in its place only when whole: a failed
fetch leaves out_dir as it was.

Nothing fetched is lost: fetched = kept + quarantined + duplicates + ignored, per table.
    quarantined   unusable rows, one reason each (QUARANTINE_REASONS), plus event_id:conflict, a
                  second row with an event id already fetched but other content (the first wins)
    duplicates    rows identical to one already fetched (same event id, same content)
    ignored       rows of an event type the table lists in ignore_event_types, counted by type
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dailyrec.core import files
from dailyrec.core import schema as S
from dailyrec.ingest import normalise as N
from dailyrec.ingest.tables import TS_OFFSET, TS_OFFSET_UNITS, SourceSettings, TableConfig
from dailyrec.ingest.settings import Window
from dailyrec.ingest.database import as_arrow, escaped_text, read_table, source_engine
from dailyrec.ingest.streams import prefetched


# --- the database's errors, by kind ---------------------------------------------------------------



def sanitise(raw: pd.DataFrame, mapping: dict[str, str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Find the values that are not UTF-8 text (bytes, or text read with surrogates), in the
    columns left as Python objects only; replace each with its escaped form (so the quarantined
    raw row shows it) and decoded UTF-8 bytes with their text. Returns the frame and, per row,
    the 1-based position in N.SOURCE_FIELDS of the first field that was not UTF-8 (0: none)."""
    bad_field = np.zeros(len(raw), dtype=np.int8)
    for position, fld in enumerate(N.SOURCE_FIELDS, start=1):
        column = mapping.get(fld)
        if column is None or raw[column].dtype != object:
            continue
        codes, uniques = pd.factorize(raw[column], use_na_sentinel=True)
        kind = pd.api.types.infer_dtype(uniques, skipna=True)
        if kind == "string" and as_arrow(list(uniques)) is not None:
            continue  # plain text after all: the common case costs one Arrow conversion
        # distinct values only (a few per chunk)
        escaped = np.array([escaped_text(v) for v in uniques], dtype=object)
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
NOT_UTF8 = tuple((f, "not_utf8") for f in N.SOURCE_FIELDS)
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
    user = N.encode_ids(raw[mapping["user_id"]])
    item = N.encode_ids(raw[mapping["item_id"]])
    own_id = N.encode_ids(raw[mapping["event_id"]], distinct=False) \
        if "event_id" in mapping else None
    if cfg.event_type is not None:
        raw_type = pd.Series(cfg.event_type, index=raw.index, dtype="str")
    else:
        raw_type = raw[mapping["event_type"]]
    etype = N.encode_event_types(raw_type, cfg.event_types, cfg.ignore_event_types)
    ignored = etype.ignored[etype.slots]
    raw_ts = raw[mapping["ts"]]
    ts = N.timestamp_micros(raw_ts)
    no_ts = ts == N.NAT
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
            derived[lacking] = N.derive_event_ids(_key_frame(take_rows(table, lacking)))
            own = pc.coalesce(own, pa.array(derived, type=pa.large_string()))
        event_id = own
    else:
        event_id = pa.array(N.derive_event_ids(_key_frame(table)).array)
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
    text = N.trimmed_text(raw[column])
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
