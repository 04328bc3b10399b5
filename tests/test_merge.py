"""merge_history: the rolling, day-partitioned history (fetch + merge on a real SQLite source)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dailyrec.core import env
from dailyrec.ingest import history as H
from dailyrec.core import schema as S
from dailyrec.core.errors import DataError
from stages import fetch_delta, merge_history
from tests import mini_source as M


@pytest.fixture
def lake(tmp_path):
    """A source database and the places fetch and merge write to."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    M.write(url)

    class Lake:
        source = url
        delta = tmp_path / "delta"
        history = tmp_path / "history"
        archive = tmp_path / "quarantine"

        def run(self, run_date: dt.date, **changes) -> dict:
            """One day of the pipeline: fetch_delta then merge_history."""
            params = M.params(run_date, **changes)
            M.fetch(params, self.source, self.delta)
            keep = params["history"]["days"]
            metrics, resent = H.merge(self.delta / "events.parquet", self.history, run_date, keep,
                                      params["fetch"]["max_late_days"])
            metrics["quarantined"] = H.archive_quarantine(
                self.delta / "quarantine.parquet", self.archive, run_date, keep,
                H.resent_rows(resent))
            return metrics

        def snapshot(self) -> dict[str, str]:
            """Every file of the history and the quarantine archive, by content hash."""
            return {str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()
                    for root in (self.history, self.archive) for p in sorted(root.rglob("*"))
                    if p.is_file()}

        def events(self) -> pd.DataFrame:
            return S.to_frame(H.read_window(self.history, dt.date(2000, 1, 1),
                                            dt.date(2100, 1, 1)))

    return Lake()


def test_late_events_land_once_in_their_own_day(lake):
    first = lake.run(M.RUN1)
    own_file = H.partition_path(lake.history, M.DAY1).read_bytes()
    second = lake.run(M.RUN2)
    assert (first["days"], second["days"]) == (1, 2)
    # DAY1 gets the late web event (legacy 301, read again, is already there)
    assert second["added_by_day"] == {"2026-11-14": 1, "2026-11-15": 12}
    # ... in a file of its own: the file run 1 wrote is untouched (so it is not pushed again)
    assert H.partition_path(lake.history, M.DAY1).read_bytes() == own_file
    arrived = H.partition_files(lake.history, M.DAY1)[1:]
    assert [p.name for p in arrived] == [f"arrived-{M.RUN2.isoformat()}.parquet"]
    assert set(S.to_frame(pq.read_table(arrived[0]))["event_id"]) == {"web_events:w-late"}
    events = lake.events()
    assert events["event_id"].is_unique
    assert (events["event_id"] == "web_events:w-late").sum() == 1
    assert len(events) == second["rows"] == 3 + 14 - 1  # DAY1's 3, DAY2's 14, one overlap
    # every partition holds its own day only, each file sorted by (ts, event_id)
    for day in H.partition_days(lake.history):
        for path in H.partition_files(lake.history, day):
            part = S.to_frame(pq.read_table(path))
            assert (part["ts"].dt.date == day).all()
            assert part.equals(part.sort_values(["ts", "event_id"], ignore_index=True))


def test_the_lookback_overlap_is_absorbed_by_dedup(lake):
    lake.run(M.RUN1)
    second = lake.run(M.RUN2)
    assert second["duplicates_skipped"] == 1  # legacy_clicks' DAY1 event, read by both runs
    legacy = lake.events().query("source == 'legacy_clicks'")
    assert sorted(legacy["user_id"]) == ["301", "302", "303"]


def test_rerunning_a_day_changes_nothing_byte_for_byte(lake):
    lake.run(M.RUN1)
    second = lake.run(M.RUN2)
    before = lake.snapshot()
    again = lake.run(M.RUN2)  # a re-run replaces what the run wrote, with the same rows
    assert (again["added"], again["duplicates_skipped"]) == (13, 1)
    assert again["replaced"] == second["added"] == 13 and again["rows"] == second["rows"]
    older = lake.run(M.RUN1)  # an older day re-run after a newer one
    assert older["added"] == older["replaced"] == 3
    assert lake.snapshot() == before
    assert len(before) == 5  # two days (one with a late arrival) and two quarantine files


def test_an_empty_day_adds_nothing(lake):
    lake.run(M.RUN2)
    before = lake.snapshot()
    metrics = lake.run(dt.date(2026, 11, 25))  # no source rows within the window or lookback
    assert (metrics["added"], metrics["quarantined"], metrics["days"]) == (0, 0, 2)
    assert pq.read_table(lake.delta / "events.parquet").num_rows == 0
    after = lake.snapshot()
    assert after.pop("quarantine/date=2026-11-25.parquet")  # the (empty) day is on record
    assert after == before


