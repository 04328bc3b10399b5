"""fetch_delta against real databases: SQLite files and a PostgreSQL server started by the tests.

The hand-written source (tests/mini_source.py) pins every row's fate; the simulator's output checks
that both dialects read a realistic messy log identically.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from dailyrec.core import env
from dailyrec.core import schema as S
from dailyrec.core.errors import ConfigError
from stages import fetch_delta as stage
from tools import simulate
from tests import mini_source as M
from tests.mini_source import fetch


@pytest.fixture(params=["sqlite", "postgres"])
def source_url(request, tmp_path):
    """The mini production database, in a SQLite file or in the test PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
    else:
        url = request.getfixturevalue("postgres").url
    M.write(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'source.db'}"
    M.write(url)
    return url


def read_delta(out_dir):
    return pq.read_table(out_dir / "events.parquet"), pq.read_table(out_dir / "quarantine.parquet")


def comparable(events: pd.DataFrame) -> list[tuple]:
    """(event_id or None when derived, user, item, type, ts, source), in EXPECTED_DAY2's form."""
    own = [None if derived else e for e, derived in
           zip(events["event_id"], events["event_id"].str.fullmatch(r"h[0-9a-f]{16}"))]
    rows = zip(own, events["user_id"], events["item_id"], events["event_type"],
               [t.to_pydatetime() for t in events["ts"]], events["source"])
    return sorted(rows, key=repr)


def test_fetch_normalises_every_table_into_the_canonical_schema(source_url, tmp_path):
    metrics = fetch(M.params(M.RUN2), source_url, tmp_path / "delta")
    events, quarantine = read_delta(tmp_path / "delta")

    assert events.schema == S.EVENT_SCHEMA
    frame = S.to_frame(events)
    assert comparable(frame) == sorted(M.EXPECTED_DAY2, key=repr)
    assert frame["event_id"].is_unique
    web = frame[frame["event_id"] == "web_events:w-z"].iloc[0]
    assert (web.user_agent, web.ip) == (M.UA, "81.2.3.4")
    no_ua = frame[frame["user_id"] == "108"].iloc[0]
    assert pd.isna(no_ua.user_agent) and pd.isna(no_ua.ip)  # blank and NULL optionals -> null
    assert frame.loc[frame["source"] == "legacy_clicks", "user_agent"].isna().all()

    assert quarantine.schema.names == S.QUARANTINE_SCHEMA.names
    assert metrics["quarantined_by_reason"] == M.QUARANTINE_DAY2
    assert (metrics["fetched"], metrics["kept"], metrics["quarantined"], metrics["duplicates"]) == (
        30, 14, 14, 2)
    tables = metrics["tables"]
    assert {name: (t["fetched"], t["kept"], t["quarantined"], t["duplicates"])
            for name, t in tables.items()} == {
        "web_events": (20, 8, 11, 1), "app_events": (6, 3, 3, 0), "legacy_clicks": (4, 3, 0, 1)}
    assert tables["web_events"]["columns"]["user_id"] == "userId"
    assert metrics["window"] == {"start": "2026-11-15T00:00:00+00:00",
                                 "end": "2026-11-16T00:00:00+00:00"}


