"""filter_noise: each rule removes what it should and keeps a heavy but human user; counters,
output schema, rejected days, and the vectorised rules against plain pandas references."""

from __future__ import annotations

import datetime as dt
import json
import re

import hypothesis as hp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import strategies as st

from dailyrec.quality.filtering import clean
from dailyrec.ingest import history
from dailyrec.core import metrics, privacy
from dailyrec.core import schema as S
from dailyrec.core.errors import ConfigError
from dailyrec.quality.validation import rejections as R
from dailyrec.quality.filtering import ip_texts
from dailyrec.quality.filtering import rules as FN
from dailyrec.quality.filtering import window as FW, engine as FE
from dailyrec.quality import settings as quality
from stages import filter_noise as stage
from tests import dq_factory as F
from tests.params import of

RUN = "2026-11-21"
DAY1 = pd.Timestamp("2026-11-19", tz="UTC")
DAY2 = pd.Timestamp("2026-11-20", tz="UTC")
SEC = pd.Timedelta(seconds=1)


def crafted_window() -> dict[str, pd.DataFrame]:
    """Who is who: one frame per actor, so tests can say what each rule must remove."""
    k = np.arange
    actors = {
        # Heavy but human: 3,000 events a day over 16 waking hours, one every 19.2 s, cycling
        # through 600 items (never the same item twice within 30 s): under every limit, must keep
        # every event.
        "heavy": F.events("777", (k(3000) % 600).astype(str), DAY1 + k(3000) * 19.2 * SEC),
        "heavy2": F.events("777", (k(3000) % 600 + 1000).astype(str), DAY2 + k(3000) * 19.2 * SEC),
        # A known crawler by its user agent.
        "crawler": F.events("5001", k(50).astype(str), DAY1 + k(50) * 60 * SEC,
                            user_agent=F.GOOGLEBOT),
        # A human whose one link-preview event carries a crawler agent: only that event goes.
        "preview_human": F.events("42", ["1", "2", "3"], DAY1 + k(3) * 600 * SEC,
                                  user_agent=["facebookexternalhit/1.1", F.BROWSER, F.BROWSER]),
        # Behaviour: 80 events in 40 s (over 60 a minute) on one day: that day goes; its quiet
        # day stays (one bad minute costs that day, not the window: bot_days is 2).
        "fast_bot": F.events("6001", k(80).astype(str), DAY1 + k(80) * 0.5 * SEC),
        "fast_bot_quiet_day": F.events("6001", ["1", "2"], DAY2 + k(2) * 3600 * SEC),
        # Over a limit on both days: a bot, all its events go.
        "twice_fast": F.events("6004", k(70).astype(str), DAY1 + 7 * 3600 * SEC + k(70) * SEC / 2),
        "twice_fast_2": F.events("6004", k(70).astype(str), DAY2 + 7 * 3600 * SEC + k(70) * SEC / 2),
        # A human whose client fires every action twice, a second apart: 40 actions in a minute
        # are 80 events, but repeats go first, so behaviour sees 40 and the user keeps them.
        "double_fired": F.events("47", np.repeat(k(40), 2).astype(str),
                                 DAY1 + 5 * 3600 * SEC + (np.repeat(k(40), 2) * 1.5
                                                          + np.tile([0, 1], 40)) * SEC),
        # A scraper rotating 300 user ids behind one address, 10 views each: shared_ip.
        "rotator": F.events((6100 + k(3000) % 300).astype(str), (k(3000) % 900).astype(str),
                            DAY2 + 3600 * SEC + k(3000) * 9 * SEC, ip="9.9.9.9"),
        # A household: three people on one address, a normal day each: kept.
        "household": F.events(["81", "82", "83"] * 20, (k(60) % 30).astype(str),
                              DAY2 + 8 * 3600 * SEC + k(60) * 600 * SEC, ip="81.2.69.9"),
        # Office traffic as an IPv4-mapped IPv6 address, with a port, and behind a proxy.
        "office_mapped": F.events("48", ["7", "8", "9"], DAY1 + k(3) * 3600 * SEC,
                                  ip=["::ffff:10.20.1.1", "10.20.1.2:5555",
                                      "10.20.1.3, 81.2.69.1"]),
        # 60 events a second apart: 60 in any 60 s, at the limit, not over it.
        "calm": F.events("43", k(60).astype(str), DAY1 + 3600 * SEC + k(60) * SEC),
        # 10,200 events in 17 hours, 6 s apart, over 500 items: only the per-day limit.
        "busy_bot": F.events("6002", (k(10200) % 500).astype(str), DAY2 + k(10200) * 6 * SEC),
        # 1,100 distinct items in a day, 40 s apart (12 hours): only the distinct-items limit.
        "walker": F.events("6003", (k(1100) + 2000).astype(str), DAY1 + k(1100) * 40 * SEC),
        # One event every two minutes around the clock: only the active-hours limit, both days.
        "slow_crawler": F.events("6005", k(720).astype(str), DAY1 + k(720) * 120 * SEC),
        "slow_crawler_2": F.events("6005", (k(720) + 720).astype(str), DAY2 + k(720) * 120 * SEC),
        # Internal: an admin id in the configured range, an id from the list, office IPs.
        "admin": F.events("9000001", ["1", "2", "3"], DAY1 + k(3) * 3600 * SEC, ip="10.20.7.9"),
        "listed": F.events("qa-robot", ["1", "2"], DAY2 + k(2) * 3600 * SEC),
        "office": F.events("44", ["1", "2"], DAY1 + k(2) * 3600 * SEC, ip="10.20.3.4"),
        "home": F.events("44", ["3", "4", "5"], DAY2 + k(3) * 3600 * SEC, ip="81.2.69.1"),
        # Repeats: view 5 at t, t+5 (repeat), t+40 (35 s after the last: kept); click 5 and view 6
        # in between are different events; a reload chain 20 s apart keeps only its first.
        "repeats": F.events("45", ["5", "5", "5", "5", "6"],
                            DAY1 + 7200 * SEC + np.array([0, 5, 40, 1, 2]) * SEC,
                            event_type=["view", "view", "view", "click", "view"]),
        "reloads": F.events("45", ["7"] * 4, DAY1 + 9000 * SEC + np.array([0, 20, 40, 60]) * SEC),
        # A user with one event (min support).
        "single": F.events("46", ["4000"], DAY2 + 100 * SEC),
    }
    for name, frame in actors.items():  # unique event ids per actor
        frame["event_id"] = name + ":" + pd.Series(np.arange(len(frame))).astype(str)
    return actors


