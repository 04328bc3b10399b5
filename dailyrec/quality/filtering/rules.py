"""The noise rules: only trusted, human interactions reach training (what filter_noise does).

    run(cfg, history, rejected, out) -> counts    the window's days (the filter.window_days days
                                                   before run.date, rejected days left out) ->
                                                   the events that survive every rule, written
                                                   to out in history order

The rules run in this order (RULES); each removes rows the earlier ones left, and counts them:
    crawler_ua   events whose user agent matches the `crawler-user-agents` pattern list (plus
                 filter.crawler_ua.extra_patterns)
    internal     users in filter.internal.user_ids or user_id_ranges (all their events), and
                 events from filter.internal.ip_cidrs (office networks)
    repeated     an event with the same user, item and type as one less than dedupe_seconds
                 before it (double clicks, reloads): the first is kept. Before behaviour: a
                 client that fires each action twice is not twice as fast
    behaviour    user-days over max_events_per_minute (any 60 s), max_events_per_day,
                 max_distinct_items_per_day or the active-hours limit flag the user on that day;
                 a user flagged on filter.behaviour.bot_days days loses the whole window, else
                 only the flagged days
    shared_ip    addresses behind which too many events a minute or a day, or too many distinct
                 user ids a day, arrive (rotating-id scrapers); filter.shared_ip.exempt_cidrs
                 (carrier NAT, the office) are left alone
    min_support  optional: users and items with fewer than min_user_events / min_item_events
                 events left (one pass)

What an IP text is (an address, in canonical form, or none) dailyrec.quality.filtering.ip_texts decides: an
event whose text is no address is an event without an IP to internal and shared_ip (kept, and
counted in metrics/filter.json's ip_texts).

Everything is vectorised: strings are handled once per distinct value (dictionary codes), events
are grouped with a stable O(n) counting sort (SciPy's COO -> CSR conversion), never a Python loop
over events. The window in memory is codes and times (read_window); the rules that group events
work a UTC day at a time, with the seconds before its midnight that its first events are judged
against (day_spans), and data/clean is written a day at a time: the memory a stage needs beyond
the codes follows the day, not the window. So does the work: what repeated, behaviour and
shared_ip decide about a day is kept per day by content hash and reused by later runs
(dailyrec.quality.filtering.day_verdicts says why that is safe); the window's own decisions (bots over
several days, min_support) are made every run. data/clean is a file per day (dailyrec.quality.filtering.clean),
the same bytes while the day's kept events are, and a day an earlier run wrote is linked.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy
import scipy.sparse as sp

from dailyrec.quality.filtering import clean
from dailyrec.core import env
from dailyrec.core import schema as S
from dailyrec.core.arrays import distinct
from dailyrec.core.errors import DataError
from dailyrec.ingest.history import Selection, partition_day, select_window
from dailyrec.quality.filtering import ip_texts
from dailyrec.quality.filtering.day_verdicts import DayVerdicts, Days, default_dir, file_hashes
from dailyrec.quality.settings import FilterSettings

# Repeats go before behaviour: a client that fires each action twice is not twice as fast.
RULES = ("crawler_ua", "internal", "repeated", "behaviour", "shared_ip", "min_support")
# the rules that say "not a human customer"
BOT_RULES = ("crawler_ua", "internal", "behaviour", "shared_ip")
DICTIONARY_COLUMNS = clean.DICTIONARY_COLUMNS  # the text columns but event_id
PATTERNS_PER_REGEX = 200  # RE2 handles a few hundred alternatives per regex quickly, not 1,500


# ---------------------------------------------------------------------------------------------
# The window as integer codes: what the rules work on.

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


# ---------------------------------------------------------------------------------------------
# The rules. Each takes the window and the events still alive, and returns what it removes.

def crawler_patterns(extra: tuple[str, ...] = ()) -> list[str]:
    import crawleruseragents  # the maintained list (PyPI: crawler-user-agents)

    return [entry["pattern"] for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA] + list(extra)


def crawler_user_agents(values: pa.Array, patterns: list[str]) -> np.ndarray:
    """One boolean per distinct user agent; RE2 over the distinct values, patterns in chunks."""
    flags = np.zeros(len(values), dtype=bool)
    if len(values) == 0:
        return flags
    for k in range(0, len(patterns), PATTERNS_PER_REGEX):  # a loop over pattern chunks
        regex = "|".join(f"(?:{p})" for p in patterns[k:k + PATTERNS_PER_REGEX])
        hit = pc.match_substring_regex(values, regex)
        flags |= pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
    return flags


def rule_crawler_ua(w: Window, alive: np.ndarray, cfg: FilterSettings) -> tuple[np.ndarray, dict]:
    flags = crawler_user_agents(w.user_agent.values, crawler_patterns(cfg.extra_patterns))
    removed = w.user_agent.lookup(flags) & alive
    detail = {"distinct_user_agents": int(flags.sum()),
              "top_user_agents": _top(w.user_agent.codes[removed], w.user_agent.values,
                                      cfg.top_offenders, "user_agent")}
    return removed, detail


def stable_order(codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Positions grouped by code (0..n_groups-1), in their order inside a group: a stable sort by
    code. A counting sort, O(n + n_groups): SciPy's COO -> CSR conversion places entries row by
    row in input order; a comparison sort where codes far outnumber the events (a day of a big
    catalogue), so that the cost follows the day, not the catalogue."""
    n = len(codes)
    if n_groups > 4 * n:
        return np.argsort(codes, kind="stable")
    index_type = np.int32 if n < 2**31 - 1 else np.int64
    by_code = sp.csr_array((np.ones(n, dtype=np.bool_), (codes, np.arange(n, dtype=index_type))),
                           shape=(max(n_groups, 1), max(n, 1)))
    return by_code.indices


