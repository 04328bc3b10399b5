"""validate: every expectation fails on a crafted bad batch and passes on a good one; the
rejection ledger, admission, severities, the summary and the offline report."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dailyrec.quality.validation import expectations as V
from dailyrec.quality.validation import rejections as R
from dailyrec.quality import settings as quality
from stages import validate as stage
from tests import dq_factory as F
from tests.params import of

RUN = dt.date(2026, 11, 21)
DAY = RUN - dt.timedelta(days=1)


@pytest.fixture(scope="module")
def cfg():
    return quality.validate(of(F.default_params(RUN.isoformat())))


@pytest.fixture(scope="module")
def strict():
    """Every row-level check with no tolerance (mostly: 1): one bad row fails it."""
    params = F.default_params(RUN.isoformat())
    for check in ("not_null", "event_types", "id_format", "event_id_unique", "ts_in_window"):
        params["validate"][check]["mostly"] = 1.0
    return quality.validate(of(params))


@pytest.fixture(scope="module")
def good_delta():
    return F.day_events(DAY, n=400)


@pytest.fixture(scope="module")
def good_window():
    days = [RUN - dt.timedelta(days=k) for k in range(7, 0, -1)]
    return pd.concat([F.day_events(d, n=400) for d in days], ignore_index=True)[
        ["event_id", "user_id", "item_id", "event_type", "ts"]]


TRAILING = [400] * 7  # seven trusted days of 400 events: the band is 200..800


def delta_outcomes(cfg, delta, reasons=(), trailing=TRAILING, only=None):
    """Outcomes by name; `only` runs just the suite holding that expectation (GX costs ~0.5 s a
    suite, even on tiny frames)."""
    reasons = pd.Series(list(reasons), dtype="str")
    suites = V.delta_suites(cfg, delta, reasons, trailing)
    if only:
        suites = [s for s in suites if only.split(".")[0] == s.name]
    return {o.name: o for o in V.run_suites(suites, cfg)}


def window_outcomes(cfg, window):
    first = RUN - dt.timedelta(days=cfg.window_days)
    return {o.name: o for o in V.run_suites(V.window_suites(cfg, window, first), cfg)}


def test_good_delta_passes_every_expectation(cfg, good_delta):
    outcomes = delta_outcomes(cfg, good_delta, reasons=["ts:future"] * 3)
    assert len(outcomes) >= 20
    assert [o.line() for o in outcomes.values() if not o.success] == []
    assert outcomes["delta_day.volume"].observed == 400


def test_good_window_passes_every_expectation(cfg, good_window):
    outcomes = window_outcomes(cfg, good_window)
    assert [o.line() for o in outcomes.values() if not o.success] == []
    assert outcomes["window.events"].observed == len(good_window)


def _with(frame, **changes):
    frame = frame.copy()
    for column, (row, value) in changes.items():
        frame.loc[row, column] = value
    return frame


def _many(frame, rows: int = 10, **changes):
    """The first `rows` rows changed: a share of bad rows above the default tolerance."""
    frame = frame.copy()
    for column, value in changes.items():
        frame.loc[:rows - 1, column] = value
    return frame


# Each crafted bad delta and the expectation it must fail.
BAD_DELTAS = {
    "delta.columns": lambda d: d.drop(columns=["source"]),
    "delta.types.user_id": lambda d: d.assign(user_id=np.arange(len(d), dtype="int64")),
    "delta.types.ts": lambda d: d.assign(ts=d["ts"].dt.tz_localize(None)),
    "delta.not_null.user_id": lambda d: _with(d, user_id=(5, None)),
    "delta.not_null.event_id": lambda d: _with(d, event_id=(7, None)),
    "delta.event_types": lambda d: _with(d, event_type=(3, "hover")),
    "delta.id_format.user_id": lambda d: _with(d, user_id=(9, "<script>alert(1)</script>")),
    "delta.id_format.item_id": lambda d: _with(d, item_id=(9, "item 12")),
    "delta.event_id_unique": lambda d: _with(d, event_id=(11, d.loc[10, "event_id"])),
    "delta.ts_in_window": lambda d: _with(d, ts=(0, pd.Timestamp("2026-11-10T00:00Z"))),
    # The feed stopped at 06:00: the newest event is 18 hours old.
    "delta.freshness": lambda d: d[d["ts"] < pd.Timestamp("2026-11-20T06:00Z")],
    # A broken feed (a tenth of the usual volume) and a bot storm (three times it).
    "delta_day.volume": lambda d: d.iloc[::10].reset_index(drop=True),
}


@pytest.mark.parametrize("name", sorted(BAD_DELTAS))
def test_each_delta_expectation_fails_on_its_bad_batch(strict, good_delta, name):
    outcomes = delta_outcomes(strict, BAD_DELTAS[name](good_delta), only=name)
    assert not outcomes[name].success, outcomes[name].line()
    assert outcomes[name].failed  # severity fail by default


def test_bot_storm_fails_the_volume_band(cfg, good_delta):
    storm = pd.concat([good_delta] + [good_delta.assign(event_id=good_delta["event_id"] + f"s{k}")
                                      for k in range(2)], ignore_index=True)
    outcome = delta_outcomes(cfg, storm, only="delta_day")["delta_day.volume"]
    assert not outcome.success and outcome.observed == 1200
    assert "200 .. 800" in outcome.expected


def test_volume_band_waits_for_enough_history(cfg, good_delta):
    small = good_delta.iloc[::10].reset_index(drop=True)
    outcome = delta_outcomes(cfg, small, trailing=[400, 400], only="delta_day")["delta_day.volume"]
    assert outcome.success and "band not applied" in outcome.note
    empty = good_delta.iloc[:0]
    assert not delta_outcomes(cfg, empty, trailing=[400, 400],
                              only="delta_day")["delta_day.volume"].success


def test_quarantine_share_fails_above_threshold(cfg, good_delta):
    ok = delta_outcomes(cfg, good_delta, reasons=["user_id:missing"] * 10,
                        only="fetch")["fetch.quarantine_share"]
    assert ok.success
    bad = delta_outcomes(cfg, good_delta, reasons=["user_id:missing"] * 30 + ["ts:future"] * 10,
                         only="fetch")
    outcome = bad["fetch.quarantine_share"]
    assert not outcome.success and outcome.unexpected_count == 40
    assert outcome.top_values[0] == {"value": "user_id:missing", "count": 30}


def test_row_level_checks_reject_a_share_of_bad_rows_never_one(cfg, good_delta):
    """One bad row in 400 passes at the default tolerance (mostly 0.99); 2% fail: one bad row must
    never reject a day."""
    one = delta_outcomes(cfg, _with(good_delta, item_id=(9, "item 12")), only="delta")
    assert one["delta.id_format.item_id"].success
    assert one["delta.id_format.item_id"].unexpected_count == 1
    assert "for >= 99.00% of rows" in one["delta.id_format.item_id"].expected
    many = good_delta.copy()
    many.loc[:7, "item_id"] = "item 12"
    assert not delta_outcomes(cfg, many, only="delta")["delta.id_format.item_id"].success


def test_failure_carries_examples_rows(strict, good_delta):
    outcome = delta_outcomes(strict, _with(good_delta, event_type=(3, "hover")),
                             only="delta")["delta.event_types"]
    assert outcome.unexpected_count == 1
    assert outcome.examples[0]["event_type"] == "hover"
    assert outcome.examples[0]["event_id"] == good_delta.loc[3, "event_id"]


BAD_WINDOWS = {
    "window.not_null.user_id": lambda w: _with(w, user_id=(5, None)),
    "window.event_types": lambda w: _with(w, event_type=(5, "scroll")),
    "window.ts_in_window": lambda w: _with(w, ts=(5, pd.Timestamp("2026-11-21T00:00Z"))),
    "window.event_id_unique": lambda w: _with(w, event_id=(500, w.loc[5, "event_id"])),
    "window_ids.id_format": lambda w: _with(w, item_id=(5, "-1' OR '1'='1")),
    "window.events": lambda w: w.iloc[:0],
}


@pytest.mark.parametrize("name", sorted(BAD_WINDOWS))
def test_each_window_expectation_fails_on_its_bad_batch(strict, good_window, name):
    outcomes = window_outcomes(strict, BAD_WINDOWS[name](good_window))
    assert not outcomes[name].success, outcomes[name].line()


# ---------------------------------------------------------------------------------------------
# The stage: verdicts, the ledger, admission.

def _setup(tmp_path, monkeypatch, delta, params=None, history_days=7):
    monkeypatch.chdir(tmp_path)
    days = [RUN - dt.timedelta(days=k) for k in range(history_days + 1, 1, -1)]
    if days:
        F.write_history(tmp_path / "data/history",
                        pd.concat([F.day_events(d, n=400) for d in days], ignore_index=True))
    # merge_history has already added the delta's day to the history when validate runs.
    F.write_history(tmp_path / "data/history", delta[delta["ts"] >= pd.Timestamp(DAY, tz="UTC")])
    F.write_delta(tmp_path / "data/delta", delta)
    params = params or F.default_params(RUN.isoformat())
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    return params


def test_stage_passes_a_good_day_and_writes_its_outputs(tmp_path, monkeypatch, good_delta, capsys):
    _setup(tmp_path, monkeypatch, good_delta)
    assert stage.main([]) == 0
    report = json.loads((tmp_path / "metrics/validation.json").read_text())
    assert report["status"] == "passed" and report["passed"] and report["failed"] == 0
    assert report["window_days"] == 8 and report["window_events"] == 8 * 400
    assert all(e["success"] for e in report["expectations"].values())
    assert json.loads((tmp_path / "data/rejections.json").read_text()) == {"days": {}}
    assert (tmp_path / "reports/validation/2026-11-21.html").exists()
    assert (tmp_path / "reports/validation/index.html").exists()
    assert "passed" in capsys.readouterr().out


def test_failing_day_is_rejected_with_a_human_summary(tmp_path, monkeypatch, good_delta, capsys):
    bad = good_delta[good_delta["ts"] < pd.Timestamp("2026-11-20T06:00Z")]
    _setup(tmp_path, monkeypatch, bad)
    assert stage.main([]) == 65
    err = capsys.readouterr().err
    assert "validate 2026-11-21: FAILED" in err
    assert "day 2026-11-20 is REJECTED" in err
    assert "delta.freshness: observed 2026-11-20T05:" in err  # observed...
    assert "expected newest event >= 2026-11-20T22:00:00Z" in err  # ...and the threshold
    assert "delta_day.volume" in err
    assert "python -m stages.validate admit 2026-11-20" in err
    ledger = R.load(tmp_path / "data/rejections.json")
    entry = ledger["days"]["2026-11-20"]
    assert entry["status"] == "rejected" and entry["origin"] == "validate"
    assert any("delta.freshness" in f for f in entry["failures"])
    report = json.loads((tmp_path / "metrics/validation.json").read_text())
    assert report["status"] == "failed" and report["day_rejected"] is True
    assert not report["expectations"]["delta.freshness"]["success"]
    # The window suite already leaves the rejected day out.
    assert report["rejected_days"] == ["2026-11-20"] and report["window_days"] == 7


def test_examples_rows_in_summary(tmp_path, monkeypatch, good_delta, capsys):
    _setup(tmp_path, monkeypatch, _many(good_delta, user_id="user 12"))  # 2.5% of the rows
    assert stage.main([]) == 65
    err = capsys.readouterr().err
    assert "delta.id_format.user_id" in err and "user_id=user 12" in err


def test_admitted_day_goes_through_and_stays_admitted(tmp_path, monkeypatch, good_delta, capsys):
    bad = good_delta[good_delta["ts"] < pd.Timestamp("2026-11-20T06:00Z")]
    _setup(tmp_path, monkeypatch, bad)
    assert stage.main([]) == 65
    assert stage.main(["admit", "2026-11-20", "--by", "alice", "--note", "feed outage, data ok"]) == 0
    entry = R.load(tmp_path / "data/rejections.json")["days"]["2026-11-20"]
    assert entry["status"] == "admitted" and entry["admitted_by"] == "alice"
    assert [h["action"] for h in entry["history"]] == ["rejected", "admitted"]
    capsys.readouterr()
    # The same day validated again: its failures are reported, but a person accepted it.
    assert stage.main([]) == 0
    out = capsys.readouterr().out
    assert "was admitted by a person" in out
    report = json.loads((tmp_path / "metrics/validation.json").read_text())
    assert report["status"] == "admitted" and report["rejected_days"] == []
    assert R.load(tmp_path / "data/rejections.json")["days"]["2026-11-20"]["status"] == "admitted"


def test_admit_refuses_a_day_that_is_not_rejected(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert stage.main(["admit", "2026-11-20", "--note", "x"]) == 2
    assert "day 2026-11-20 is not rejected" in capsys.readouterr().err
    assert stage.main(["admit", "20-11-2026", "--note", "x"]) == 2


def test_rerun_that_passes_lifts_validates_own_rejection_only(tmp_path, monkeypatch, good_delta,
                                                             capsys):
    bad = good_delta[good_delta["ts"] < pd.Timestamp("2026-11-20T06:00Z")]
    _setup(tmp_path, monkeypatch, bad)
    assert stage.main([]) == 65
    # The source was fixed and the same run.date re-fetched: the day passes, the rejection goes.
    F.write_delta(tmp_path / "data/delta", good_delta)
    assert stage.main([]) == 0
    assert "2026-11-20" not in R.load(tmp_path / "data/rejections.json")["days"]
    # A person's rejection is not lifted by a passing run.
    capsys.readouterr()
    assert stage.main(["reject", "2026-11-20", "--by", "bob", "--note", "bot storm seen later"]) == 0
    assert "2026-11-20 rejected by bob" in capsys.readouterr().out
    assert stage.main(["status"]) == 0
    assert "2026-11-20  rejected  bob  bot storm seen later" in capsys.readouterr().out
    assert stage.main([]) == 0
    report = json.loads((tmp_path / "metrics/validation.json").read_text())
    assert report["rejected_days"] == ["2026-11-20"]
    assert R.load(tmp_path / "data/rejections.json")["days"]["2026-11-20"]["origin"] == "manual"


def test_warn_severity_reports_without_failing(tmp_path, monkeypatch, good_delta, capsys):
    params = F.default_params(RUN.isoformat())
    params["validate"]["freshness"]["severity"] = "warn"
    bad = good_delta[good_delta["ts"] < pd.Timestamp("2026-11-20T22:30Z")]  # 90 min stale...
    params["validate"]["freshness"]["max_age_minutes"] = 60  # ...over a 60 min limit
    _setup(tmp_path, monkeypatch, bad, params=params)
    assert stage.main([]) == 0
    out = capsys.readouterr().out
    assert "passed with warnings" in out and "[warn] delta.freshness" in out
    report = json.loads((tmp_path / "metrics/validation.json").read_text())
    assert report["status"] == "warned" and report["warned"] == 1 and report["failed"] == 0
    assert R.load(tmp_path / "data/rejections.json")["days"] == {}


def test_window_failure_fails_without_rejecting_a_day(tmp_path, monkeypatch, good_delta, capsys):
    _setup(tmp_path, monkeypatch, good_delta)
    # A damaged history partition: event ids repeated on another day (more than the tolerance).
    old = F.day_events(RUN - dt.timedelta(days=5), n=400)
    old.loc[:99, "event_id"] = good_delta.loc[:99, "event_id"].to_numpy()
    F.write_history(tmp_path / "data/history", old)
    assert stage.main([]) == 65
    err = capsys.readouterr().err
    assert "the training window itself fails" in err and "window.event_id_unique" in err
    assert R.load(tmp_path / "data/rejections.json")["days"] == {}


def test_first_day_rejected_is_one_failure_not_two(tmp_path, monkeypatch, good_delta, capsys):
    """The very first day, rejected, leaves no trusted day in the window: its emptiness is the
    same failure, not a second one ("window.events: observed 0" read as another fault)."""
    bad = good_delta[good_delta["ts"] < pd.Timestamp("2026-11-20T06:00Z")]
    _setup(tmp_path, monkeypatch, bad, history_days=0)  # the very first run: no history before
    assert stage.main([]) == 65
    err = capsys.readouterr().err
    assert "day 2026-11-20 is REJECTED" in err
    assert "window.events" not in err and "holds no trusted event" not in err, err
    assert "training window: not checked (it holds no trusted day besides the rejected one)" \
        in err
    report = json.loads((tmp_path / "metrics/validation.json").read_text())
    assert report["failed"] == len([o for o in report["expectations"].values()
                                    if not o["success"]]) and report["day_rejected"]
    assert not any(name.startswith("window") for name in report["expectations"])


def test_report_reads_offline(tmp_path, monkeypatch, good_delta):
    _setup(tmp_path, monkeypatch, _many(good_delta, event_type="hover"))
    assert stage.main([]) == 65
    page = (tmp_path / "reports/validation/2026-11-21.html").read_text()
    assert "delta.event_types" in page and "hover" in page and "<style>" in page
    # No CDN: nothing is loaded from anywhere (no scripts, no external stylesheets or images).
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert "http://" not in page and "https://" not in page


def test_bad_settings_are_named(tmp_path, monkeypatch, good_delta, capsys):
    params = F.default_params(RUN.isoformat())
    params["validate"]["volume"]["severity"] = "panic"
    _setup(tmp_path, monkeypatch, good_delta, params=params)
    assert stage.main([]) == 2
    assert "validate.volume.severity must be one of ['warn', 'fail'], got 'panic'" in \
        capsys.readouterr().err


def test_great_expectations_is_imported_by_validate_only():
    code = ("import sys; import stages.validate, stages.filter_noise, dailyrec.quality.filtering.rules; "
            "assert 'great_expectations' not in sys.modules, 'imported at module level'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=F.ROOT)


COMPARED = ("suite", "name", "check", "severity", "success", "observed", "expected",
            "unexpected_count", "unexpected_percent", "note")


def _rows(outcomes):
    return [{k: getattr(o, k) for k in COMPARED} for o in outcomes]


def _tolerated(delta):
    """A few bad rows of each kind, under the default tolerances: a day that passes."""
    delta = _with(delta, event_type=(3, "hover"), item_id=(9, "item 12"),
                  ts=(0, pd.Timestamp("2026-11-10T00:00Z")))
    return _with(delta, event_id=(11, delta.loc[10, "event_id"]))


@pytest.mark.parametrize("delta", ["clean", "tolerated", "no trailing days"])
def test_a_passing_delta_is_answered_from_counts_as_great_expectations_answers(cfg, good_delta,
                                                                               delta):
    """validate's daily case: the delta suites from counts, without importing GX (seconds), the
    same outcomes GX gives, field by field (observed values, counts, percents, notes)."""
    frame = _tolerated(good_delta) if delta == "tolerated" else good_delta
    trailing = [] if delta == "no trailing days" else TRAILING
    suites = V.delta_suites(cfg, frame, pd.Series(["ts:future"] * 3, dtype="str"), trailing)
    counted = V.answered(suites, cfg)
    assert counted is not None, "a passing canonical delta is answered from counts"
    assert _rows(counted) == _rows(V.run_suites(suites, cfg))
    if delta == "tolerated":  # the bad rows were counted, not missed
        by_name = {o.name: o for o in counted}
        assert by_name["delta.event_types"].unexpected_count == 1
        assert by_name["delta.event_id_unique"].unexpected_count == 2


@pytest.mark.parametrize("name", sorted(BAD_DELTAS))
def test_a_failing_or_odd_delta_is_left_to_great_expectations(strict, good_delta, name):
    """Any failure (or a delta counts cannot judge: a missing column, another type, a NULL
    key) goes to GX, for its verdict and its example rows."""
    suites = V.delta_suites(strict, BAD_DELTAS[name](good_delta), pd.Series([], dtype="str"),
                            TRAILING)
    assert V.answered(suites, strict) is None
