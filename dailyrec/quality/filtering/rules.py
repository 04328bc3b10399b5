"""The noise rules: only trusted, human interactions reach training (what filter_noise does).

    apply_rules(window, cfg) -> Result    which events each rule removes, in the rules' order
                                          (dailyrec.quality.filtering.engine runs them on the
                                          window and writes data/clean)

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
over events. The rules that group events work a UTC day at a time, with the seconds before its
midnight that its first events are judged against (day_spans): the memory they need beyond the
window's codes follows the day. What repeated, behaviour and shared_ip decide about a day is kept
per day by content hash and reused by later runs, under the salts below
(dailyrec.quality.filtering.day_verdicts says why that is safe); the window's own decisions (bots
over several days, min_support) are made every run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy
import scipy.sparse as sp

from dailyrec.core import noise_rules
from dailyrec.core import schema as S
from dailyrec.core.arrays import distinct
from dailyrec.quality.filtering import clean, ip_texts
from dailyrec.quality.filtering.day_verdicts import Days
from dailyrec.quality.filtering.window import Window
from dailyrec.quality.settings import FilterSettings

RULES = noise_rules.NAMES  # in the order they run (dailyrec.core.noise_rules)
BOT_RULES = noise_rules.BOT_RULES  # the rules that say "not a human customer"
DICTIONARY_COLUMNS = clean.DICTIONARY_COLUMNS  # the text columns but event_id
PATTERNS_PER_REGEX = 200  # RE2 handles a few hundred alternatives per regex quickly, not 1,500


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
              "top_user_agents": top_values(w.user_agent.codes[removed], w.user_agent.values,
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
    top = top_values(w.user.codes[removed], w.user.values, cfg.top_offenders, "user_id")
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
              "top_ips": top_values(w.ip.codes[removed], w.ip.values, cfg.top_offenders, "ip")}
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
              "top_ips": top_values(w.ip.codes[removed], w.ip.values, cfg.top_offenders, "ip")}
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
              "top_users": top_values(w.user.codes[removed], w.user.values, cfg.top_offenders, "user_id")}
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


def top_values(codes: np.ndarray, values: pa.Array, n: int, label: str) -> list[dict]:
    """The n most frequent values among the removed rows, with their row counts."""
    codes = codes[codes >= 0]
    if n == 0 or len(codes) == 0:
        return []
    counts = np.bincount(codes, minlength=len(values))
    top = np.argsort(-counts, kind="stable")[:n]
    top = top[counts[top] > 0]
    names = values.take(pa.array(top)).to_pylist()
    return [{label: name, "rows": int(counts[c])} for name, c in zip(names, top)]


def distinct_count(codes: np.ndarray) -> int:
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
    (this module and the window's, the ones they judge with, the libraries' versions). Empty when they may not be
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
    return hashlib.md5(json.dumps([code_version(), settings]).encode()).hexdigest()


@functools.cache
def code_version() -> str:
    from dailyrec.core import arrays
    from dailyrec.quality.filtering import day_verdicts

    from dailyrec.quality.filtering import window

    code = hashlib.md5()
    for module in (sys.modules[__name__], window, arrays, day_verdicts, ip_texts):
        code.update(Path(module.__file__).read_bytes())
    versions = [np.__version__, pa.__version__, pd.__version__, scipy.__version__]
    return code.hexdigest() + "|" + "|".join(versions)