def grouped(codes: np.ndarray, n_groups: int, alive: np.ndarray) -> np.ndarray:
    """The alive events' positions grouped by code, in window (time) order inside a group. Dead
    events go to one extra group at the end, which is cut off."""
    return stable_order(np.where(alive, codes, n_groups), n_groups + 1)[:np.count_nonzero(alive)]


def day_spans(w: Window, lead_us: int) -> Iterator[tuple[int, int, int]]:
    """Per UTC day with events: (first, start, stop). Rows start:stop are the day's events; rows
    first:start the days-before's events less than lead_us before its midnight, all that judging
    the day's first events looks back at. The window is in time order, so a day is a slice: the
    rules work a day at a time, in memory that grows with the day, not the window."""
    if not len(w):
        return
    first_day = int(w.ts_us[0]) // S.MICROS_PER_DAY
    midnights = (first_day + np.arange(int(w.sec[-1]) // 86_400 + 2)) * S.MICROS_PER_DAY
    bounds = np.searchsorted(w.ts_us, midnights)
    leads = np.searchsorted(w.ts_us, midnights[:-1] - lead_us)
    for first, start, stop in zip(leads.tolist(), bounds[:-1].tolist(), bounds[1:].tolist()):
        if stop > start:
            yield first, start, stop


@dataclass
class Runs:
    """A day's alive events grouped by a key (a user, an address), in time order inside a key, the
    lead (the minute before midnight) in front: a run is one key's events on one day."""
    order: np.ndarray  # window positions
    key: np.ndarray  # per position
    sec: np.ndarray  # per position
    start: np.ndarray  # per run: its first position
    of: np.ndarray  # per position: its run
    today: np.ndarray  # per run: of the day (not of the lead)
    day: tuple[int, int]  # the day's rows (start, stop) in the window

    @property
    def length(self) -> np.ndarray:
        return np.diff(np.append(self.start, len(self.order)))

    def over_per_minute(self, k: int) -> np.ndarray:
        """Per run: more than k events in some 60 s (an event and the k-th after it, of one key,
        less than 60 s apart: the run of the later one)."""
        burst_runs = np.zeros(len(self.start), dtype=bool)
        if len(self.order) > k:
            burst = (self.key[k:] == self.key[:-k]) & (self.sec[k:] - self.sec[:-k] < 60)
            burst_runs[self.of[k:][burst]] = True
        return burst_runs

    def distinct(self, values: np.ndarray, n_values: int, runs: np.ndarray) -> np.ndarray:
        """Per run (only the chosen runs; 0 for the others): how many distinct values it holds."""
        pick = runs[self.of]
        run_of, values = self.of[pick].astype(np.int64), values[pick]
        pairs = distinct(run_of * (n_values + 1) + values)
        return np.bincount(pairs // (n_values + 1), minlength=len(self.start))


RUNS_LEAD_US = 60_000_000  # the per-minute limits look back a minute before midnight


def day_runs(w: Window, key_of: Callable[[slice], np.ndarray], n_keys: int,
             alive: np.ndarray, skip: Container[int] = ()) -> Iterator[Runs]:
    """The window's days as Runs; key_of(rows) gives the rows' keys, -1 for rows left out.
    The days starting at a row in skip are left out."""
    for first, start, stop in day_spans(w, RUNS_LEAD_US):  # a loop over days
        if start in skip:
            continue
        rows = slice(first, stop)
        keys = key_of(rows)
        order = first + grouped(keys, n_keys, alive[rows] & (keys >= 0))
        key, today = keys[order - first], order >= start
        new_run = np.ones(len(order), dtype=bool)
        new_run[1:] = (key[1:] != key[:-1]) | (today[1:] != today[:-1])
        run_start = np.flatnonzero(new_run)
        yield Runs(order=order, key=key, sec=w.sec[order], start=run_start,
                   of=np.cumsum(new_run, dtype=np.int32) - 1, today=today[run_start],
                   day=(start, stop))


BEHAVIOUR_LIMITS = ("max_events_per_day", "max_events_per_minute", "max_distinct_items_per_day",
                    "max_active_hours_per_day")


def rule_behaviour(w: Window, alive: np.ndarray, cfg: FilterSettings, days: Days | None = None
                   ) -> tuple[np.ndarray, dict]:
    """Flag the days on which a user is over a limit; remove those user-days, and every event of
    a user flagged on `bot_days` days or more (a bot, not one bad minute of a human). Days whose
    flags `days` gives are not judged again; the days judged are added to it."""
    n_users = len(w.user.values)
    removed = np.zeros(len(w), dtype=bool)
    bad_days = np.zeros(n_users, dtype=np.int64)
    users_by_limit = {name: np.zeros(n_users, dtype=bool) for name in BEHAVIOUR_LIMITS}
    # Distinct items and active hours per user-day: only runs long enough can exceed them.
    shortest = min(cfg.max_distinct_items_per_day, cfg.max_active_hours_per_day)
    for r in day_runs(w, lambda rows: w.user.codes[rows], n_users, alive,
                      days.given if days is not None else ()):  # a loop over days
        long_runs = r.today & (r.length > shortest)
        flags = {"max_events_per_day": r.length > cfg.max_events_per_day,
                 "max_events_per_minute": r.over_per_minute(cfg.max_events_per_minute),
                 "max_distinct_items_per_day": r.distinct(w.item.codes[r.order],
                                                          len(w.item.values), long_runs)
                 > cfg.max_distinct_items_per_day,
                 "max_active_hours_per_day": r.distinct((r.sec // 3600) % 24, 24, long_runs)
                 > cfg.max_active_hours_per_day}
        flagged = np.zeros(len(r.start), dtype=bool)
        bits = np.zeros(len(r.start), dtype=np.uint8)
        for k, (name, hit) in enumerate(flags.items()):  # four limits, in BEHAVIOUR_LIMITS order
            hit &= r.today
            users_by_limit[name][r.key[r.start[hit]]] = True
            flagged |= hit
            bits |= hit.astype(np.uint8) << k
        removed[r.order[flagged[r.of]]] = True
        bad_days[r.key[r.start[flagged]]] += 1  # one run per user and day: no repeats
        if days is not None:
            v = days.judged(*r.day)
            v.behaviour = r.order[flagged[r.of]] - r.day[0]
            v.flagged, v.limits = r.order[r.start[flagged]] - r.day[0], bits[flagged]
    for start, v in (days.given.items() if days is not None else ()):  # a loop over days
        removed[start + v.behaviour] = True
        users = w.user.codes[start + v.flagged]
        for k, name in enumerate(BEHAVIOUR_LIMITS):  # four limits
            users_by_limit[name][users[(v.limits >> k) & 1 == 1]] = True
        bad_days[users] += 1  # one flag per user and day
    bot = bad_days >= cfg.bot_days
    removed |= bot[w.user.codes] & alive
    detail = {"users_by_limit": {name: int(f.sum()) for name, f in users_by_limit.items()},
              "user_days_flagged": int(bad_days.sum()), "bot_users": int(bot.sum()),
              "limits": {"max_events_per_minute": cfg.max_events_per_minute,
                         "max_events_per_day": cfg.max_events_per_day,
                         "max_distinct_items_per_day": cfg.max_distinct_items_per_day,
                         "max_active_hours_per_day": cfg.max_active_hours_per_day,
                         "bot_days": cfg.bot_days}}
    top = _top(w.user.codes[removed], w.user.values, cfg.top_offenders, "user_id")
    # Peak figures for the few top offenders only: their alive events, in time order.
    codes = _codes_of(w.user.values, [t["user_id"] for t in top])
    is_top = np.zeros(n_users, dtype=bool)
    is_top[codes] = True
    theirs = np.flatnonzero(is_top[w.user.codes] & alive)
    for t, code in zip(top, codes):
        t.update(peak_figures(w.sec[theirs[w.user.codes[theirs] == code]]))
    detail["top_users"] = top
    return removed, detail


def peak_figures(sec: np.ndarray) -> dict:
    """One user's peak events in any 60 s and in one UTC day, from the seconds (counted from a
    midnight) of their events, in time order."""
    return {"peak_events_per_minute": int((np.searchsorted(sec, sec + 60)
                                           - np.arange(len(sec))).max()),
            "max_events_per_day": int(np.unique(sec // 86_400, return_counts=True)[1].max())}


SHARED_IP_LIMITS = ("max_events_per_day", "max_users_per_day", "max_events_per_minute")


def rule_shared_ip(w: Window, alive: np.ndarray, cfg: FilterSettings, days: Days | None = None
                   ) -> tuple[np.ndarray, dict]:
    """An address that, on a day, carries more events a minute or a day, or more distinct user
    ids, than a household or an office does: a scraper rotating user ids behind one IP. Its
    events of that day go. Shared networks that do carry many people (carrier NAT, a campus) are
    listed in exempt_cidrs. With days, a day judged before on the same events left alive (the
    window's bots change them) is not judged again; the days judged are added to it."""
    encoded = pc.dictionary_encode(w.addresses)  # the addresses in order of first appearance
    codes_of_canon = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    distinct = encoded.dictionary
    exempt = ip_texts.addresses_in_networks(distinct, cfg.shared_ip_exempt)
    # Per IP text (and NULL, last): its address, or -1 when it is none or an exempt one.
    address = np.append(np.where(np.append(exempt, True)[codes_of_canon], -1, codes_of_canon),
                        -1).astype(np.int32)
    removed = np.zeros(len(w), dtype=bool)
    counts = np.zeros(len(SHARED_IP_LIMITS), dtype=np.int64)  # address-days over each limit
    alive_keys = (days.alive_keys(day_spans(w, RUNS_LEAD_US), alive, shared_ip_salt(cfg))
                  if days is not None else {})
    reused = set()
    for start, v in (days.shared_ip_given(alive_keys) if days is not None else {}).items():
        removed[start + v.shared_ip] = True
        counts += v.ip_days
        reused.add(start)
    for r in day_runs(w, lambda rows: address[w.ip.codes[rows]], len(distinct), alive, reused):
        flags = {"max_events_per_day": r.length > cfg.shared_ip_max_events_per_day,
                 "max_users_per_day": r.distinct(w.user.codes[r.order], len(w.user.values),
                                                 r.today) > cfg.shared_ip_max_users_per_day,
                 "max_events_per_minute": r.over_per_minute(cfg.shared_ip_max_events_per_minute)}
        flagged = np.zeros(len(r.start), dtype=bool)
        day_counts = np.zeros(len(SHARED_IP_LIMITS), dtype=np.int64)
        for k, name in enumerate(SHARED_IP_LIMITS):  # three limits
            hit = flags[name] & r.today
            day_counts[k] = int(hit.sum())
            flagged |= hit
        removed[r.order[flagged[r.of]]] = True
        counts += day_counts
        if r.day[0] in alive_keys:
            v = days.updated(*r.day)
            v.shared_ip_alive, v.ip_days = alive_keys[r.day[0]], day_counts
            v.shared_ip = r.order[flagged[r.of]] - r.day[0]
    ip_days = {name: int(n) for name, n in zip(SHARED_IP_LIMITS, counts)}
    detail = {"ip_days_by_limit": ip_days,
              "limits": {"max_events_per_minute": cfg.shared_ip_max_events_per_minute,
                         "max_events_per_day": cfg.shared_ip_max_events_per_day,
                         "max_users_per_day": cfg.shared_ip_max_users_per_day},
              "top_ips": _top(w.ip.codes[removed], w.ip.values, cfg.top_offenders, "ip")}
    return removed, detail


def rule_internal(w: Window, alive: np.ndarray, cfg: FilterSettings) -> tuple[np.ndarray, dict]:
    users = pd.Series(w.user.values.to_numpy(zero_copy_only=False), dtype="str")
    by_id = users.isin(cfg.internal_user_ids).to_numpy(dtype=bool, copy=True)
    if cfg.internal_user_id_ranges:
        numeric = pd.to_numeric(users.where(users.str.fullmatch(r"\d{1,18}").fillna(False)),
                                errors="coerce").to_numpy(dtype="float64")
        for first, last in cfg.internal_user_id_ranges:  # a loop over configured ranges
            by_id |= (numeric >= first) & (numeric <= last)
    by_ip = ip_texts.addresses_in_networks(w.addresses, cfg.internal_networks)
    user_hit = w.user.lookup(by_id) & alive
    ip_hit = w.ip.lookup(by_ip) & alive & ~user_hit
    removed = user_hit | ip_hit
    # keys named after the settings: a key "user_id" would be pseudonymised in metrics/filter.json
    detail = {"rows_by_marker": {"user_ids": int(user_hit.sum()), "ip_cidrs": int(ip_hit.sum())},
              "top_ips": _top(w.ip.codes[removed], w.ip.values, cfg.top_offenders, "ip")}
    return removed, detail


def rule_repeated(w: Window, alive: np.ndarray, cfg: FilterSettings, days: Days | None = None
                  ) -> tuple[np.ndarray, dict]:
    """The same (user, item, type) less than dedupe_seconds after the previous such event. Days
    whose verdicts `days` gives are not judged again; the days judged are added to it."""
    n_types = len(w.event_type.values) + 1
    n_keys = (len(w.item.values) + 1) * n_types
    key_type = np.int32 if n_keys < 2**31 - 1 else np.int64
    dedupe_us = int(cfg.dedupe_seconds * 1_000_000)
    removed = np.zeros(len(w), dtype=bool)
    for first, start, stop in day_spans(w, dedupe_us):  # a loop over days
        given = days.given.get(start) if days is not None else None
        if given is not None:
            removed[start + given.repeated] = True
            continue
        rows = slice(first, stop)
        key = w.item.codes[rows].astype(key_type) * n_types + w.event_type.codes[rows]
        # Two stable sorts, least significant key first: by (item, type), then by user. The
        # result is grouped by (user, item, type), in time order inside each group.
        by_key = grouped(key, n_keys, alive[rows])
        order = by_key[stable_order(w.user.codes[rows][by_key], len(w.user.values))]
        u, k, ts = w.user.codes[rows][order], key[order], w.ts_us[rows][order]
        repeat = np.zeros(len(order), dtype=bool)
        repeat[1:] = (u[1:] == u[:-1]) & (k[1:] == k[:-1]) & (ts[1:] - ts[:-1] < dedupe_us)
        hit = first + order[repeat & (order >= start - first)]
        removed[hit] = True
        if days is not None:
            days.judged(start, stop).repeated = hit - start
    detail = {"dedupe_seconds": cfg.dedupe_seconds,
              "top_users": _top(w.user.codes[removed], w.user.values, cfg.top_offenders, "user_id")}
    return removed, detail


def rule_min_support(w: Window, alive: np.ndarray, cfg: FilterSettings) -> tuple[np.ndarray, dict]:
    users = np.bincount(w.user.codes[alive], minlength=len(w.user.values))
    items = np.bincount(w.item.codes[alive], minlength=len(w.item.values))
    low_users = low_support(users, cfg.min_user_events)
    low_items = low_support(items, cfg.min_item_events)
    removed = (low_users[w.user.codes] | low_items[w.item.codes]) & alive
    return removed, support_detail(cfg, int(low_users.sum()), int(low_items.sum()))


def support_detail(cfg: FilterSettings, users_below: int, items_below: int) -> dict:
    return {"min_user_events": cfg.min_user_events, "min_item_events": cfg.min_item_events,
            "users_below": users_below, "items_below": items_below}


def low_support(events: np.ndarray, minimum: int) -> np.ndarray:
    """Per user (or item) with events left: fewer than the minimum."""
    return (events > 0) & (events < minimum)


def _top(codes: np.ndarray, values: pa.Array, n: int, label: str) -> list[dict]:
    """The n most frequent values among the removed rows, with their row counts."""
    codes = codes[codes >= 0]
    if n == 0 or len(codes) == 0:
        return []
    counts = np.bincount(codes, minlength=len(values))
    top = np.argsort(-counts, kind="stable")[:n]
    top = top[counts[top] > 0]
    names = values.take(pa.array(top)).to_pylist()
    return [{label: name, "rows": int(counts[c])} for name, c in zip(names, top)]


def ip_text_counts(w: Window, top_n: int) -> dict:
    """metrics/filter.json's ip_texts: the window's events without an IP, and those whose IP text
    is no address (kept: the rules treat them as events without one), with the commonest such
    texts (most rows; ties in dictionary order, as _top ranks)."""
    unusable = w.ip.lookup(ip_texts.not_an_address(w.ip.values, w.addresses))
    return {"rows_without_ip": int(np.count_nonzero(w.ip.codes < 0)),
            "rows_not_an_address": int(np.count_nonzero(unusable)),
            "values_not_an_address": _distinct(w.ip.codes[unusable]),
            "top_not_an_address": _top(w.ip.codes[unusable], w.ip.values, top_n, "ip")}


def _distinct(codes: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(codes[codes >= 0]))) if len(codes) else 0


def _codes_of(values: pa.Array, names: list[str]) -> list[int]:
    position = pc.index_in(pa.array(names, pa.string()), value_set=values)
    return position.to_pylist()


# ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    keep: np.ndarray
    removed_by: dict[str, np.ndarray]  # rule -> rows it removed (disjoint across rules)
    details: dict[str, dict]
    seconds: dict[str, float]

    def removed_users(self, window: Window, rules=BOT_RULES) -> set[str]:
        """Users with at least one row removed by the given rules (default: the bot rules)."""
        mask = np.zeros(len(window), dtype=bool)
        for rule in rules:
            if rule in self.removed_by:
                mask |= self.removed_by[rule]
        codes = np.flatnonzero(np.bincount(window.user.codes[mask],
                                           minlength=len(window.user.values)))
        return set(window.user.values.take(pa.array(codes, pa.int32())).to_pylist())


# The rules whose verdicts on a day are kept and reused (dailyrec.quality.filtering.day_verdicts says why
# that is safe). crawler_ua and internal, which they build on, judge distinct values: they run on
# the whole window every time, as do the window's own decisions (bots over several days,
# min_support).
DAY_REUSED = ("repeated", "behaviour", "shared_ip")


def shared_ip_salt(cfg: FilterSettings) -> str:
    """What shared_ip's verdicts on a day depend on besides the day's key and the events left
    alive: its settings."""
    return json.dumps([cfg.shared_ip_max_events_per_minute, cfg.shared_ip_max_events_per_day,
                       cfg.shared_ip_max_users_per_day, [str(n) for n in cfg.shared_ip_exempt]])


def day_local_salt(cfg: FilterSettings) -> str:
    """What the day-local verdicts depend on besides the days' bytes: the settings crawler_ua,
    internal, repeated and behaviour read, the crawler pattern list, and the code that judges
    (this module, the ones it judges with, the libraries' versions). Empty when they may not be
    reused: a dedupe window that, with behaviour's minute, reaches past the day before."""
    if cfg.repeated_enabled and cfg.dedupe_seconds + 60 > 86_400:
        return ""
    settings = {
        "crawler_ua": [cfg.crawler_enabled,
                       crawler_patterns(cfg.extra_patterns) if cfg.crawler_enabled else []],
        "internal": [cfg.internal_enabled, list(cfg.internal_user_ids),
                     [list(r) for r in cfg.internal_user_id_ranges],
                     [str(n) for n in cfg.internal_networks]],
        "repeated": [cfg.repeated_enabled, cfg.dedupe_seconds],
        "behaviour": [cfg.behaviour_enabled, *(getattr(cfg, n) for n in BEHAVIOUR_LIMITS)]}
    return hashlib.md5(json.dumps([_code_version(), settings]).encode()).hexdigest()


def kept_days_salt() -> str:
    """What a day file depends on besides the day's files and which events were kept: the code
    that reads the files and writes the day (this module, dailyrec.quality.filtering.clean, the schema) and the
    libraries' versions."""
    code = hashlib.md5(_code_version().encode())
    for module in (clean, S):
        code.update(Path(module.__file__).read_bytes())
    return code.hexdigest()


@functools.cache
def _code_version() -> str:
    from dailyrec.core import arrays
    from dailyrec.quality.filtering import day_verdicts

    code = hashlib.md5()
    for module in (sys.modules[__name__], arrays, day_verdicts, ip_texts):
        code.update(Path(module.__file__).read_bytes())
    versions = [np.__version__, pa.__version__, pd.__version__, scipy.__version__]
    return code.hexdigest() + "|" + "|".join(versions)


def apply_rules(w: Window, cfg: FilterSettings, rules: tuple[str, ...] = RULES,
                days: Days | None = None) -> Result:
    """The rules (all, in order; or the given ones, for the Spark engine's groups) on the window;
    with days, the day-local rules reuse the verdicts it gives and add the ones they find."""
    alive = np.ones(len(w), dtype=bool)
    removed_by: dict[str, np.ndarray] = {}
    details: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    enabled = {"crawler_ua": cfg.crawler_enabled, "behaviour": cfg.behaviour_enabled,
               "internal": cfg.internal_enabled, "repeated": cfg.repeated_enabled,
               "shared_ip": cfg.shared_ip_enabled,
               "min_support": cfg.min_user_events > 1 or cfg.min_item_events > 1}
    functions = {"crawler_ua": rule_crawler_ua, "behaviour": rule_behaviour,
                 "internal": rule_internal, "repeated": rule_repeated,
                 "shared_ip": rule_shared_ip, "min_support": rule_min_support}
    for rule in rules:  # at most six, in order
        started = time.perf_counter()
        if enabled[rule] and alive.any():
            removed, detail = functions[rule](w, alive, cfg, *(
                [days] if rule in DAY_REUSED and days is not None else []))
        else:
            removed, detail = np.zeros(len(w), dtype=bool), {}
        detail["enabled"] = enabled[rule]
        alive &= ~removed
        removed_by[rule] = removed
        details[rule] = detail
        seconds[rule] = round(time.perf_counter() - started, 3)
    return Result(keep=alive, removed_by=removed_by, details=details, seconds=seconds)


# Rules whose own detail names no users: metrics/filter.json adds their top users.
TOP_USERS_ADDED = ("crawler_ua", "internal", "shared_ip")


def rule_metrics(w: Window, result: Result, cfg: FilterSettings) -> dict:
    rules = {}
    for rule in RULES:
        removed = result.removed_by[rule]
        entry = {"rows": int(removed.sum()), "users": _distinct(w.user.codes[removed]),
                 **result.details[rule]}
        if rule in TOP_USERS_ADDED and "top_users" not in entry:
            entry["top_users"] = _top(w.user.codes[removed], w.user.values, cfg.top_offenders,
                                      "user_id")
        if rule == "min_support":
            entry["items"] = _distinct(w.item.codes[removed])
        rules[rule] = entry
    return rules


def write_clean(w: Window, keep: np.ndarray, out: Path, kept: clean.KeptDays | None = None,
                hashes: dict[dt.date, list[str]] | None = None) -> int:
    """The kept events as data/clean's day files (dailyrec.quality.filtering.clean), a day of the window at a time:
    the dictionary columns go from the window's codes to each day's own sorted values without
    decoding them to Python strings. With kept and hashes (the spans' files' MD5s,
    day_verdicts.file_hashes: only where each history day holds its own UTC day's events, so that
    a day file is made of one day's files), a day whose files and kept events an earlier run wrote
    is that run's file, linked: not read again nor written."""
    if kept is None or hashes is None:
        start = 0
        with clean.DayWriter(out) as writer:
            for piece in w.pieces():  # a loop over days
                writer.add(piece.filter(pa.array(keep[start:start + piece.num_rows])))
                start += piece.num_rows
        return writer.rows
    keys = {}  # file name -> key, for the days written here
    with clean.DayWriter(out) as writer:
        for span, (day, files, start, stop) in enumerate(w.spans):  # a loop over days
            mask = keep[start:stop]
            rows = int(mask.sum())
            if not rows:
                continue
            key = kept.key(hashes[day], mask)
            found = kept.find(key, rows)
            if found is not None and writer.add_file(day, found, rows):
                continue
            writer.add(w.piece(span).filter(pa.array(mask)))
            keys[clean.day_name(day)] = key
    kept.keep({keys[name]: out / name for name in writer.written})
    return writer.rows


def run(cfg: FilterSettings, history: Path, rejected: set[dt.date], out: Path) -> dict:
    """Read the window (rejected days left out), apply the rules, write the kept events to out;
    returns the counts (filter_noise writes them as metrics/filter.json)."""
    started = time.perf_counter()
    chosen = select_window(history, cfg.run_date, cfg.window_days, rejected)
    w = read_window(chosen.files, chosen.days)
    w.left_out = chosen.left_out
    read_s = time.perf_counter() - started
    # the day-local rules' verdicts on days judged before are reused (day_verdicts: why it is safe)
    verdicts = DayVerdicts(default_dir())
    hashes = file_hashes(w.spans, w.ts_us)  # None: a day holds another day's events
    days = verdicts.days(w.spans, hashes, day_local_salt(cfg))
    result = apply_rules(w, cfg, days=days)
    verdicts.keep(days)
    rules_s = time.perf_counter() - started - read_s
    kept_days = clean.KeptDays(env.state_dir() / clean.KEPT_FOLDER, kept_days_salt())
    kept = write_clean(w, result.keep, out, kept_days, hashes)
    write_s = time.perf_counter() - started - read_s - rules_s
    counted = {"input": {"rows": len(w), "users": _distinct(w.user.codes),
                         "items": _distinct(w.item.codes)},
               "output": {"rows": kept, "users": _distinct(w.user.codes[result.keep]),
                          "items": _distinct(w.item.codes[result.keep])},
               "bot_or_internal_users": len(result.removed_users(w)),
               "ip_texts": ip_text_counts(w, cfg.top_offenders),
               "rules": rule_metrics(w, result, cfg)}
    total = time.perf_counter() - started
    return record(cfg, chosen, counted, {"read": round(read_s, 3), "rules": round(rules_s, 3),
                                         "write": round(write_s, 3), "total": round(total, 3),
                                         "by_rule": result.seconds},
                  {**days.counts(), "day_files_reused": kept_days.reused})


def record(cfg: FilterSettings, chosen: Selection, counted: dict, seconds: dict,
           day_verdicts: dict | None = None) -> dict:
    """metrics/filter.json from what an engine counted (input, output, bot_or_internal_users,
    ip_texts, rules) and how long it took (seconds: read, rules, write, total, and the engine's
    own breakdown); the same for both engines. The local engine adds day_verdicts: the days whose
    day-local verdicts it reused and the days it judged."""
    used, n, kept = chosen.days, counted["input"]["rows"], counted["output"]["rows"]
    extra = {"day_verdicts": day_verdicts} if day_verdicts is not None else {}
    return {
        "run_date": cfg.run_date.isoformat(),
        "window": {"days": len(used), "first_day": used[0].isoformat() if used else None,
                   "last_day": used[-1].isoformat() if used else None,
                   "window_days": cfg.window_days,
                   "rejected_days_left_out": [d.isoformat() for d in chosen.left_out]},
        "input": counted["input"],
        "output": counted["output"],
        "removed": {"rows": n - kept, "share": round((n - kept) / n, 6) if n else 0.0,
                    "bot_or_internal_users": counted["bot_or_internal_users"]},
        "ip_texts": counted["ip_texts"],
        "rules": counted["rules"],
        "seconds": seconds,
        "events_per_second": round(n / seconds["rules"]) if seconds["rules"] > 0 else None,
        **extra,
    }