EXPECTED = {  # rule -> actors whose every event it removes (plus partial removals below)
    "crawler_ua": {"crawler"},
    "behaviour": {"fast_bot", "busy_bot", "walker", "twice_fast", "twice_fast_2",
                  "slow_crawler", "slow_crawler_2"},
    "internal": {"admin", "listed", "office", "office_mapped"},
    "shared_ip": {"rotator"},
}


def settings(**overrides) -> quality.FilterSettings:
    params = F.default_params(RUN)
    params["filter"]["internal"]["user_ids"] = ["qa-robot"]
    for path, value in overrides.items():
        section, key = path.split(".")
        params["filter"][section][key] = value
    return quality.filter_rules(of(params))


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    actors = crafted_window()
    root = tmp_path_factory.mktemp("history")
    frame = pd.concat([f.assign(actor=name) for name, f in actors.items()], ignore_index=True)
    F.write_history(root, frame.drop(columns="actor"))
    cfg = settings()
    w = FW.read_window(history.select_window(root, cfg.run_date, cfg.window_days, set()).files)
    actor_of = dict(zip(frame["event_id"], frame["actor"]))
    return w, np.array([actor_of[e] for e in w.to_table().column("event_id").to_pylist()])


@pytest.fixture(scope="module")
def result(window):
    return FN.apply_rules(window[0], settings())


def removed_actors(actor, mask) -> dict[str, int]:
    names, counts = np.unique(actor[mask], return_counts=True)
    return dict(zip(names.tolist(), counts.tolist()))


def test_heavy_human_keeps_every_event(window, result):
    w, actor = window
    heavy = np.isin(actor, ["heavy", "heavy2"])
    assert heavy.sum() == 6000 and result.keep[heavy].all()
    assert result.keep[np.isin(actor, ["calm", "home", "household", "fast_bot_quiet_day"])].all()


def test_a_double_firing_client_loses_its_doubles_not_its_day(window, result):
    """Repeats go before behaviour: 40 actions a minute, each fired twice, keep their 40."""
    w, actor = window
    double = actor == "double_fired"
    assert result.removed_by["repeated"][double].sum() == 40
    assert result.keep[double].sum() == 40 and not result.removed_by["behaviour"][double].any()


@pytest.mark.parametrize("rule", sorted(EXPECTED))
def test_bot_rule_removes_its_actors_entirely(window, result, rule):
    w, actor = window
    removed = removed_actors(actor, result.removed_by[rule])
    whole = {a for a in EXPECTED[rule]}
    for name in whole:
        assert removed.get(name) == (actor == name).sum(), (rule, name, removed)
    partial = {"crawler_ua": {"preview_human": 1}}.get(rule, {})
    assert removed == {**{a: int((actor == a).sum()) for a in whole}, **partial}