def test_quarantine_records_field_value_and_raw_row_and_metrics_count_them(
        sqlite_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(env.SOURCE_URL, sqlite_url)
    (tmp_path / "params.yaml").write_text(json.dumps(M.params(M.RUN2)))  # JSON is YAML
    assert stage.main(["--params", "params.yaml"]) == 0

    metrics = json.loads((tmp_path / "metrics/fetch.json").read_text())
    assert metrics["quarantined_by_reason"] == M.QUARANTINE_DAY2
    quarantine = pq.read_table(tmp_path / "data/delta/quarantine.parquet").to_pandas()
    assert quarantine["reason"].value_counts().to_dict() == M.QUARANTINE_DAY2
    assert (quarantine["reason"].str.split(":").str[0] == quarantine["field"]).all()

    def one(reason, source="web_events"):
        rows = quarantine[(quarantine["reason"] == reason) & (quarantine["source"] == source)]
        return rows.iloc[0]

    assert one("user_id:invalid").value == "<script>alert(1)</script>"
    assert one("user_id:invalid", "app_events").value == "-1"
    assert one("event_type:unknown").value == "hover"
    assert one("ts:unparseable").value == "not a date"
    assert one("ts:future").value == "2056-11-15T14:00:00Z"
    assert one("ts:too_old").value == "2001-01-01T00:00:00Z"
    assert pd.isna(one("ts:missing").value)
    raw = json.loads(one("item_id:invalid").raw)
    assert raw["event_uuid"] == "q-item-bad" and raw["productId"] == "item 1"
    assert (tmp_path / "data/delta/events.parquet").exists()


def test_write_time_window_fetches_a_late_event_once_with_its_own_event_time(sqlite_url,
                                                                           tmp_path):
    first = S.to_frame(pq.read_table(_fetch(sqlite_url, M.RUN1, tmp_path / "d1")))
    second = S.to_frame(pq.read_table(_fetch(sqlite_url, M.RUN2, tmp_path / "d2")))

    web_ids = lambda frame: set(frame.loc[frame["source"] == "web_events", "event_id"])  # noqa
    assert web_ids(first) == {"web_events:w-day1"}
    assert "web_events:w-late" in web_ids(second)
    late = second[second["event_id"] == "web_events:w-late"].iloc[0]
    assert late.ts.to_pydatetime() == M.at(M.DAY1, 23, 30)  # its own time, not the write time
    # app_events also windows on write time: each event in exactly one day's delta.
    app = lambda frame: set(frame.loc[frame["source"] == "app_events", "user_id"])  # noqa
    assert app(first) == {"201"} and app(second) == {"202", "203", "204"}


def test_event_time_lookback_reads_recent_days_again(sqlite_url, tmp_path):
    first = S.to_frame(pq.read_table(_fetch(sqlite_url, M.RUN1, tmp_path / "d1")))
    second = S.to_frame(pq.read_table(_fetch(sqlite_url, M.RUN2, tmp_path / "d2")))
    legacy = lambda frame: frame[frame["source"] == "legacy_clicks"]  # noqa
    assert set(legacy(first)["user_id"]) == {"301"}
    assert set(legacy(second)["user_id"]) == {"301", "302", "303"}  # 301 again; 304 too old
    overlap = set(legacy(first)["event_id"]) & set(legacy(second)["event_id"])
    assert len(overlap) == 1  # the same derived id both times: merge deduplicates it

    no_lookback = M.params(M.RUN2, **{"source.tables.legacy_clicks.lookback_days": 0})
    fetch(no_lookback, sqlite_url, tmp_path / "d3")
    third = S.to_frame(pq.read_table(tmp_path / "d3/events.parquet"))
    assert set(legacy(third)["user_id"]) == {"302", "303"}


def test_small_chunks_give_the_same_delta(sqlite_url, tmp_path):
    whole = pq.read_table(_fetch(sqlite_url, M.RUN2, tmp_path / "whole"))
    small = M.params(M.RUN2, **{"source.chunk_rows": 3})
    metrics = fetch(small, sqlite_url, tmp_path / "small")
    assert pq.read_table(tmp_path / "small/events.parquet").equals(whole)
    assert metrics["duplicates"] == 2  # duplicates found across chunk boundaries too


def test_an_empty_day_gives_an_empty_delta(source_url, tmp_path):
    metrics = fetch(M.params(dt.date(2026, 12, 1)), source_url, tmp_path / "delta")
    events, quarantine = read_delta(tmp_path / "delta")
    assert events.num_rows == 0 and events.schema == S.EVENT_SCHEMA
    assert quarantine.num_rows == 0 and quarantine.schema.names == S.QUARANTINE_SCHEMA.names
    assert (metrics["fetched"], metrics["kept"], metrics["quarantined"]) == (0, 0, 0)
    assert metrics["quarantined_by_reason"] == {}
    assert set(metrics["tables"]) == set(M.TABLES)


def test_reserved_words_as_table_and_column_names_are_quoted(source_url, tmp_path):
    # A table called "order" with columns "user", "item", "type", "time": SQL keywords, found
    # by alias and quoted by the dialect, never pasted into the SQL text.
    engine = sa.create_engine(source_url)
    written = M.at(M.DAY2, 10)
    with engine.begin() as conn:
        pd.DataFrame({"user": ["u1", "u2"], "item": ["i1", "i2"], "type": ["view", "click"],
                      "time": ["2026-11-15T10:00:00Z", "2026-11-15T11:00:00Z"],
                      "written": [M.ms(written), M.ms(written - dt.timedelta(days=3))]}
                     ).to_sql("order", conn, if_exists="replace", index=False)
    engine.dispose()
    params = M.params(M.RUN2, **{"source.tables": {
        "order": {"window_column": "written", "window_format": "epoch_ms"}}})
    metrics = fetch(params, source_url, tmp_path / "delta")
    events = S.to_frame(pq.read_table(tmp_path / "delta/events.parquet"))
    assert list(events["user_id"]) == ["u1"] and list(events["source"]) == ["order"]
    assert metrics["tables"]["order"]["columns"] == {
        "user_id": "user", "item_id": "item", "event_type": "type", "ts": "time"}


def simulated_log(postgres, tmp_path, **size) -> str:
    """The simulator's messy log, the same rows in a SQLite file and in the PostgreSQL server;
    returns the SQLite URL."""
    sqlite_url = f"sqlite:///{tmp_path / 'sim.db'}"
    for url in (sqlite_url, postgres.url):
        simulate.write(url, start=dt.date(2026, 11, 14), days=2, **size)
    return sqlite_url


def counts(metrics: dict) -> dict:
    """fetch's totals and counts by reason, less the per-table block."""
    return {k: v for k, v in metrics.items() if k != "tables"}


def test_postgres_and_sqlite_read_the_simulated_log_identically(postgres, tmp_path):
    """A realistic messy log (the simulator, tiny) through both dialects: same delta, same
    counts, and every kind of mess the simulator writes is caught."""
    sqlite_url = simulated_log(postgres, tmp_path, seed=3, users=200, items=80, events_per_day=300)
    params = M.params(M.RUN2)
    from_sqlite = fetch(params, sqlite_url, tmp_path / "lite")
    from_postgres = fetch(params, postgres.url, tmp_path / "pg")
    assert counts(from_postgres) == counts(from_sqlite)
    lite, pg = (S.to_frame(pq.read_table(tmp_path / d / "events.parquet")).sort_values(
        "event_id", ignore_index=True) for d in ("lite", "pg"))
    pd.testing.assert_frame_equal(pg, lite)
    assert_same_quarantine(tmp_path / "pg", tmp_path / "lite")
    assert from_sqlite["kept"] > 1000
    assert {"user_id:missing", "user_id:invalid", "item_id:missing", "event_type:unknown",
            "ts:future", "ts:unparseable"} <= set(from_sqlite["quarantined_by_reason"])
    assert from_sqlite["duplicates"] > 0
    assert lite["event_type"].isin(S.EVENT_TYPES).all()
    assert lite["ts"].min() >= pd.Timestamp("2026-11-14", tz="UTC")  # late events included
    assert lite["ts"].max() < pd.Timestamp("2026-11-16 00:10", tz="UTC")


def sorted_rows(path) -> pd.DataFrame:
    frame = pq.read_table(path).to_pandas()
    return frame.sort_values(list(frame.columns), ignore_index=True)


def assert_same_quarantine(left, right):
    """The same quarantined rows (source, reason, field, value and the raw row as JSON)."""
    pd.testing.assert_frame_equal(sorted_rows(left / "quarantine.parquet"),
                                  sorted_rows(right / "quarantine.parquet"))


@pytest.mark.slow
def test_postgres_read_in_many_small_batches_gives_what_sqlite_gives(postgres, tmp_path,
                                                                     monkeypatch):
    """With Arrow batches of a few rows from PostgreSQL (many chunks: ids repeated across them)
    the delta, the quarantine and every count are SQLite's."""
    from dailyrec.ingest import database

    sqlite_url = simulated_log(postgres, tmp_path, seed=5, users=150, items=60, events_per_day=250)
    params = M.params(M.RUN2)
    from_sqlite = fetch(params, sqlite_url, tmp_path / "lite")
    monkeypatch.setattr(database, "ADBC_BATCH_BYTES", 2048)
    from_postgres = fetch(params, postgres.url, tmp_path / "pg")
    assert counts(from_postgres) == counts(from_sqlite)
    assert from_sqlite["quarantined"] > 0 and from_sqlite["duplicates"] > 0
    pd.testing.assert_frame_equal(sorted_rows(tmp_path / "pg" / "events.parquet"),
                                  sorted_rows(tmp_path / "lite" / "events.parquet"))
    assert_same_quarantine(tmp_path / "pg", tmp_path / "lite")


def test_seen_ids_marks_first_rows_fresh_and_repeats_with_other_content_conflicts():
    """SeenIds, batch by batch, against the whole day at once in pandas: an id's first row is
    fresh, a later row with its content a duplicate, with other content a conflict."""
    from dailyrec.ingest import source

    rng = np.random.default_rng(3)
    ids = rng.integers(0, 3_000, 20_000).astype(str)
    contents = rng.integers(0, 2, 20_000).astype(np.uint64)  # repeats agree about half the time
    seen, fresh, conflict = source.SeenIds(), [], []
    for lo in range(0, len(ids), 1_700):  # batches that split repeats across them
        f, c = seen.add(pa.array(ids[lo:lo + 1_700]), contents[lo:lo + 1_700])
        fresh.append(f)
        conflict.append(c)
    frame = pd.DataFrame({"id": ids, "content": contents})
    first = ~frame["id"].duplicated()
    earlier = frame.groupby("id")["content"].transform("first")
    np.testing.assert_array_equal(np.concatenate(fresh), first.to_numpy())
    np.testing.assert_array_equal(np.concatenate(conflict),
                                  (~first & (frame["content"] != earlier)).to_numpy())
    assert len(seen.hashes) == frame["id"].nunique()
    assert np.all(seen.hashes[1:] > seen.hashes[:-1])  # sorted, each id once


# --- errors: clear, naming the table and column ------------------------------------------------

def test_a_missing_table_is_a_clear_error(sqlite_url, tmp_path):
    params = M.params(M.RUN2, **{"source.tables.clickstream": {
        "window_column": "written", "window_format": "epoch_ms"}})
    with pytest.raises(ConfigError, match="source table 'clickstream' does not exist"):
        fetch(params, sqlite_url, tmp_path / "delta")


def test_an_unmappable_or_misnamed_column_is_a_clear_error(sqlite_url, tmp_path):
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        pd.DataFrame({"visitor": ["u"], "product": ["i"], "verb": ["view"], "ts": [1],
                      "written": [1]}).to_sql("partner", conn, index=False)
    engine.dispose()
    table = {"window_column": "written", "window_format": "epoch_s"}
    with pytest.raises(ConfigError) as err:
        fetch(M.params(M.RUN2, **{"source.tables": {"partner": table}}), sqlite_url,
              tmp_path / "delta")
    assert "table 'partner'" in str(err.value) and "event_type" in str(err.value)
    assert "verb" in str(err.value)  # lists the columns it has

    wrong = {**table, "columns": {"event_type": "action"}}
    with pytest.raises(ConfigError, match="column 'action'.*does not exist"):
        fetch(M.params(M.RUN2, **{"source.tables": {"partner": wrong}}), sqlite_url,
              tmp_path / "delta")
    no_window = {**table, "window_column": "ingested"}
    with pytest.raises(ConfigError, match="window column 'ingested' does not exist"):
        fetch(M.params(M.RUN2, **{"source.tables": {"partner": no_window}}), sqlite_url,
              tmp_path / "delta")


WEB = {"window_column": "ingested_at", "window_format": "epoch_ms"}
BAD_CONFIG = {
    "hostile table": ({"events; DROP TABLE x": WEB},
                      "source.tables.events; DROP TABLE x must be a plain SQL identifier"),
    "hostile column": ({"web_events": {**WEB, "columns": {"user_id": 'a"b'}}},
                       "must be a plain SQL identifier (letters, digits and _ only, not starting "
                       "with a digit), got 'a\"b'"),
    "unknown window format": ({"web_events": {**WEB, "window_format": "iso"}},
                              "source.tables.web_events.window_format must be one of"),
    "missing table": ({"nowhere": WEB}, "source table 'nowhere' does not exist"),
    "unmappable column": ({"sim_truth": {"window_column": "seed", "window_format": "epoch_s"}},
                          "table 'sim_truth': no column found for ['item_id', 'event_type', 'ts']"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_the_stage_reports_bad_config_in_one_line_with_exit_status_2(sqlite_url, tmp_path,
                                                                    monkeypatch, capsys, case):
    tables, expected = BAD_CONFIG[case]
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:  # a real table that lacks most canonical fields
        pd.DataFrame({"user_id": ["1"], "seed": [1]}).to_sql("sim_truth", conn, index=False)
    engine.dispose()
    url = sqlite_url
    (tmp_path / "params.yaml").write_text(json.dumps(M.params(M.RUN2, **{"source.tables": tables})))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(env.SOURCE_URL, url)
    assert stage.main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fetch_delta: error: "), err
    assert expected in lines[0]
    assert not (tmp_path / "metrics").exists()


def test_an_unreachable_database_is_a_service_fault_with_exit_status_69(tmp_path, monkeypatch,
                                                                      capsys):
    """Worth retrying later, unlike bad configuration (docs/operations.md)."""
    (tmp_path / "params.yaml").write_text(json.dumps(M.params(M.RUN2)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(env.SOURCE_URL, f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    assert stage.main(["--params", "params.yaml"]) == 69
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fetch_delta: error: cannot read the source "
                                                   "database"), lines
    assert not (tmp_path / "metrics").exists()


def test_the_cli_exits_2_with_one_line_and_no_traceback(sqlite_url, tmp_path):
    params = M.params(M.RUN2, **{"source.tables": {"events; DROP TABLE x": WEB}})
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    child = {**os.environ, env.SOURCE_URL: sqlite_url, "PYTHONPATH": str(M.ROOT)}
    proc = subprocess.run([sys.executable, "-m", "stages.fetch_delta"], cwd=tmp_path, env=child,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("fetch_delta: error: params.yaml: source.tables."
                                  "events; DROP TABLE x must be a plain SQL identifier")
    tables = sa.inspect(sa.create_engine(sqlite_url)).get_table_names()
    assert set(M.TABLES) <= set(tables)


def _fetch(url, run_date, out_dir):
    fetch(M.params(run_date), url, out_dir)
    return out_dir / "events.parquet"


# --- the source database failing mid-run: exit 69, retried the next night; data/delta untouched ---

STREAMED = "stream_events"
STREAMED_ROWS = 100_000  # ~100 MB of COPY output with its 1 KB user agents: more than the
# socket buffers and the chunks read ahead hold, so the read is still going when it is cut
READERS = ["adbc", "sqlalchemy"]  # PostgreSQL through ADBC (the default) or psycopg


@pytest.fixture(scope="module")
def fault_db(postgres):
    """A database of its own in the test server (terminating its backends touches no other
    test), holding STREAMED: every row on DAY2, so RUN1 fetches nothing and RUN2 all of it."""
    admin = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("DROP DATABASE IF EXISTS faults WITH (FORCE)")
        conn.exec_driver_sql("CREATE DATABASE faults")
    url = sa.make_url(postgres.url).set(database="faults").render_as_string(False)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {STREAMED} AS SELECT g::text AS user_id, (g %% 500)::text AS item_id, "
            f"'view'::text AS event_type, {M.ms(M.at(M.DAY2, 1))}::bigint + g AS ts, "
            f"repeat('x', 1000) AS user_agent FROM generate_series(1, {STREAMED_ROWS}) g")
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql("DROP DATABASE faults WITH (FORCE)")
    admin.dispose()


def use_reader(reader: str, monkeypatch) -> None:
    from dailyrec.ingest import database

    if reader == "sqlalchemy":  # as without the optional ADBC driver
        monkeypatch.setattr(database, "_adbc_postgresql", lambda: None)
    else:  # small Arrow batches: many chunks
        monkeypatch.setattr(database, "ADBC_BATCH_BYTES", 65536)


def streamed_params(run_date, **changes) -> dict:
    return M.params(run_date, **{"source.tables": {STREAMED: {
        "window_column": "ts", "window_format": "epoch_ms"}}, "source.chunk_rows": 500,
        **changes})


def run_fetch_stage(tmp_path, monkeypatch, capsys, url: str, params: dict) -> tuple[int, str]:
    """fetch_delta as the runner starts it, in tmp_path: (exit status, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(env.SOURCE_URL, url)
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    code = stage.main(["--params", "params.yaml"])
    return code, capsys.readouterr().err


def files_under(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fetch_delta: error: "), err
    return lines[0]


@pytest.mark.parametrize("reader", READERS)
def test_a_connection_dropped_mid_read_is_a_service_fault_and_leaves_the_delta_as_it_was(
        fault_db, reader, tmp_path, monkeypatch, capsys):
    """The backend reading the table is terminated from a second connection (as a failover or
    an operator's pg_terminate_backend does) once the first chunk has arrived: exit 69 with one
    line naming the table, and data/delta exactly as the run before left it, no temp file."""
    from dailyrec.ingest import source

    use_reader(reader, monkeypatch)
    assert run_fetch_stage(tmp_path, monkeypatch, capsys, fault_db,
                           streamed_params(M.RUN1))[0] == 0
    before = files_under(tmp_path / "data")
    assert set(before) == {"delta/events.parquet", "delta/quarantine.parquet"}

    admin = sa.create_engine(fault_db.replace("/faults", "/postgres"),
                             isolation_level="AUTOCOMMIT")
    terminated: list[list[bool]] = []
    normalise = source.normalise_table

    def terminate_on_first_chunk(*args, **kwargs):
        if not terminated:
            with admin.connect() as conn:  # waits (up to 10 s) until each backend has exited
                terminated.append(conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                    "WHERE datname = 'faults' AND backend_type = 'client backend'"
                ).scalars().all())
        return normalise(*args, **kwargs)

    monkeypatch.setattr(source, "normalise_table", terminate_on_first_chunk)
    code, err = run_fetch_stage(tmp_path, monkeypatch, capsys, fault_db, streamed_params(M.RUN2))
    admin.dispose()

    assert terminated and terminated[0] and all(terminated[0])  # cut while reading
    assert code == 69, err
    line = one_error_line(err)
    assert line.startswith("fetch_delta: error: cannot read the source database: reading table "
                           f"'{STREAMED}' broke off midway: "), line
    assert line.endswith("the next run retries")
    assert files_under(tmp_path / "data") == before  # nothing half-written, nothing left over
    assert not (tmp_path / "metrics" / "fetch.json").read_text().count(M.RUN2.isoformat())


@pytest.mark.timeout(120, method="thread")  # before source.timeout_seconds: hung for ever
@pytest.mark.parametrize("reader", READERS)
def test_a_query_held_up_by_a_lock_ends_as_a_service_fault_after_the_timeout(
        fault_db, reader, tmp_path, monkeypatch, capsys):
    """Another transaction holds a lock the read needs (a migration, a long ALTER): the query
    is cancelled after source.timeout_seconds, exit 69 naming the table and the setting."""
    use_reader(reader, monkeypatch)
    engine = sa.create_engine(fault_db)
    with engine.connect() as holder:
        holder.exec_driver_sql(f"LOCK TABLE {STREAMED} IN ACCESS EXCLUSIVE MODE")
        code, err = run_fetch_stage(tmp_path, monkeypatch, capsys, fault_db,
                                    streamed_params(M.RUN2, **{"source.timeout_seconds": 1}))
        holder.rollback()
    engine.dispose()
    assert code == 69, err
    line = one_error_line(err)
    assert f"table '{STREAMED}' took longer than source.timeout_seconds (1 s)" in line, line
    assert "statement timeout" in line
    assert not list(tmp_path.glob("data/**/*")) and not (tmp_path / "metrics").exists()


@pytest.mark.timeout(120, method="thread")
def test_a_server_that_accepts_but_never_answers_ends_after_the_connect_timeout(
        tmp_path, monkeypatch, capsys):
    """A listening socket that never speaks (a hung server, a half-open proxy): libpq gives up
    after source.timeout_seconds."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql+psycopg://reader@127.0.0.1:{silent.getsockname()[1]}/shop"
        code, err = run_fetch_stage(tmp_path, monkeypatch, capsys, url,
                                    M.params(M.RUN2, **{"source.timeout_seconds": 2}))
    assert code == 69, err
    line = one_error_line(err)
    assert "took longer than source.timeout_seconds (2 s)" in line, line
    assert "table 'web_events'" in line


@pytest.mark.timeout(120, method="thread")
def test_a_locked_sqlite_file_ends_after_the_busy_timeout(sqlite_url, tmp_path, monkeypatch,
                                                          capsys):
    import sqlite3

    writer = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        code, err = run_fetch_stage(tmp_path, monkeypatch, capsys, sqlite_url,
                                    M.params(M.RUN2, **{"source.timeout_seconds": 1}))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert code == 69, err
    line = one_error_line(err)
    assert "table 'web_events' took longer than source.timeout_seconds (1 s): database is locked" \
        in line, line


# --- a window column whose type cannot hold the window_format: exit 2 before any query ----------

TYPED = "typed_events"
WINDOW_TYPE_CASES = {
    "text as epoch_ms": ("written_text", "epoch_ms",
                         ["window column 'written_text' is TEXT, which window_format epoch_ms "
                          "cannot read (source.tables.typed_events.window_format); a TEXT "
                          "column fits none of epoch_s, epoch_ms, datetime"]),
    "integer as datetime": ("written_int", "datetime",
                            ["window column 'written_int' is BIGINT, which window_format "
                             "datetime cannot read", "it fits window_format epoch_s or "
                             "epoch_ms"]),
    "timestamp as epoch_s": ("written_at", "epoch_s",
                             ["window column 'written_at' is TIMESTAMP", "it fits "
                              "window_format datetime"]),
}


@pytest.mark.parametrize("case", list(WINDOW_TYPE_CASES))
def test_a_window_column_of_the_wrong_type_is_a_config_error_naming_the_fitting_formats(
        source_url, case, tmp_path, monkeypatch, capsys):
    column, fmt, expected = WINDOW_TYPE_CASES[case]
    engine = sa.create_engine(source_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TYPED}")
        conn.exec_driver_sql(f"CREATE TABLE {TYPED} (user_id TEXT, item_id TEXT, event_type "
                             "TEXT, ts BIGINT, written_text TEXT, written_int BIGINT, "
                             "written_at TIMESTAMP)")
        conn.execute(sa.text(f"INSERT INTO {TYPED} VALUES ('1', '2', 'view', :ms, :text, :ms, "
                             ":at)"), {"ms": M.ms(M.at(M.DAY2, 9)), "text": "1763197200000",
                                       "at": M.at(M.DAY2, 9).replace(tzinfo=None)})
    engine.dispose()
    params = M.params(M.RUN2, **{"source.tables": {TYPED: {
        "window_column": column, "window_format": fmt, "columns": {"ts": "ts"}}}})
    code, err = run_fetch_stage(tmp_path, monkeypatch, capsys, source_url, params)
    assert code == 2, err
    line = one_error_line(err)
    assert f"table '{TYPED}'" in line
    for text in expected:
        assert text in line, line


@pytest.mark.parametrize("reader", READERS)
def test_a_query_the_database_refuses_is_a_config_error_naming_table_and_column(
        postgres, reader, tmp_path, monkeypatch, capsys):
    """A column type SQLAlchemy does not know (here PostgreSQL's point) passes the check before
    the query; the database's refusal is still a config error naming the table and column."""
    use_reader(reader, monkeypatch)
    engine = sa.create_engine(postgres.url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS odd_events")
        conn.exec_driver_sql("CREATE TABLE odd_events (user_id text, item_id text, event_type "
                             "text, ts bigint, written point)")
    engine.dispose()
    params = M.params(M.RUN2, **{"source.tables": {"odd_events": {
        "window_column": "written", "window_format": "epoch_ms"}}})
    with pytest.warns(sa.exc.SAWarning, match="point"):  # reflection: an unknown type
        code, err = run_fetch_stage(tmp_path, monkeypatch, capsys, postgres.url, params)
    assert code == 2, err
    line = one_error_line(err)
    assert "table 'odd_events': the source database refused the query on window column " \
           "'written' (window_format epoch_ms): operator does not exist: point >= " in line, line
    assert "source.tables.odd_events" in line
