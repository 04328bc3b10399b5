"""The training window's checks from per-file facts (dailyrec.quality.validation.window_facts).

What may be reused, and why it is safe (the module's docstring has the argument):
  - a file's facts, keyed by its MD5: the same bytes give the same facts, so a run that finds an
    entry for a file's hash may use it; a rewritten file has a new hash and is read again;
  - nothing a run decides is in them: the window's bounds, the event-type vocabulary and the
    tolerances are applied when the facts are combined, so a later run.date reuses them and still
    gets the answer Great Expectations gives on the whole window;
  - hashed event ids only nominate duplicates; the text decides.
Each claim is a test below, against Great Expectations itself on the same files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dailyrec.core import schema as S
from dailyrec.core.errors import DataError
from dailyrec.ingest.history import partition_path, select_window
from dailyrec.quality.validation import expectations as V
from dailyrec.quality.validation import verdict as VD
from dailyrec.quality.validation import window_facts as WF
from dailyrec.quality import settings as quality
from tests import dq_factory as F
from tests.params import of

RUN = dt.date(2026, 11, 21)
DAYS = [RUN - dt.timedelta(days=k) for k in range(7, 0, -1)]
COMPARED = ("suite", "name", "check", "severity", "success", "observed", "expected",
            "unexpected_count", "unexpected_percent", "note")


def settings(run: dt.date = RUN, strict: bool = False):
    params = F.default_params(run.isoformat())
    if strict:
        for check in ("not_null", "event_types", "id_format", "event_id_unique", "ts_in_window"):
            params["validate"][check]["mostly"] = 1.0
    return quality.validate(of(params))


def write_days(history, frames: dict[dt.date, pd.DataFrame]) -> None:
    """Each frame as its day's own file, as is (a file may hold events of other days)."""
    for day, frame in frames.items():
        path = partition_path(history, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(F.to_arrow(frame), path)


def clean_days(n: int = 400) -> dict[dt.date, pd.DataFrame]:
    return {d: F.day_events(d, n=n) for d in DAYS}


def tolerated(days: dict[dt.date, pd.DataFrame]) -> dict[dt.date, pd.DataFrame]:
    """A few bad rows of every kind, each below its tolerance (mostly 0.99 of 2,800 rows).
    (No NULLs: history files hold NOT NULL key columns, and a file that does not is refused.)"""
    days = {d: f.copy() for d, f in days.items()}
    a, b, c = DAYS[1], DAYS[3], DAYS[5]
    days[a].loc[:4, "event_type"] = "scroll"  # 5 rows outside the vocabulary
    days[b].loc[:3, "ts"] = pd.Timestamp(RUN, tz="UTC") + pd.Timedelta(minutes=5)  # 4 after
    days[b].loc[4:5, "ts"] = pd.Timestamp(DAYS[0], tz="UTC") - pd.Timedelta(days=90)  # 2 before
    days[c].loc[:5, "event_id"] = days[a].loc[100:105, "event_id"].to_numpy()  # 6 ids twice
    return days


def facts_outcomes(cfg, history, facts_dir):
    first = cfg.run_date - dt.timedelta(days=cfg.window_days)
    files = select_window(history, cfg.run_date, cfg.window_days, set()).files
    return V.window_from_facts(cfg, files, first, facts_dir)


def gx_outcomes(cfg, history):
    first = cfg.run_date - dt.timedelta(days=cfg.window_days)
    files = select_window(history, cfg.run_date, cfg.window_days, set()).files
    return V.run_suites(V.window_suites(cfg, VD.read_window(files), first), cfg)


def as_rows(outcomes):
    return [{k: getattr(o, k) for k in COMPARED} for o in outcomes]


@pytest.mark.parametrize("window", ["clean", "tolerated"])
def test_facts_give_great_expectations_answer(tmp_path, window):
    history = tmp_path / "history"
    write_days(history, clean_days() if window == "clean" else tolerated(clean_days()))
    cfg = settings()
    outcomes, events, stats = facts_outcomes(cfg, history, tmp_path / "facts")
    assert outcomes is not None, "a passing window is answered from the facts"
    assert events == 7 * 400 and stats == {"files": 7, "computed": 7, "reused": 0}
    assert as_rows(outcomes) == as_rows(gx_outcomes(cfg, history))
    if window == "tolerated":  # the anomalies were counted, not missed
        by_name = {o.name: o for o in outcomes}
        assert by_name["window.event_types"].unexpected_count == 5
        assert by_name["window.ts_in_window"].unexpected_count == 6
        assert by_name["window.event_id_unique"].unexpected_count == 12


@pytest.mark.parametrize("bad", ["event_types", "ts_in_window", "event_id_unique", "id_format"])
def test_a_failing_window_is_left_to_great_expectations(tmp_path, bad):
    days = clean_days()
    day = days[DAYS[2]]
    if bad == "event_types":
        day.loc[:5, "event_type"] = "scroll"
    elif bad == "ts_in_window":
        day.loc[:5, "ts"] = pd.Timestamp(RUN, tz="UTC")
    elif bad == "event_id_unique":
        day.loc[:5, "event_id"] = days[DAYS[0]].loc[:5, "event_id"].to_numpy()
    else:
        day.loc[:5, "item_id"] = "-1' OR '1'='1"
    write_days(tmp_path / "history", days)
    outcomes, _, _ = facts_outcomes(settings(strict=True), tmp_path / "history", tmp_path / "f")
    assert outcomes is None


def test_validate_falls_back_to_great_expectations_with_examples(tmp_path):
    days = clean_days()
    days[DAYS[2]].loc[:5, "event_type"] = "scroll"
    history = tmp_path / "data/history"
    write_days(history, days)
    F.write_delta(tmp_path / "data/delta", F.day_events(DAYS[-1], n=400))
    cfg = settings(strict=True)
    verdict = VD.validate(cfg, tmp_path / "data/delta/events.parquet",
                         tmp_path / "data/delta/quarantine.parquet", history,
                         tmp_path / "rejections.json", "report.html", facts_dir=tmp_path / "f")
    failed = [o for o in verdict.outcomes if o.name == "window.event_types"][0]
    assert verdict.status == "failed" and verdict.window_failed and not failed.success
    assert failed.examples and failed.examples[0]["event_type"] == "scroll"
    assert verdict.window_checked_by.startswith("Great Expectations on the whole window, after")


def test_unchanged_files_are_reused_and_a_rewritten_one_is_read_again(tmp_path):
    history, facts = tmp_path / "history", tmp_path / "facts"
    days = clean_days()
    write_days(history, days)
    cfg = settings()
    first, _, stats = facts_outcomes(cfg, history, facts)
    assert stats == {"files": 7, "computed": 7, "reused": 0}
    again, _, stats = facts_outcomes(cfg, history, facts)
    assert stats == {"files": 7, "computed": 0, "reused": 7}
    assert as_rows(again) == as_rows(first)
    # merge_history rewrites a day's file when late events arrive: new bytes, new key
    write_days(history, {DAYS[3]: pd.concat([days[DAYS[3]], F.day_events(DAYS[3], n=5, seed=9,
                                                                          prefix="late")])})
    outcomes, events, stats = facts_outcomes(cfg, history, facts)
    assert stats == {"files": 7, "computed": 1, "reused": 6} and events == 7 * 400 + 5
    assert as_rows(outcomes) == as_rows(gx_outcomes(cfg, history))
    assert len(list(facts.iterdir())) == 7, "the old file's entry is pruned"


def test_a_later_run_date_reuses_facts_and_applies_its_own_bounds(tmp_path):
    """An event a few minutes after midnight lies outside run R's window and inside run R+1's:
    the facts keep events per day, the bounds come from the run."""
    history, facts = tmp_path / "history", tmp_path / "facts"
    days = tolerated(clean_days())
    write_days(history, days)
    today = {o.name: o for o in facts_outcomes(settings(), history, facts)[0]}
    assert today["window.ts_in_window"].unexpected_count == 6
    tomorrow = settings(RUN + dt.timedelta(days=1))
    outcomes, _, stats = facts_outcomes(tomorrow, history, facts)
    assert stats["computed"] == 0 and stats["reused"] == 7
    assert {o.name: o for o in outcomes}["window.ts_in_window"].unexpected_count == 2
    assert as_rows(outcomes) == as_rows(gx_outcomes(tomorrow, history))


def test_a_damaged_entry_is_recomputed_not_trusted(tmp_path):
    history, facts = tmp_path / "history", tmp_path / "facts"
    write_days(history, clean_days())
    cfg = settings()
    first, _, _ = facts_outcomes(cfg, history, facts)
    entry = sorted(facts.iterdir())[0]
    (entry / "arrays.npz").write_bytes(b"not an npz")
    (facts / ".abc.123.tmp").mkdir()  # what a killed run leaves
    outcomes, _, stats = facts_outcomes(cfg, history, facts)
    assert stats == {"files": 7, "computed": 1, "reused": 6}
    assert as_rows(outcomes) == as_rows(first)
    assert not (facts / ".abc.123.tmp").exists()


def test_equal_hashes_are_not_duplicates_unless_the_ids_are(tmp_path):
    """A 64-bit collision is improbable, not impossible: forge one and see the text decide."""
    history = tmp_path / "history"
    write_days(history, clean_days())
    files = select_window(history, RUN, 60, set()).files
    facts = [WF.FileFacts.of(WF.read_key_columns(p)) for p in files]
    forged = [dataclasses.replace(f, event_ids=f.event_ids.copy()) for f in facts]
    forged[1].event_ids[:3] = forged[0].event_ids[:3]  # three different ids, equal hashes
    assert WF._duplicated_rows(forged, files) == 0
    assert WF._duplicated_rows(facts, files) == 0
    assert np.unique(np.concatenate([f.event_ids for f in forged])).size == 7 * 400 - 3


def test_a_file_with_a_null_key_is_refused_on_both_paths(tmp_path):
    """Why the facts keep no NULL counts: a history file with a NULL key never gets that far."""
    history = tmp_path / "history"
    write_days(history, clean_days())
    days = clean_days()
    days[DAYS[2]].loc[:0, "event_type"] = None
    nullable = pa.schema([f.with_nullable(True) for f in S.EVENT_SCHEMA])
    pq.write_table(F.to_arrow(days[DAYS[2]], nullable), partition_path(history, DAYS[2]))
    with pytest.raises(DataError, match="not canonical events"):
        facts_outcomes(settings(), history, tmp_path / "facts")
    with pytest.raises(DataError, match="not canonical events"):
        gx_outcomes(settings(), history)