def test_crawler_rule_is_per_event(window, result):
    w, actor = window
    preview = actor == "preview_human"
    assert result.removed_by["crawler_ua"][preview].sum() == 1 and result.keep[preview].sum() == 2


def test_behaviour_names_the_limit_each_bot_broke(result):
    by_limit = result.details["behaviour"]["users_by_limit"]
    assert by_limit == {"max_events_per_day": 1, "max_events_per_minute": 2,
                        "max_distinct_items_per_day": 1, "max_active_hours_per_day": 1}
    details = result.details["behaviour"]
    assert (details["user_days_flagged"], details["bot_users"]) == (7, 2)  # 6004 and 6005
    top = {t["user_id"]: t for t in result.details["behaviour"]["top_users"]}
    assert top["6001"]["peak_events_per_minute"] == 80
    assert top["6002"]["max_events_per_day"] == 10200


def test_one_address_in_many_spellings_is_one_address(tmp_path):
    def window_of(frame):
        path = tmp_path / f"{frame['ip'].iloc[0] or 'empty'}.parquet"
        pq.write_table(F.to_arrow(frame), path)
        return FW.read_window([path])

    spellings = ["2001:db8::7", "2001:DB8::7", "2001:db8:0::7", "[2001:db8::7]:443"]
    frame = F.events([str(70_000 + k) for k in range(400)], ["1"] * 400,
                     DAY2 + np.arange(400) * 60 * SEC, ip=np.array(spellings * 100))
    frame["event_id"] = "s" + pd.Series(np.arange(400)).astype(str)
    many = window_of(frame)
    removed, detail = FN.rule_shared_ip(many, np.ones(len(many), dtype=bool), settings())
    assert removed.all() and detail["ip_days_by_limit"]["max_users_per_day"] == 1
    nobody = frame.assign(ip=np.array(["unknown", "", "-", "n/a"] * 100))
    unknown = window_of(nobody)
    assert not FN.rule_shared_ip(unknown, np.ones(len(unknown), dtype=bool), settings())[0].any()


def test_shared_ip_removes_a_rotating_scraper_not_a_household(window, result):
    w, actor = window
    assert result.details["shared_ip"]["ip_days_by_limit"]["max_users_per_day"] == 1
    assert result.removed_by["shared_ip"][actor == "rotator"].all()
    assert not result.removed_by["shared_ip"][actor == "household"].any()
    exempt = FN.apply_rules(w, settings(**{"shared_ip.exempt_cidrs": ["9.9.9.0/24"]}))
    assert exempt.keep[actor == "rotator"].all()  # a listed carrier NAT keeps its people


def test_internal_rule_by_id_range_list_and_network(window, result):
    w, actor = window
    # Office addresses mapped to IPv6, with a port or behind a proxy are the office's too.
    assert result.details["internal"]["rows_by_marker"] == {"user_ids": 5, "ip_cidrs": 5}
    assert result.keep[actor == "home"].all()  # the same employee at home is a customer


def test_repeated_rule_keeps_the_first_of_each_burst(window, result):
    w, actor = window
    removed = result.removed_by["repeated"]
    assert removed_actors(actor, removed) == {"repeats": 1, "reloads": 3, "double_fired": 40}
    ids = set(w.to_table().column("event_id").filter(pa.array(removed)).to_pylist())
    assert ids - {f"double_fired:{i}" for i in range(1, 80, 2)} == \
        {"repeats:1", "reloads:1", "reloads:2", "reloads:3"}


def test_min_support_is_off_by_default_and_works_when_set(window, result):
    w, actor = window
    assert not result.removed_by["min_support"].any()
    assert result.details["min_support"]["enabled"] is False
    on = FN.apply_rules(w, settings(**{"min_support.min_user_events": 2}))
    assert removed_actors(actor, on.removed_by["min_support"]) == {"single": 1}
    on = FN.apply_rules(w, settings(**{"min_support.min_item_events": 2}))
    removed = on.removed_by["min_support"]
    assert "single" in removed_actors(actor, removed)
    assert not removed[np.isin(actor, ["heavy"])].any()


def test_disabled_rules_remove_nothing(window):
    w, _ = window
    off = FN.apply_rules(w, settings(**{"crawler_ua.enabled": False, "behaviour.enabled": False,
                                        "internal.enabled": False, "repeated.enabled": False,
                                        "shared_ip.enabled": False}))
    assert off.keep.all()


