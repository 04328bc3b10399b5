"""filter_noise's verdicts on each day, kept by content hash and reused by later runs
(dailyrec.quality.filtering.day_verdicts).

What may be reused, and why it is safe (the module's docstring has the argument):
  - what a day loses to repeated and to behaviour's day flags, and the user-days behaviour flags,
    keyed by the MD5 of the day's files and of the day before's (its last minutes are the lead),
    the settings those rules read, the crawler patterns and the code: the same key, the same
    verdicts, wherever the day sits in the window;
  - nothing the window decides: bots (bot_days), min_support and every counter are computed
    every run, so a changed window-level setting still reuses every day's day-local verdicts;
  - shared_ip's verdicts on a day only where the events it judges, and which of them the
    window's bots left alive, are the same (their MD5 is part of its entry).
Each claim is a test below: a run that reuses gives data/clean byte for byte and metrics/filter.json
(timings aside) as a run that judges every day, from an empty state directory.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dailyrec.quality.filtering import clean
from dailyrec.ingest import history
from dailyrec.quality.filtering import day_verdicts as DV
from dailyrec.quality.filtering import rules as FN
from dailyrec.quality.filtering import window as FW, engine as FE
from dailyrec.quality import settings as quality
from tests import dq_factory as F
from tests.params import of

FIRST = dt.date(2026, 11, 14)  # six days of history: 11-14 .. 11-19
RUN = dt.date(2026, 11, 19)  # a five-day window: 11-14 .. 11-18
SEC = pd.Timedelta(seconds=1)
TIMING = ("seconds", "events_per_second", "day_verdicts")


def day_traffic(day: dt.date, seed: int) -> pd.DataFrame:
    """A day whose verdicts depend on its lead: bursts and repeats on both sides of midnight,
    bots flagged on some days, humans, a crawler, a scraper rotating user ids."""
    rng = np.random.default_rng(seed)
    midnight = pd.Timestamp(day, tz="UTC")
    n = 3000
    users = rng.integers(0, 200, n)
    fast, late = users < 15, users >= 170
    seconds = np.select([fast, late], [rng.integers(0, 2400, n), 86_400 - rng.integers(1, 240, n)],
                        rng.integers(0, 86_400, n))
    frame = F.events(users.astype(str), rng.integers(0, 40, n).astype(str),
                     midnight + seconds * SEC, event_type=rng.choice(["view", "click"], n),
                     user_agent=agent(users), ip=address(users))
    # The first minutes after midnight: the same users and items as the minutes before it.
    early_users = 170 + rng.integers(0, 30, 300)
    early = F.events(early_users.astype(str), rng.integers(0, 40, 300).astype(str),
                     midnight + rng.integers(0, 200, 300) * SEC, user_agent=agent(early_users),
                     ip=address(early_users))
    crawler = F.events("5001", np.arange(30).astype(str), midnight + np.arange(30) * 60 * SEC,
                       user_agent=F.GOOGLEBOT)
    # A scraper rotating 25-35 user ids behind one address: shared_ip's work.
    ids = 1000 + rng.integers(0, 25 + seed * 2, 400)
    rotator = F.events(ids.astype(str), rng.integers(0, 40, 400).astype(str),
                       midnight + np.sort(rng.integers(3600, 30_000, 400)) * SEC, ip="9.9.9.9")
    frame = pd.concat([frame, early, crawler, rotator], ignore_index=True)
    frame["event_id"] = f"{day}-" + pd.Series(np.arange(len(frame))).astype(str)
    return frame


def agent(users: np.ndarray) -> np.ndarray:
    """A browser, or for a few users an app that extra crawler patterns can name."""
    return np.where(users % 10 == 3, "ShopApp/3.2 (Android 14)", F.BROWSER)


def address(users: np.ndarray) -> np.ndarray:
    """A household's address per user (shared_ip sees a few users behind each)."""
    return np.char.add("81.2.69.", (users // 4).astype(str))


def settings(run: dt.date = RUN, **overrides) -> quality.FilterSettings:
    params = F.default_params(run.isoformat())
    params["filter"]["window_days"] = 5
    limits = {"behaviour.max_events_per_minute": 6, "behaviour.max_events_per_day": 60,
              "behaviour.max_distinct_items_per_day": 30, "behaviour.bot_days": 2,
              "repeated.dedupe_seconds": 120, "shared_ip.max_users_per_day": 20}
    for path, value in {**limits, **overrides}.items():
        section, key = path.split(".")
        params["filter"][section][key] = value
    return quality.filter_rules(of(params))


@pytest.fixture
def root(tmp_path):
    frames = [day_traffic(FIRST + dt.timedelta(days=k), seed=k) for k in range(6)]
    F.write_history(tmp_path / "history", pd.concat(frames, ignore_index=True))
    return tmp_path


def run(root, cfg, name: str, rejected=frozenset()) -> tuple[dict, dict]:
    """(data/clean's files' bytes by name, the counts)."""
    out = root / name / "clean"
    counts = FE.run(cfg, root / "history", set(rejected), out)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}, counts


def fresh(root, cfg, name: str, monkeypatch, rejected=frozenset()) -> tuple[dict, dict]:
    """The same run judging every day: an empty state directory."""
    monkeypatch.setenv("DAILYREC_STATE_DIR", str(root / f"state-{name}"))
    try:
        return run(root, cfg, name, rejected)
    finally:
        monkeypatch.setenv("DAILYREC_STATE_DIR", str(root / "state"))


def same(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
    def counts(c: dict) -> dict:
        return {k: v for k, v in c.items() if k not in TIMING}
    return a[0] == b[0] and counts(a[1]) == counts(b[1])


def reuse(counts: dict) -> tuple[int, int]:
    """(days whose day-local verdicts were reused, days judged)."""
    return counts["day_verdicts"]["reused"], counts["day_verdicts"]["judged"]


def shared_ip_reused(counts: dict) -> int:
    return counts["day_verdicts"]["shared_ip_reused"]


def linked(got: tuple[dict, dict]) -> int:
    """data/clean's day files linked from the run before (clean.KeptDays), not written."""
    return got[1]["day_verdicts"]["day_files_reused"]


def unchanged(before: tuple[dict, dict], got: tuple[dict, dict]) -> int:
    """Day files with the bytes the run before wrote for that day: a linked file is one."""
    return sum(before[0].get(name) == data for name, data in got[0].items())


@pytest.fixture(autouse=True)
def state(root, monkeypatch):
    monkeypatch.setenv("DAILYREC_STATE_DIR", str(root / "state"))


def test_a_second_run_reuses_every_day_and_writes_the_same(root, monkeypatch):
    first = run(root, settings(), "first")
    assert reuse(first[1]) == (0, 5)
    again = run(root, settings(), "again")
    assert reuse(again[1]) == (5, 0) and shared_ip_reused(again[1]) == 5 and same(first, again)
    assert again[1]["day_verdicts"]["day_files_reused"] == 5
    # the traffic does exercise the rules that are reused, on both sides of midnight
    rules = first[1]["rules"]
    assert rules["repeated"]["rows"] > 100 and rules["behaviour"]["rows"] > 100
    assert rules["shared_ip"]["rows"] > 100
    assert 0 < rules["behaviour"]["bot_users"] < rules["behaviour"]["users"]


def test_the_next_day_judges_the_new_day_and_the_new_first_day_only(root, monkeypatch):
    yesterday = run(root, settings(), "yesterday")
    today = settings(RUN + dt.timedelta(days=1))
    got = run(root, today, "today")
    # 11-15 now leads with nothing (11-14 left the window): judged again, as is the new 11-19
    assert reuse(got[1]) == (3, 2)
    assert same(got, fresh(root, today, "today-fresh", monkeypatch))
    assert linked(got) <= unchanged(yesterday, got) and "2026-11-19.parquet" in got[0]
    assert len(list((root / "state" / "day-verdicts").iterdir())) == 5  # 11-14's entry is gone


def test_a_rewritten_day_is_judged_again_with_the_day_after_it(root, monkeypatch):
    before = run(root, settings(), "before")
    # an arrival into 11-16, a minute before its midnight: 11-17's lead changes too
    late = F.events("180", ["3", "3"], pd.Timestamp("2026-11-17", tz="UTC") - 30 * SEC)
    late["event_id"] = ["late-1", "late-2"]
    path = history.partition_path(root / "history", dt.date(2026, 11, 16))
    pq.write_table(F.to_arrow(late), path.with_name(f"{history.ARRIVED_PREFIX}2026-11-19.parquet"))
    got = run(root, settings(), "after")
    assert reuse(got[1]) == (3, 2)
    assert same(got, fresh(root, settings(), "after-fresh", monkeypatch))
    # the late events are repeats: every day file is the same, 11-16's written again (its files
    # are not), the others linked
    assert linked(got) == 4 and got[0] == before[0]


def test_a_rejected_day_leaves_the_day_after_it_without_a_lead(root, monkeypatch):
    every = run(root, settings(), "all")
    rejected = {dt.date(2026, 11, 16)}
    got = run(root, settings(), "rejected", rejected)
    assert reuse(got[1]) == (3, 1)  # 11-17 judged again; 11-16 is out of the window
    assert same(got, fresh(root, settings(), "rejected-fresh", monkeypatch, rejected))
    assert linked(got) <= unchanged(every, got) and "2026-11-16.parquet" not in got[0]


@pytest.mark.parametrize("change", [{"repeated.dedupe_seconds": 30},
                                    {"behaviour.max_events_per_minute": 8},
                                    {"crawler_ua.extra_patterns": ["ShopApp/"]},
                                    {"internal.user_ids": ["7"]}])
def test_a_day_local_setting_judges_every_day_again(root, monkeypatch, change):
    before = run(root, settings(), "before")
    got = run(root, settings(**change), "after")
    assert reuse(got[1]) == (0, 5)
    assert same(got, fresh(root, settings(**change), "after-fresh", monkeypatch))
    assert linked(got) == unchanged(before, got)  # the day files whose events are the same


@pytest.mark.parametrize("change, shared_ip", [
    ({"behaviour.bot_days": 4}, range(0, 5)),  # fewer bots: some days' events alive again
    ({"shared_ip.max_users_per_day": 3}, range(0, 1)),  # its own setting: judged again
    ({"min_support.min_user_events": 80}, range(5, 6)),  # decided after shared_ip
])
def test_a_window_setting_reuses_every_day_and_still_takes_effect(root, monkeypatch, change,
                                                                   shared_ip):
    """Bots over several days, shared_ip and min_support are decided by the window: a change of
    their settings reuses every day's day-local verdicts. shared_ip's verdicts on a day are
    reused only where the events it judges, and which of them are alive, are the same."""
    before = run(root, settings(), "before")
    got = run(root, settings(**change), "after")
    assert reuse(got[1]) == (5, 0) and shared_ip_reused(got[1]) in shared_ip
    assert same(got, fresh(root, settings(**change), "after-fresh", monkeypatch))
    assert linked(got) == unchanged(before, got) < 5
    assert got[0] != before[0]  # the change did change the output


def test_a_damaged_entry_is_judged_again(root, monkeypatch):
    first = run(root, settings(), "first")
    entries = sorted((root / "state" / "day-verdicts").iterdir())
    entries[0].write_bytes(b"not an npz")
    entries[1].write_bytes(entries[2].read_bytes())  # another day's verdicts (as many rows)
    got = run(root, settings(), "again")
    assert reuse(got[1])[1] >= 1 and same(first, got)


def test_a_damaged_day_file_entry_is_written_again(root, monkeypatch):
    """data/clean's day files kept by an earlier run (clean.KeptDays): read-only, one per day of
    the window; one cut short or lost is written again, the same bytes as a fresh run's."""
    first = run(root, settings(), "first")
    entries = sorted((root / "state" / "clean-days").iterdir())
    assert len(entries) == 5 and all(e.stat().st_mode & 0o222 == 0 for e in entries)
    entries[0].chmod(0o644)
    entries[0].write_bytes(entries[0].read_bytes()[:-100])
    entries[1].unlink()
    got = run(root, settings(), "again")
    assert got[1]["day_verdicts"]["day_files_reused"] == 3 and same(first, got)
    assert len(list((root / "state" / "clean-days").iterdir())) == 5


def test_days_holding_other_days_events_are_all_judged(root, monkeypatch):
    # a stray event of 11-16 (at its midnight) at the end of 11-15's own file: days are no
    # longer cut by file
    path = history.partition_path(root / "history", dt.date(2026, 11, 15))
    table = pq.read_table(path)
    stray = F.to_arrow(F.events(["9"], ["9"], [pd.Timestamp("2026-11-16", tz="UTC")],
                                event_id=["stray"]))
    pq.write_table(pa_concat(table, stray), path)
    run(root, settings(), "first")
    got = run(root, settings(), "again")
    assert reuse(got[1]) == (0, 5) and not list((root / "state" / "day-verdicts").glob("*"))
    assert same(got, fresh(root, settings(), "again-fresh", monkeypatch))
    assert got[1]["day_verdicts"]["day_files_reused"] == 0  # a day file is one day's files
    assert not list((root / "state" / "clean-days").glob("*"))


def test_a_dedupe_window_of_a_day_is_never_reused(root, monkeypatch):
    cfg = settings(**{"repeated.dedupe_seconds": 86_400})
    run(root, cfg, "first")
    assert reuse(run(root, cfg, "again")[1]) == (0, 5)


def test_the_reuse_is_in_the_metrics_file(root, tmp_path):
    counts = run(root, settings(), "first")[1]
    assert json.loads(json.dumps(counts))["day_verdicts"] == {"reused": 0, "judged": 5,
                                                              "shared_ip_reused": 0,
                                                              "day_files_reused": 0}
    assert DV.default_dir() == root / "state" / "day-verdicts"


def pa_concat(*tables):
    return pa.concat_tables([t.cast(tables[0].schema) for t in tables])


def test_files_outside_day_folders_are_never_reused(root, tmp_path):
    """read_window also takes loose files (a test's, a tool's): they have no day, so no key."""
    loose = tmp_path / "loose.parquet"
    pq.write_table(F.to_arrow(day_traffic(FIRST, seed=0)), loose)
    w = FW.read_window([loose])
    assert w.spans[0][0] is None
    salt = FN.day_local_salt(settings())
    hashes = DV.file_hashes(w.spans, w.ts_us)
    days = DV.DayVerdicts(tmp_path / "verdicts").days(w.spans, hashes, salt)
    assert days.keys == {} and days.given == {}


def test_a_day_file_is_linked_only_for_the_same_files_and_the_same_kept_events(root):
    """clean.KeptDays' key is the day's files and which of their events are kept: the same number
    of other events kept, or a file rewritten with as many rows, is written anew."""
    cfg = settings()
    chosen = history.select_window(root / "history", cfg.run_date, cfg.window_days, set())
    w = FW.read_window(chosen.files, chosen.days)
    keep = FN.apply_rules(w, cfg).keep

    def files(folder) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    def write(name: str, mask: np.ndarray, window=w) -> tuple[int, dict[str, bytes]]:
        kept = clean.KeptDays(root / "kept", "salt")
        FE.write_clean(window, mask, root / name, kept, DV.file_hashes(window.spans, window.ts_us))
        FE.write_clean(window, mask, root / f"{name}-fresh")  # nothing linked
        assert files(root / name) == files(root / f"{name}-fresh")
        return kept.reused, files(root / name)

    assert write("first", keep)[0] == 0
    assert write("again", keep)[0] == 5
    _, files_, start, stop = w.spans[0]
    swapped = keep.copy()  # on the first day, one event kept instead of another
    swapped[start + np.flatnonzero(keep[start:stop])[0]] = False
    swapped[start + np.flatnonzero(~keep[start:stop])[0]] = True
    assert write("swapped", swapped)[0] == 4
    # the first day's file rewritten, as many rows, one user agent another: written anew
    table = pq.read_table(files_[0])
    agents = table["user_agent"].to_pylist()
    agents[0] = "Mozilla/5.0 (another)"
    pq.write_table(table.set_column(table.schema.get_field_index("user_agent"), "user_agent",
                                    pa.array(agents)), files_[0])
    assert write("rewritten", swapped, FW.read_window(chosen.files, chosen.days))[0] == 4
