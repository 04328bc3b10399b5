"""The local engine of filter_noise: the window read (dailyrec.quality.filtering.window), the
rules applied in their order (dailyrec.quality.filtering.rules), the kept events written to
data/clean a day at a time, and the record (metrics/filter.json's counts and offenders).

    run(cfg, history, rejected, out) -> counts

What repeated, behaviour and shared_ip decide about a day is kept per day by content hash and
reused by later runs, under salts made of the settings that shape each verdict and the code that
computes it (day_local_salt, shared_ip_salt; dailyrec.quality.filtering.day_verdicts says why
that is safe).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from dailyrec.core import env
from dailyrec.core import schema as S
from dailyrec.ingest.history import Selection, select_window
from dailyrec.quality.filtering import clean, ip_texts
from dailyrec.quality.filtering.day_verdicts import DayVerdicts, default_dir, file_hashes
from dailyrec.quality.filtering.rules import (RULES, Result, apply_rules, code_version,
                                              day_local_salt, distinct_count, top_values)
from dailyrec.quality.filtering.window import Window, read_window
from dailyrec.quality.settings import FilterSettings


def kept_days_salt() -> str:
    """What a day file depends on besides the day's files and which events were kept: the code
    that reads the files and writes the day (this module, dailyrec.quality.filtering.clean, the
    schema, the rules') and the libraries' versions."""
    code = hashlib.md5(code_version().encode())
    for module in (sys.modules[__name__], clean, S):
        code.update(Path(module.__file__).read_bytes())
    return code.hexdigest()


def ip_text_counts(w: Window, top_n: int) -> dict:
    """metrics/filter.json's ip_texts: the window's events without an IP, and those whose IP text
    is no address (kept: the rules treat them as events without one), with the commonest such
    texts (most rows; ties in dictionary order, as _top ranks)."""
    unusable = w.ip.lookup(ip_texts.not_an_address(w.ip.values, w.addresses))
    return {"rows_without_ip": int(np.count_nonzero(w.ip.codes < 0)),
            "rows_not_an_address": int(np.count_nonzero(unusable)),
            "values_not_an_address": distinct_count(w.ip.codes[unusable]),
            "top_not_an_address": top_values(w.ip.codes[unusable], w.ip.values, top_n, "ip")}


# Rules whose own detail names no users: metrics/filter.json adds their top users.
TOP_USERS_ADDED = ("crawler_ua", "internal", "shared_ip")


def rule_metrics(w: Window, result: Result, cfg: FilterSettings) -> dict:
    rules = {}
    for rule in RULES:
        removed = result.removed_by[rule]
        entry = {"rows": int(removed.sum()), "users": distinct_count(w.user.codes[removed]),
                 **result.details[rule]}
        if rule in TOP_USERS_ADDED and "top_users" not in entry:
            entry["top_users"] = top_values(w.user.codes[removed], w.user.values, cfg.top_offenders,
                                      "user_id")
        if rule == "min_support":
            entry["items"] = distinct_count(w.item.codes[removed])
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
    counted = {"input": {"rows": len(w), "users": distinct_count(w.user.codes),
                         "items": distinct_count(w.item.codes)},
               "output": {"rows": kept, "users": distinct_count(w.user.codes[result.keep]),
                          "items": distinct_count(w.item.codes[result.keep])},
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