def test_rules_remove_each_row_once(window, result):
    total = sum(m.astype(int) for m in result.removed_by.values())
    assert total.max() == 1 and (total == 0).sum() == result.keep.sum()


def test_extra_crawler_patterns(window):
    w, actor = window
    res = FN.apply_rules(w, settings(**{"crawler_ua.extra_patterns": ["Chrome/131"]}))
    assert res.removed_by["crawler_ua"][actor == "heavy"].all()


# ---------------------------------------------------------------------------------------------
# The stage.

def validation_verdict(run_date: str, status: str) -> dict:
    """metrics/validation.json as validate writes it, with only the verdict that matters here."""
    return {"run_date": run_date, "day": run_date, "status": status,
            "passed": status != "failed", "failed": int(status == "failed"), "warned": 0,
            "day_rejected": status == "failed", "rejected_days": [], "delta_events": 0,
            "window_days": 0, "window_events": 0, "expectations": {}}


def _stage_dir(tmp_path, monkeypatch, status="passed", run_date=RUN):
    monkeypatch.chdir(tmp_path)
    frame = pd.concat(crafted_window().values(), ignore_index=True)
    F.write_history(tmp_path / "data/history", frame)
    params = F.default_params(RUN)
    params["filter"]["internal"]["user_ids"] = ["qa-robot"]
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    metrics.VALIDATION.write(validation_verdict(str(run_date), status),
                             tmp_path / "metrics/validation.json")
    return frame


def test_stage_writes_canonical_clean_events_and_counters(tmp_path, monkeypatch, capsys):
    frame = _stage_dir(tmp_path, monkeypatch)
    assert stage.main([]) == 0
    table = pq.read_table(tmp_path / "data/clean")
    assert table.schema.equals(S.EVENT_SCHEMA, check_metadata=False)
    clean = S.to_frame(table)
    assert str(clean["user_id"].dtype) == "str"
    assert clean["ts"].is_monotonic_increasing
    assert (clean["user_id"] == "777").sum() == 6000
    assert not clean["user_id"].isin(["5001", "6002", "6003", "6004", "6005", "9000001",
                                      "qa-robot", "6100", "6399"]).any()
    assert (clean["user_id"] == "6001").sum() == 2  # the fast bot's quiet day
    metrics = json.loads((tmp_path / "metrics/filter.json").read_text())
    rules = metrics["rules"]
    assert {r: (rules[r]["rows"], rules[r]["users"]) for r in FN.RULES} == {
        "crawler_ua": (51, 2), "behaviour": (80 + 10200 + 1100 + 140 + 1440, 5),
        "internal": (10, 4), "repeated": (44, 2), "shared_ip": (3000, 300),
        "min_support": (0, 0)}
    assert metrics["input"]["rows"] == len(frame)
    assert metrics["output"]["rows"] == len(clean) == len(frame) - metrics["removed"]["rows"]
    # The committed metrics name offenders by salted hashes; the DVC-cached report by name.
    offenders = json.loads((tmp_path / "reports/filter/offenders.json").read_text())["rules"]
    assert offenders["crawler_ua"]["top_user_agents"][0]["user_agent"] == F.GOOGLEBOT
    assert offenders["behaviour"]["top_users"][0] == {"user_id": "6002", "rows": 10200,
                                                      "peak_events_per_minute": 10,
                                                      "max_events_per_day": 10200}
    assert rules["behaviour"]["top_users"][0] == {**offenders["behaviour"]["top_users"][0],
                                                  "user_id": privacy.pseudonym("6002")}
    # only names are pseudonymised: every count is the count (internal's by-marker rows were
    # once under a key "user_id", and the committed file held a hash where 5 belonged)
    assert rules["internal"]["rows_by_marker"] == offenders["internal"]["rows_by_marker"] \
        == {"user_ids": 5, "ip_cidrs": 5}
    # the pseudonyms' random hex left out: "h:18d50016a81d" is not user 5001
    committed = re.sub(r'"h:[0-9a-f]{12}"', '"h:"',
                       (tmp_path / "metrics/filter.json").read_text())
    for name in ("6002", "5001", "9000001", "qa-robot", "Googlebot", "10.20."):
        assert name not in committed, name
    assert metrics["window"]["days"] == 2 and metrics["window"]["rejected_days_left_out"] == []
    assert "filter_noise 2026-11-21" in capsys.readouterr().out