def test_an_empty_first_day_gives_an_empty_history(lake):
    metrics = lake.run(dt.date(2026, 12, 1))  # after the source's days: nothing to fetch
    assert (metrics["days"], metrics["rows"], metrics["first_day"]) == (0, 0, None)
    empty = H.read_window(lake.history, M.DAY1, M.DAY2)
    assert empty.num_rows == 0 and empty.schema == S.EVENT_SCHEMA
    assert H.read_window(lake.history, M.DAY1, M.DAY2, columns=["user_id"]).column_names == [
        "user_id"]


def canonical_day(day: dt.date, n: int, prefix: str = "e") -> pa.Table:
    ts = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(range(n), unit="min")
    frame = pd.DataFrame({
        "event_id": [f"{prefix}{day:%m%d}-{i}" for i in range(n)], "user_id": "1", "item_id": "2",
        "event_type": "view", "ts": ts.astype("datetime64[us, UTC]"), "source": "test",
        "user_agent": None, "ip": None})
    return S.to_table(frame)


def test_partitions_older_than_history_days_are_removed(lake):
    for offset in range(1, 15):  # 2026-11-01 .. 2026-11-14
        day = dt.date(2026, 11, offset)
        H.partition_path(lake.history, day).parent.mkdir(parents=True)
        pq.write_table(canonical_day(day, 3), H.partition_path(lake.history, day))
    lake.archive.mkdir()
    for day in ("2026-11-01", "2026-11-12", "2026-11-13"):
        pq.write_table(S.QUARANTINE_SCHEMA.empty_table(), lake.archive / f"date={day}.parquet")

    metrics = lake.run(M.RUN2, **{"history.days": 3})
    # run 2026-11-16 keeps the 3 days before it: 11-13, 11-14, 11-15
    assert H.partition_days(lake.history) == [dt.date(2026, 11, 13), dt.date(2026, 11, 14),
                                              dt.date(2026, 11, 15)]
    assert metrics["partitions_removed"] == [f"2026-11-{d:02d}" for d in range(1, 13)]
    assert (metrics["days"], metrics["first_day"], metrics["last_day"]) == (
        3, "2026-11-13", "2026-11-15")
    assert sorted(p.name for p in lake.archive.iterdir()) == [
        "date=2026-11-13.parquet", "date=2026-11-16.parquet"]
    assert metrics["rows"] == sum(pq.ParquetFile(p).metadata.num_rows
                                  for d in H.partition_days(lake.history)
                                  for p in H.partition_files(lake.history, d))


def test_ancient_events_are_quarantined_and_never_resurrected(lake):
    # legacy 301 (2026-11-14 08:00) is older than a 1-day history for run 2026-11-16.
    metrics = lake.run(M.RUN2, **{"history.days": 1})
    quarantine = pq.read_table(lake.delta / "quarantine.parquet").to_pandas()
    too_old = quarantine[quarantine["reason"] == "ts:too_old"]
    assert set(too_old["source"]) == {"web_events", "legacy_clicks"}
    assert H.partition_days(lake.history) == [M.DAY2]
    assert metrics["added_by_day"] == {"2026-11-15": 12}

    # A delta that still holds an old event (written by an older version, say): merge skips it.
    stale = pa.concat_tables([canonical_day(dt.date(2026, 11, 1), 2, "old"),
                              canonical_day(M.DAY2, 2, "new")])
    pq.write_table(stale, lake.delta / "events.parquet")
    metrics, _ = H.merge(lake.delta / "events.parquet", lake.history, M.RUN2, 1)
    assert metrics["added_by_day"] == {"2026-11-15": 2}
    assert H.partition_days(lake.history) == [M.DAY2]


def merge_table(history, table: pa.Table, run: dt.date, dedupe_days: int = 3):
    delta = history.parent / f"delta-{run}.parquet"
    pq.write_table(table, delta)
    return H.merge(delta, history, run, 365, dedupe_days)


def test_another_runs_rows_win_over_a_changed_copy_of_the_same_event(tmp_path):
    day = dt.date(2026, 11, 15)
    history = tmp_path / "history"
    original = canonical_day(day, 2)
    run = day + dt.timedelta(days=1)
    merge_table(history, original, run)
    changed = S.to_frame(original).assign(item_id="changed")
    counts, _ = merge_table(history, S.to_table(changed), run + dt.timedelta(days=1))
    assert (counts["added"], counts["duplicates_skipped"]) == (0, 2)
    assert pq.read_table(H.partition_path(history, day)).equals(original)


def test_a_rerun_replaces_what_the_run_wrote(tmp_path):
    """A day rejected with 1,000 bot-inflated events, re-fetched after the source was fixed with
    100: none of the 1,000 stay in the history, or training would see the bots."""
    day = dt.date(2026, 11, 15)
    history = tmp_path / "history"
    run = day + dt.timedelta(days=1)
    late = canonical_day(day - dt.timedelta(days=1), 5, "late")  # the run's arrivals, older day
    merge_table(history, pa.concat_tables([canonical_day(day, 1000, "bot"), late]), run)
    assert H.partition_rows(history, day) == 1000
    counts, _ = merge_table(history, canonical_day(day, 100, "fixed"), run)
    assert counts["replaced"] == 1005 and counts["added"] == 100
    ids = set(pq.read_table(H.partition_path(history, day))["event_id"].to_pylist())
    assert len(ids) == 100 and all(i.startswith("fixed") for i in ids)
    assert H.run_files(history, run) == [H.partition_path(history, day)]  # the arrivals went too