def test_stage_leaves_rejected_days_out(tmp_path, monkeypatch):
    _stage_dir(tmp_path, monkeypatch)
    ledger = R.load(tmp_path / "data/rejections.json")
    R.record_rejection(ledger, dt.date(2026, 11, 20), dt.date(2026, 11, 21), ["x"], "r.html")
    R.save(ledger, tmp_path / "data/rejections.json")
    assert stage.main([]) == 0
    clean = S.to_frame(pq.read_table(tmp_path / "data/clean"))
    assert (clean["ts"] < DAY2).all()
    metrics = json.loads((tmp_path / "metrics/filter.json").read_text())
    assert metrics["window"]["rejected_days_left_out"] == ["2026-11-20"]
    # Admitted: the day is back.
    R.admit(ledger, dt.date(2026, 11, 20), "alice", "looked, fine")
    R.save(ledger, tmp_path / "data/rejections.json")
    assert stage.main([]) == 0
    clean = S.to_frame(pq.read_table(tmp_path / "data/clean"))
    assert (clean["ts"] >= DAY2).any()


@pytest.mark.parametrize("status,run_date,message,exit_code", [
    ("failed", RUN, "validate failed for run.date 2026-11-21", 65),
    ("passed", "2026-11-20", "is for run.date 2026-11-20, not 2026-11-21", 2),
])
def test_stage_refuses_without_a_passing_validation(tmp_path, monkeypatch, capsys, status,
                                                    run_date, message, exit_code):
    _stage_dir(tmp_path, monkeypatch, status=status, run_date=run_date)
    assert stage.main([]) == exit_code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data/clean").exists()


@pytest.mark.parametrize("key,value,message", [
    ("internal.ip_cidrs", ["10.20.0.0/33"], "filter.internal.ip_cidrs[0]"),
    ("internal.user_id_ranges", [[5, 1]], "filter.internal.user_id_ranges[0]"),
    ("behaviour.max_events_per_minute", 0, "filter.behaviour.max_events_per_minute"),
    ("crawler_ua.extra_patterns", ["(unclosed"], "filter.crawler_ua.extra_patterns"),
])
def test_bad_settings_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        settings(**{key: value})


# ---------------------------------------------------------------------------------------------
# IP texts that are no address (dailyrec.quality.filtering.ip_texts decides): kept, counted, never a crash.

NOT_ADDRESSES = ["", " ", "999.1.1.1", "1.2.3", "localhost", "\x00",
                 "\u0661\u0662\u0663.\u0661.\u0661.\u0661",  # Arabic-Indic digits
                 "x" * 10_000, "167772161", "1.2.3.4%eth0", "fe80::1%", "fe80::1%eth 0"]
ODD_IP_SETTINGS = {"internal.ip_cidrs": ["10.20.0.0/16", "fe80::/10"],
                   "shared_ip.max_users_per_day": 20,
                   "shared_ip.exempt_cidrs": ["2001:db8:ff::/48"]}


def odd_ip_window() -> dict[str, pd.DataFrame]:
    """Who is who, with IP texts of every odd kind: no text is a crash, an address in any
    spelling is that address (a zone id dropped), and a text that is no address is an event
    without an IP (ODD_IP_SETTINGS)."""
    k = np.arange
    n = len(NOT_ADDRESSES)
    actors = {
        # one person per text that is no address, two events each (ties among the texts), the
        # first text a third: kept, counted
        "no_address": F.events([str(500 + j) for j in k(n)] * 2 + ["500"], ["1", "2"] * n + ["3"],
                               DAY2 + k(2 * n + 1) * 60 * SEC, ip=NOT_ADDRESSES * 2 + [""]),
        "no_ip": F.events("600", ["1", "2"], DAY2 + k(2) * 600 * SEC, ip=None),
        # the office behind a zone id (a dot in it), in brackets, IPv4-mapped, with a port
        "office": F.events("700", ["1", "2", "3", "4"], DAY2 + k(4) * 600 * SEC,
                           ip=["fe80::1%eth0.5", "[fe80::1%eth0]:443", "::ffff:10.20.1.1",
                               "10.20.1.1:8080"]),
        "loopback": F.events("701", ["1", "2"], DAY2 + k(2) * 600 * SEC, ip="[::1]:80"),
        # 40 ids behind one address in four spellings: shared_ip (20 a day at most)
        "rotator": F.events([str(800 + j % 40) for j in k(80)], (k(80) % 7).astype(str),
                            DAY2 + 3600 * SEC + k(80) * 30 * SEC,
                            ip=["2001:db8::7%eth0.5", "[2001:db8::7%eth1]:443", "2001:DB8::7",
                                "2001:db8:0::7"] * 20),
        # the same behind an exempt network (carrier NAT): kept
        "exempt_rotator": F.events([str(900 + j % 40) for j in k(80)], (k(80) % 7).astype(str),
                                   DAY2 + 3600 * SEC + k(80) * 30 * SEC,
                                   ip=["2001:db8:ff::9%wlan0", "[2001:DB8:FF::9]:80"] * 40),
    }
    for name, frame in actors.items():  # unique event ids per actor
        frame["event_id"] = name + ":" + pd.Series(np.arange(len(frame))).astype(str)
    return actors


def test_odd_ip_texts_are_kept_and_counted_and_addresses_are_understood(tmp_path):
    """One odd IP text ("fe80::1%eth0.5": a zone id with a dot) crashed the internal rule, and
    with it every run whose window held the row. Every text here is either an address, in any
    spelling, or an event without an IP: kept, and counted in metrics/filter.json."""
    actors = odd_ip_window()
    frame = pd.concat([f.assign(actor=name) for name, f in actors.items()], ignore_index=True)
    F.write_history(tmp_path / "history", frame.drop(columns="actor"))
    counts = FE.run(settings(**ODD_IP_SETTINGS), tmp_path / "history", set(), tmp_path / "clean")
    kept = pq.read_table(tmp_path / "clean").column("event_id").to_pylist()
    actor_of = dict(zip(frame["event_id"], frame["actor"]))
    assert pd.Series([actor_of[e] for e in kept]).value_counts().to_dict() == {
        "no_address": 2 * len(NOT_ADDRESSES) + 1, "no_ip": 2, "loopback": 2,
        "exempt_rotator": 80}
    assert counts["rules"]["internal"]["rows_by_marker"]["ip_cidrs"] == 4  # the office
    assert counts["rules"]["shared_ip"]["rows"] == 80  # the rotator
    assert counts["ip_texts"] == {
        "rows_without_ip": 2, "rows_not_an_address": 2 * len(NOT_ADDRESSES) + 1,
        "values_not_an_address": len(NOT_ADDRESSES),
        "top_not_an_address": [{"ip": text, "rows": 3 if text == "" else 2}
                               for text in NOT_ADDRESSES[:10]]}