def test_an_event_resent_on_a_later_day_is_quarantined_once(tmp_path):
    """A producer's retry with a new timestamp: the first copy stays, the re-send is quarantined
    as event_id:resent, so the window never holds one event id twice."""
    history = tmp_path / "history"
    day1, day2 = dt.date(2026, 11, 14), dt.date(2026, 11, 15)
    first = canonical_day(day1, 3, "e")
    merge_table(history, first, day1 + dt.timedelta(days=1))
    retry = S.to_frame(first.slice(0, 1)).assign(ts=pd.Timestamp("2026-11-15T03:00Z"))
    counts, resent = merge_table(history, pa.concat_tables([S.to_table(retry),
                                                            canonical_day(day2, 2, "n")]),
                                 day2 + dt.timedelta(days=1))
    assert (counts["added"], counts["resent"]) == (2, 1)
    assert resent["event_id"].to_pylist() == first["event_id"].to_pylist()[:1]
    rows = H.resent_rows(resent)
    assert rows["reason"].tolist() == ["event_id:resent"] and rows["field"].tolist() == ["event_id"]
    window = H.read_window(history, day1, day2)
    assert window.num_rows == 5 and len(set(window["event_id"].to_pylist())) == 5
    # Beyond the dedupe horizon (fetch.max_late_days) the old copy is not looked for.
    counts, _ = merge_table(history, S.to_table(retry), day2 + dt.timedelta(days=1), 0)
    assert counts["resent"] == 0


def test_a_stray_folder_in_the_history_is_a_clear_error(tmp_path):
    (tmp_path / "day=yesterday").mkdir()
    with pytest.raises(DataError, match="day=yesterday.*not a day partition"):
        H.partition_days(tmp_path)


def test_the_stage_writes_its_metrics_and_needs_a_delta(lake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps(M.params(M.RUN2)))
    assert merge_history.main(["--params", "params.yaml"]) == 2
    assert "data/delta/events.parquet not found: run fetch_delta first" in capsys.readouterr().err

    monkeypatch.setenv(env.SOURCE_URL, lake.source)
    assert fetch_delta.main(["--params", "params.yaml"]) == 0
    assert merge_history.main(["--params", "params.yaml"]) == 0
    metrics = json.loads((tmp_path / "metrics/history.json").read_text())
    assert (metrics["days"], metrics["rows"], metrics["quarantined"]) == (2, 14, 14)
    assert (tmp_path / "data/quarantine/date=2026-11-16.parquet").exists()


def test_a_run_that_would_age_out_much_of_the_history_is_refused(lake, tmp_path, monkeypatch,
                                                                 capsys):
    """A run.date far ahead or a history.days cut short would delete most of the history (and
    DVC would record, then collect, the loss): refused before anything changes."""
    monkeypatch.chdir(tmp_path)
    history = tmp_path / "data" / "history"
    for offset in range(1, 15):  # 2026-11-01 .. 2026-11-14, 3 events each
        day = dt.date(2026, 11, offset)
        H.partition_path(history, day).parent.mkdir(parents=True)
        pq.write_table(canonical_day(day, 3), H.partition_path(history, day))
    before = sorted((p.name, p.parent.name) for p in history.rglob("*.parquet"))
    monkeypatch.setenv(env.SOURCE_URL, lake.source)
    (tmp_path / "params.yaml").write_text(json.dumps(M.params(M.RUN2, **{"history.days": 3})))
    assert fetch_delta.main(["--params", "params.yaml"]) == 0
    capsys.readouterr()
    assert merge_history.main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert ("would remove 12 of 14 history days (2026-11-01..2026-11-12: 36 of 42 events, 86%), "
            "more than history.max_removed_share (0.1); nothing was changed") in err, err
    assert sorted((p.name, p.parent.name) for p in history.rglob("*.parquet")) == before
    assert not (tmp_path / "metrics" / "history.json").exists()

    allowed = M.params(M.RUN2, **{"history.days": 3, "history.max_removed_share": 1})
    (tmp_path / "params.yaml").write_text(json.dumps(allowed))
    assert merge_history.main(["--params", "params.yaml"]) == 0
    assert H.partition_days(history)[0] == dt.date(2026, 11, 13)


def test_a_future_run_date_is_refused_by_every_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ahead = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=2)
    (tmp_path / "params.yaml").write_text(json.dumps(M.params(ahead)))
    for stage in (fetch_delta, merge_history):
        assert stage.main(["--params", "params.yaml"]) == 2
        assert f"run.date {ahead} is in the future" in capsys.readouterr().err