IP_LIKE = st.one_of(
    st.text(),  # anything, control characters and astral planes included
    st.text(alphabet="0123456789abcdefABCDEF:.%[], \t", max_size=60),  # near misses
    st.sampled_from(NOT_ADDRESSES + ["fe80::1%eth0.5", "::ffff:10.20.1.1", "10.20.1.1:8080",
                                     "[::1]:80"]),
    st.builds(lambda ip, zone: f"{ip}%{zone}", st.ip_addresses(v=6).map(str),
              st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._~-", min_size=1)),
    st.ip_addresses().map(str),
)


@hp.settings(max_examples=200, deadline=None, derandomize=True, database=None)
@hp.given(texts=st.lists(st.one_of(st.none(), IP_LIKE), min_size=1, max_size=24))
def test_the_rules_never_raise_on_any_ip_text(texts):
    """Whatever IP texts a window holds, every rule runs (internal and shared_ip, with IPv4 and
    IPv6 networks), and an event whose text is no address is removed by no IP rule."""
    n = len(texts)
    frame = F.events([str(k % 3) for k in range(n)], [str(k) for k in range(n)],
                     DAY2 + np.arange(n) * 3600 * SEC)
    frame["ip"] = pd.Series(texts, dtype=object)
    w = FW.window_of(F.to_arrow(frame).cast(FW.WINDOW_SCHEMA))
    cfg = settings(**{**ODD_IP_SETTINGS, "crawler_ua.enabled": False,
                      "shared_ip.max_users_per_day": 1})
    result = FN.apply_rules(w, cfg)
    assert result.keep.sum() + sum(m.sum() for m in result.removed_by.values()) == n
    rows = w.to_table().column("ip").to_pylist()
    unusable = np.array([text is not None and ip_texts.canonical_ips(pa.array([text]))[0].as_py()
                         is None for text in rows])
    assert not (result.removed_by["internal"] | result.removed_by["shared_ip"])[unusable].any()


# ---------------------------------------------------------------------------------------------
# The vectorised rules agree with plain pandas on random data with tight limits.

@pytest.fixture(scope="module")
def random_window(tmp_path_factory):
    rng = np.random.default_rng(3)
    n = 20_000
    users = rng.integers(0, 170, n)
    # Some users act in bursts (seconds apart), some around midnight (the rules work a day at a
    # time: a burst or a repeat across midnight must still count), others over two days.
    fast, midnight = users < 20, users >= 150
    seconds = np.select([fast, midnight], [rng.integers(0, 3000, n),
                                           86_400 + rng.integers(-150, 150, n)],
                        rng.integers(0, 2 * 86_400, n))
    frame = F.events(users.astype(str), rng.integers(0, 60, n).astype(str),
                     DAY1 + seconds * SEC, event_type=rng.choice(["view", "click"], n))
    # And one user over 6 events a minute only across midnight: 4 events before it, 4 after.
    frame = pd.concat([frame, F.events("900", np.arange(8).astype(str),
                                       DAY2 + (np.arange(8) * 5 - 20) * SEC)], ignore_index=True)
    frame["event_id"] = "e" + pd.Series(np.arange(len(frame))).astype(str)
    root = tmp_path_factory.mktemp("random")
    F.write_history(root, frame)
    cfg = settings()
    w = FW.read_window(history.select_window(root, cfg.run_date, cfg.window_days, set()).files)
    return w, S.to_frame(w.to_table().cast(S.EVENT_SCHEMA))


def test_behaviour_matches_pandas_reference(random_window):
    w, frame = random_window
    limits = {"behaviour.max_events_per_minute": 6, "behaviour.max_events_per_day": 170,
              "behaviour.max_distinct_items_per_day": 52, "behaviour.max_active_hours_per_day": 23,
              "behaviour.bot_days": 2}
    cfg = settings(**limits)
    removed, _ = FN.rule_behaviour(w, np.ones(len(w), dtype=bool), cfg)
    sec = frame["ts"].astype("int64") // 1_000_000
    frame = frame.assign(sec=sec, day=sec // 86_400, hour=sec // 3600 % 24)
    got = set(zip(frame.loc[removed, "user_id"], frame.loc[removed, "day"]))
    flagged, days_of, across_midnight = set(), {}, 0
    for user, g in frame.groupby("user_id"):  # the reference: plain, slow, obviously right
        days_of[user] = set(g["day"])
        s = np.sort(g["sec"].to_numpy())
        early = np.arange(len(s))[(np.searchsorted(s, s + 60) - np.arange(len(s))) > 6]
        late = s[early + 6]
        flagged |= {(user, d) for d in set(late // 86_400)}  # the day of the event over the limit
        across_midnight += int((s[early] // 86_400 != late // 86_400).sum())
        for day, d in g.groupby("day"):
            if len(d) > 170 or d["item_id"].nunique() > 52 or d["hour"].nunique() > 23:
                flagged.add((user, day))
    expected = set(flagged)
    for user in {u for u, _ in flagged}:
        if sum(u == user for u, _ in flagged) >= 2:  # a bot: all its days go
            expected |= {(user, d) for d in days_of[user]}
    users = {u for u, _ in expected}
    assert got == expected and 5 < len(users) < 170 and across_midnight > 0
    day1, day2 = (d.value // 86_400_000_000_000 for d in (DAY1, DAY2))
    assert ("900", day2) in got and ("900", day1) not in got  # the later day only
    assert any(sum(u == x for x, _ in expected) == 1 for u in users)  # a one-day flag stays a day


def test_repeated_matches_pandas_reference(random_window):
    w, frame = random_window
    cfg = settings(**{"repeated.dedupe_seconds": 120})
    removed, _ = FN.rule_repeated(w, np.ones(len(w), dtype=bool), cfg)
    ordered = frame.assign(row=np.arange(len(frame))).sort_values(
        ["user_id", "item_id", "event_type", "ts", "row"], kind="stable")
    gap = ordered.groupby(["user_id", "item_id", "event_type"])["ts"].diff()
    expected = np.zeros(len(frame), dtype=bool)
    repeat = (gap < pd.Timedelta(seconds=120)).to_numpy()
    expected[ordered["row"].to_numpy()[repeat]] = True
    day = ordered["ts"].dt.floor("D")
    across_midnight = repeat & (day != day.groupby([ordered["user_id"], ordered["item_id"],
                                                    ordered["event_type"]]).shift()).to_numpy()
    assert (removed == expected).all() and 100 < expected.sum() < len(frame) / 2
    assert across_midnight.sum() > 0


@pytest.mark.parametrize("share", [0.7, 0.0])
def test_data_clean_is_written_a_day_at_a_time_as_one_write_would(random_window, tmp_path, share):
    """write_clean builds each day's table from the window's codes a history day at a time: the
    day files are the ones writing the whole kept window at once gives, byte for byte."""
    w, _ = random_window
    keep = np.random.default_rng(5).random(len(w)) < share
    assert FE.write_clean(w, keep, tmp_path / "streamed") == keep.sum()
    with clean.DayWriter(tmp_path / "whole") as writer:
        writer.add(w.to_table().filter(pa.array(keep)))
    streamed = {p.name: p.read_bytes() for p in (tmp_path / "streamed").iterdir()}
    assert streamed == {p.name: p.read_bytes() for p in (tmp_path / "whole").iterdir()}
    assert len(streamed) == (len(np.unique(w.ts_us[keep] // 86_400_000_000)) if share else 0)


def test_days_with_arrivals_come_out_in_the_order_of_one_stable_sort(tmp_path):
    """read_window sorts each day with arrivals on its own (one day of memory, not the window's):
    the rows come out as a stable sort by ts of the whole window would put them, ties in file
    order."""
    root = tmp_path / "history"
    rng = np.random.default_rng(4)
    files = []
    for k, day in enumerate([dt.date(2026, 11, 18), dt.date(2026, 11, 19)]):
        start = pd.Timestamp(day, tz="UTC")
        for name in (history.PARTITION_FILE, f"{history.ARRIVED_PREFIX}2026-11-2{k + 1}.parquet",
                     f"{history.ARRIVED_PREFIX}2026-11-2{k + 2}.parquet"):
            seconds = np.sort(rng.integers(0, 86_400, 50)) // 600 * 600  # ties, across files too
            frame = F.events(rng.integers(1, 9, 50).astype(str), rng.integers(1, 9, 50).astype(str),
                             start + pd.to_timedelta(seconds, unit="s"))
            frame["event_id"] = [f"{day}-{name}-{i}" for i in range(50)]
            path = root / f"day={day.isoformat()}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(F.to_arrow(frame), path)
            files.append(path)
    got = FW.read_window(files).to_table().column("event_id").to_pylist()
    whole = pa.concat_tables([pq.read_table(p) for p in files])
    order = np.argsort(whole.column("ts").cast(pa.int64()).to_numpy(), kind="stable")
    assert got == whole.column("event_id").take(order).to_pylist()
    assert got != whole.column("event_id").to_pylist()  # the arrivals did interleave


def test_window_codes_are_those_of_unifying_day_by_day(tmp_path):
    """The window's codes: the values and codes are the ones unifying the days' row groups one
    after another gives (the order the rules' ties and top lists follow: a faster reading must
    keep it), each value once, and they decode to the events' strings. Days with arrivals,
    several row groups a day, values shared across days, and NULLs."""
    root = tmp_path / "history"
    rng = np.random.default_rng(11)
    files = []
    for k, day in enumerate([dt.date(2026, 11, 17), dt.date(2026, 11, 18), dt.date(2026, 11, 19)]):
        start = pd.Timestamp(day, tz="UTC")
        names = [history.PARTITION_FILE] + ([f"{history.ARRIVED_PREFIX}2026-11-2{k}.parquet"]
                                            if k != 1 else [])
        for name in names:
            seconds = np.sort(rng.integers(0, 86_400, 300))
            frame = F.events(rng.integers(1, 40 + 30 * k, 300).astype(str),
                             rng.integers(1, 25, 300).astype(str),
                             start + pd.to_timedelta(seconds, unit="s"))
            frame["ip"] = np.where(rng.random(300) < 0.2, None,
                                   [f"10.0.{k}.{i}" for i in rng.integers(0, 50, 300)])
            path = root / f"day={day.isoformat()}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(F.to_arrow(frame), path, row_group_size=70)  # several chunks a day
            files.append(path)
    w = FW.read_window(files)

    def day_by_day(name):  # the reference: the values so far in front of each day's chunks
        values, codes = pa.array([], pa.string()), []
        for folder in dict.fromkeys(p.parent for p in files):
            day = FW._read_day([p for p in files if p.parent == folder], FW.RULE_COLUMNS)
            head = pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), values)
            column = pa.table({"c": pa.chunked_array([head, *day.column(name).chunks])}) \
                .unify_dictionaries().column("c")
            values = column.chunk(0).dictionary
            codes += [pc.fill_null(c.indices, -1).to_numpy(zero_copy_only=False)
                      for c in column.chunks]
        return values, np.concatenate(codes)

    table = w.to_table()
    for name in FW.DICTIONARY_COLUMNS:
        values, codes = day_by_day(name)
        assert w.coded[name].values.equals(values), name
        np.testing.assert_array_equal(w.coded[name].codes, codes)
        assert len(set(values.to_pylist())) == len(values), name
        decoded = [None if c < 0 else values[c].as_py() for c in codes]
        assert decoded == table.column(name).cast(pa.string()).to_pylist(), name
    assert (w.ip.codes < 0).sum() > 0 and len(w.item.values) > 1
