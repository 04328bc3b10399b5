"""Real feeds on real databases, as production sends them: exact 64-bit ids, bytes that are not
UTF-8, conflicting duplicates, row-level quarantine, and the three worked examples of
docs/ingestion.md, each created in PostgreSQL under exactly its own names and types and run through
fetch_delta -> merge_history -> validate -> filter_noise -> train."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from dailyrec.core import schema as S
from tests.mini_source import fetch
from tests.params import project_params

RUN = dt.date(2026, 11, 16)  # fetches 2026-11-15
DAY = RUN - dt.timedelta(days=1)
NOON = dt.datetime(2026, 11, 15, 12, tzinfo=dt.timezone.utc)
BIG = 2**53 + 1  # 9007199254740993: the first integer a float64 cannot hold
SNOWFLAKE = 1234567890123456789


def params_for(tables: dict, run: dt.date = RUN, **changes) -> dict:
    return project_params(run.isoformat(), **{"source.tables": tables, **changes})


def read(out_dir):
    return (S.to_frame(pq.read_table(out_dir / "events.parquet")),
            pq.read_table(out_dir / "quarantine.parquet").to_pandas())


# --- ids, bytes and duplicates --------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
    else:
        url = request.getfixturevalue("postgres").url
        engine = sa.create_engine(url)
        with engine.begin() as conn:  # the session-wide server: start each test clean
            for table in ("clicks", "raw_events", "item_views"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()
    return url


def test_big_integer_ids_stay_exact_even_beside_a_null(database, tmp_path):
    """A BIGINT id of 2**53 or more, in a chunk that also holds a NULL id, is read without ever
    passing through float: distinct users stay distinct, text is their exact decimal form."""
    engine = sa.create_engine(database)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE clicks (user_id BIGINT, item_id BIGINT, "
                             "event_type TEXT, ts BIGINT)")
        ms = int(NOON.timestamp() * 1000)
        conn.execute(sa.text("INSERT INTO clicks VALUES (:u, :i, 'view', :t)"), [
            {"u": BIG, "i": SNOWFLAKE, "t": ms}, {"u": BIG - 1, "i": 7, "t": ms + 1},
            {"u": None, "i": 8, "t": ms + 2}, {"u": SNOWFLAKE, "i": BIG, "t": ms + 3}])
    engine.dispose()
    table = {"clicks": {"window_column": "ts", "window_format": "epoch_ms"}}
    counts = fetch(params_for(table), database, tmp_path / "delta")
    events, quarantine = read(tmp_path / "delta")
    assert sorted(events["user_id"]) == sorted([str(BIG), str(BIG - 1), str(SNOWFLAKE)])
    assert set(events["item_id"]) == {str(SNOWFLAKE), "7", str(BIG)}
    assert quarantine["reason"].tolist() == ["user_id:missing"]
    assert counts["fetched"] == counts["kept"] + counts["quarantined"] + counts["duplicates"] == 4


def test_bytes_that_are_not_utf8_are_quarantined_with_the_value_escaped(database, tmp_path):
    """A latin-1 user agent, or a BLOB id, used to stop fetch_delta with UnicodeDecodeError."""
    engine = sa.create_engine(database)
    blob = "BYTEA" if database.startswith("postgresql") else "BLOB"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE raw_events (user_id {blob}, item_id TEXT, "
                             "event_type TEXT, ts BIGINT, agent BYTEA)" if blob == "BYTEA" else
                             "CREATE TABLE raw_events (user_id BLOB, item_id TEXT, event_type "
                             "TEXT, ts INTEGER, agent TEXT)")
    ms = int(NOON.timestamp() * 1000)
    rows = [(b"u1", "i1", "view", ms, b"Mozilla/5.0"),
            (b"u\xe9", "i2", "view", ms + 1, b"Mozilla/5.0"),  # latin-1 id
            (b"u3", "i3", "view", ms + 2, b"caf\xe9 browser")]  # latin-1 user agent
    if blob == "BYTEA":
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO raw_events VALUES (:u, :i, :e, :t, :a)"),
                         [dict(zip("uieta", r)) for r in rows])
    else:  # SQLite TEXT holding bytes that are not UTF-8, as a careless producer writes them
        con = sqlite3.connect(database.removeprefix("sqlite:///"))
        con.executemany("INSERT INTO raw_events VALUES (?, ?, ?, ?, CAST(? AS TEXT))", rows)
        con.commit()
        con.close()
    engine.dispose()
    table = {"raw_events": {"window_column": "ts", "window_format": "epoch_ms",
                            "columns": {"user_agent": "agent"}}}
    counts = fetch(params_for(table), database, tmp_path / "delta")
    events, quarantine = read(tmp_path / "delta")
    assert events["user_id"].tolist() == ["u1"] and events["user_agent"].tolist() == ["Mozilla/5.0"]
    got = dict(zip(quarantine["reason"], quarantine["value"]))
    assert got == {"user_id:not_utf8": "u\\xe9", "user_agent:not_utf8": "caf\\xe9 browser"}
    assert all("\\\\xe9" in raw for raw in quarantine["raw"])  # the raw row keeps it, escaped
    assert (counts["fetched"], counts["kept"], counts["quarantined"]) == (3, 1, 2)


def test_conflicting_duplicates_are_quarantined_identical_ones_counted(tmp_path):
    """Only identical rows are duplicates; a second row with the same source event id and other
    content is quarantined as event_id:conflict, the first kept (fetched = kept + quarantined +
    duplicates, nothing lost)."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    ms = int(NOON.timestamp() * 1000)
    frame = pd.DataFrame({"id": ["a", "a", "b", "b", "c"], "user_id": ["1", "1", "2", "9", "3"],
                          "item_id": ["x", "x", "y", "y", "z"], "event_type": "view",
                          "ts": [ms, ms, ms, ms, ms]})
    engine = sa.create_engine(url)
    frame.to_sql("clicks", engine, index=False)
    engine.dispose()
    table = {"clicks": {"window_column": "ts", "window_format": "epoch_ms",
                        "columns": {"event_id": "id"}}}
    counts = fetch(params_for(table, **{"source.chunk_rows": 2}), url, tmp_path / "delta")
    events, quarantine = read(tmp_path / "delta")
    assert sorted(events["event_id"]) == ["clicks:a", "clicks:b", "clicks:c"]
    assert events.set_index("event_id").loc["clicks:b", "user_id"] == "2"  # the first one wins
    assert quarantine["reason"].tolist() == ["event_id:conflict"]
    assert quarantine["value"].tolist() == ["clicks:b"] and '"user_id":"9"' in quarantine["raw"][0]
    assert (counts["kept"], counts["quarantined"], counts["duplicates"]) == (3, 1, 1)
    assert counts["fetched"] == counts["kept"] + counts["quarantined"] + counts["duplicates"]


def test_row_level_problems_are_quarantined_by_fetch_not_left_to_reject_the_day(tmp_path):
    """One event 8 days late, or one source event id with a space, among 98 good events: fetch
    quarantines that row with its reason and keeps the rest, so validate has nothing to reject."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    ms = int(NOON.timestamp() * 1000)
    frame = pd.DataFrame({"id": [f"e{i}" for i in range(98)] + ["e late", "e99"],
                          "user_id": [str(i % 10) for i in range(100)], "item_id": "x",
                          "event_type": "view", "written": ms,
                          "ts": [ms + i for i in range(99)] + [ms - 8 * 86_400_000]})
    engine = sa.create_engine(url)
    frame.to_sql("clicks", engine, index=False)
    engine.dispose()
    table = {"clicks": {"window_column": "written", "window_format": "epoch_ms",
                        "columns": {"event_id": "id", "ts": "ts"}}}
    counts = fetch(params_for(table), url, tmp_path / "delta")
    _, quarantine = read(tmp_path / "delta")
    assert sorted(quarantine["reason"]) == ["event_id:invalid", "ts:too_late"]
    assert counts["kept"] == 98


def test_a_date_plus_an_offset_is_each_events_time_and_repeat_views_stay_apart(database,
                                                                              tmp_path):
    """A session log whose only time is a date, with each view's offset into its session in
    milliseconds (DIGINETICA's eventdate and timeframe): ts is date + offset, so a session's
    repeat views of an item are distinct events in their order, an identical row is still a
    duplicate, and an offset that is null, negative or not a number is quarantined."""
    engine = sa.create_engine(database)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE item_views (session_id BIGINT, item_id BIGINT, "
                             "timeframe BIGINT, eventdate DATE)")
    rows = [(1, 10, 0), (1, 10, 5_000), (1, 10, 5_000), (1, 11, 20_000), (1, 10, 65_000),
            (2, 10, 1_000), (2, 12, None), (2, 13, -5)]
    if database.startswith("sqlite"):  # SQLite keeps what it is given, whatever the column
        rows.append((2, 14, "abc"))
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO item_views VALUES (:s, :i, :t, :d)"),
                     [{"s": s, "i": i, "t": t, "d": DAY} for s, i, t in rows])
    engine.dispose()
    table = {"item_views": {"window_column": "eventdate", "window_format": "datetime",
                            "event_type": "view", "ts_offset_unit": "ms",
                            "columns": {"user_id": "session_id", "ts": "eventdate",
                                        "ts_offset": "timeframe"}}}
    counts = fetch(params_for(table, **{"source.chunk_rows": 3}), database, tmp_path / "delta")
    events, quarantine = read(tmp_path / "delta")
    midnight = pd.Timestamp(DAY, tz="UTC")
    session = events[events["user_id"] == "1"].sort_values("ts")
    assert session["item_id"].tolist() == ["10", "10", "11", "10"]
    assert (session["ts"] - midnight).dt.total_seconds().tolist() == [0, 5, 20, 65]
    assert session["event_id"].is_unique
    assert events.loc[events["user_id"] == "2", "ts"].tolist() == [midnight + pd.Timedelta(1, "s")]
    invalid = len(rows) - 6
    assert quarantine["reason"].tolist() == ["ts_offset:invalid"] * invalid
    assert set(quarantine["field"]) == {"ts_offset"}
    assert {"-5", "-5.0"} & set(quarantine["value"])  # an integer column with a NULL: float
    assert (counts["kept"], counts["duplicates"], counts["quarantined"]) == (5, 1, invalid)
    assert counts["tables"]["item_views"]["columns"]["ts_offset"] == "timeframe"


# --- the worked examples (docs/ingestion.md) --------------------------------------------------------

def run_stages(root, monkeypatch, url: str, tables: dict, days: list[dt.date], **changes) -> dict:
    """The stages in this process for each day (fetch and merge; on the last day the rest too,
    as the scheduler would), on a params.yaml that names the table (and changes as
    {"dotted.key": value}); returns the last metrics."""
    from stages import fetch_delta, filter_noise, merge_history, train, validate

    monkeypatch.chdir(root)
    monkeypatch.setenv("DAILYREC_SOURCE_URL", url)
    monkeypatch.setenv("DAILYREC_MLFLOW", "off")
    monkeypatch.setenv("DAILYREC_STATE_DIR", str(root / "state"))
    for day in days:
        run = day + dt.timedelta(days=1)
        (root / "params.yaml").write_text(json.dumps(params_for(tables, run, **changes)))
        assert fetch_delta.main([]) == 0
        assert merge_history.main([]) == 0
    for stage in (validate, filter_noise, train):
        assert stage.main([]) == 0, stage.__name__
    return {name: json.loads((root / "metrics" / f"{name}.json").read_text())
            for name in ("fetch", "history", "validation", "filter", "train")}


DAYS = [dt.date(2026, 11, 13) + dt.timedelta(days=k) for k in range(3)]


def _times(rng, day: dt.date, n: int) -> np.ndarray:
    """n event times over the day, the last minutes before midnight included (a fresh feed)."""
    start = pd.Timestamp(day, tz="UTC")
    seconds = np.sort(rng.integers(0, 86_300, n))
    seconds[-1] = 86_390
    return (start + pd.to_timedelta(seconds, unit="s")).to_numpy()


@pytest.fixture
def pg(postgres):
    engine = sa.create_engine(postgres.url)
    with engine.begin() as conn:
        for table in ("events", '"clicks"', "plays", "item_views"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    yield engine
    engine.dispose()


def test_example_an_ecommerce_log(pg, postgres, tmp_path, monkeypatch):
    """event_time timestamptz, event_type text (view, cart, remove_from_cart, purchase),
    product_id bigint, user_id bigint, user_session text."""
    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE events (event_time timestamptz, event_type text, "
                             "product_id bigint, user_id bigint, user_session text)")
    rng = np.random.default_rng(1)
    frames = []
    for day in DAYS:
        n = 1500
        frames.append(pd.DataFrame({
            "event_time": pd.to_datetime(_times(rng, day, n), utc=True),
            "event_type": rng.choice(["view", "cart", "remove_from_cart", "purchase"], n,
                                     p=[0.8, 0.1, 0.05, 0.05]),
            "product_id": 5_000_000_000 + rng.integers(0, 80, n),
            "user_id": 500_000_000_000 + rng.integers(0, 300, n),
            "user_session": [f"s-{k}" for k in rng.integers(0, 900, n)]}))
    pd.concat(frames).to_sql("events", pg, if_exists="append", index=False)
    tables = {"events": {"window_column": "event_time", "window_format": "datetime",
                         "columns": {"item_id": "product_id"},
                         "ignore_event_types": ["remove_from_cart"]}}
    m = run_stages(tmp_path, monkeypatch, postgres.url, tables, DAYS)
    assert m["fetch"]["ignored_by_type"] == {"remove_from_cart": m["fetch"]["ignored"]} and \
        m["fetch"]["ignored"] > 0
    assert m["fetch"]["quarantined"] == 0
    assert m["fetch"]["fetched"] == m["fetch"]["kept"] + m["fetch"]["ignored"] + \
        m["fetch"]["duplicates"]
    assert m["validation"]["status"] == "passed" and m["train"]["users"] > 100
    clean = pq.read_table(tmp_path / "data/clean").to_pandas()
    assert set(clean["event_type"]) == {"view", "add_to_cart", "purchase"}
    assert clean["item_id"].str.fullmatch(r"50000000\d\d").all()


def test_example_a_click_log_without_event_types(pg, postgres, tmp_path, monkeypatch):
    """"SessionId" bigint, "ItemId" bigint, "Time" double precision (epoch seconds with
    decimals); no event type column: the table declares one."""
    with pg.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "clicks" ("SessionId" bigint, "ItemId" bigint, '
                             '"Time" double precision)')
    rng = np.random.default_rng(2)
    frames = []
    for day in DAYS:
        n = 1500
        seconds = pd.DatetimeIndex(_times(rng, day, n)).as_unit("us").asi8 / 1e6
        frames.append(pd.DataFrame({"SessionId": 9_000_000_000 + rng.integers(0, 300, n),
                                    "ItemId": 214_000_000 + rng.integers(0, 80, n),
                                    "Time": seconds + rng.random(n) * 0.999}))
    pd.concat(frames).to_sql("clicks", pg, if_exists="append", index=False)
    tables = {"clicks": {"window_column": "Time", "window_format": "epoch_s",
                         "event_type": "click",
                         "columns": {"user_id": "SessionId", "item_id": "ItemId", "ts": "Time"}}}
    m = run_stages(tmp_path, monkeypatch, postgres.url, tables, DAYS)
    assert m["fetch"]["quarantined"] == 0 and m["fetch"]["kept"] > 1000
    assert m["validation"]["status"] == "passed" and m["train"]["users"] > 100
    clean = pq.read_table(tmp_path / "data/clean").to_pandas()
    assert set(clean["event_type"]) == {"click"}
    assert clean["ts"].dt.microsecond.any()  # the decimals of the seconds are kept


def test_example_a_play_count_table(pg, postgres, tmp_path, monkeypatch):
    """user_id text, artist_id bigint, plays int, updated_at timestamp: plays scale the weight."""
    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE plays (user_id text, artist_id bigint, plays int, "
                             "updated_at timestamp)")
    rng = np.random.default_rng(3)
    frames = []
    for day in DAYS:
        n = 1500
        frames.append(pd.DataFrame({
            "user_id": [f"listener-{k}" for k in rng.integers(0, 300, n)],
            "artist_id": rng.integers(0, 80, n),
            "plays": rng.geometric(0.2, n),
            "updated_at": pd.to_datetime(_times(rng, day, n), utc=True).tz_localize(None)}))
    pd.concat(frames).to_sql("plays", pg, if_exists="append", index=False)
    tables = {"plays": {"window_column": "updated_at", "window_format": "datetime",
                        "event_type": "view",
                        "columns": {"item_id": "artist_id", "quantity": "plays",
                                    "ts": "updated_at"}}}
    m = run_stages(tmp_path, monkeypatch, postgres.url, tables, DAYS)
    assert m["fetch"]["quarantined"] == 0 and m["validation"]["status"] == "passed"
    clean = pq.read_table(tmp_path / "data/clean").to_pandas()
    assert clean["quantity"].min() >= 1 and clean["quantity"].max() > 5
    assert m["train"]["users"] > 100


def test_example_a_session_log_with_a_date_and_an_offset(pg, postgres, tmp_path, monkeypatch):
    """"sessionId" bigint, "userId" bigint (mostly NULL), "itemId" bigint, timeframe bigint
    (milliseconds since the session's first view), eventdate date: each view's ts is its date
    plus its offset, and a session's views keep their order and their repeats."""
    from dailyrec.ingest import history

    with pg.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE item_views ("sessionId" bigint, "userId" bigint, '
                             '"itemId" bigint, timeframe bigint, eventdate date)')
    rng = np.random.default_rng(4)
    frames = []
    for k, day in enumerate(DAYS):
        n = 1500
        frames.append(pd.DataFrame({
            "sessionId": 1 + k * 1000 + rng.integers(0, 400, n),
            "userId": np.where(rng.random(n) < 0.1, rng.integers(1, 50, n), None),
            "itemId": 25_000 + rng.integers(0, 80, n),
            "timeframe": rng.integers(0, 1_800_000, n), "eventdate": day}))
    source = pd.concat(frames, ignore_index=True)
    source.to_sql("item_views", pg, if_exists="append", index=False)
    tables = {"item_views": {"window_column": "eventdate", "window_format": "datetime",
                             "lookback_days": 2, "event_type": "view", "ts_offset_unit": "ms",
                             "columns": {"user_id": "sessionId", "ts": "eventdate",
                                         "ts_offset": "timeframe"}}}
    # Offsets count from each session's start, not from midnight: the day's newest event says
    # nothing of the feed's freshness.
    m = run_stages(tmp_path, monkeypatch, postgres.url, tables, DAYS,
                   **{"validate.freshness.severity": "warn"})
    assert m["fetch"]["quarantined"] == 0 and m["fetch"]["duplicates"] == 0
    assert m["fetch"]["kept"] == m["fetch"]["fetched"] == 4500  # the last day and 2 looked back
    assert m["validation"]["status"] in ("passed", "warned") and m["train"]["users"] > 100
    kept = history.read_window(tmp_path / "data/history", DAYS[0], DAYS[-1]).to_pandas()
    # Every repeat view kept, none taken for a duplicate; the days read again have the same ids.
    assert len(kept) == len(source)
    expected = pd.to_datetime(source["eventdate"]).dt.tz_localize("UTC") + \
        pd.to_timedelta(source["timeframe"], unit="ms")
    assert sorted(zip(kept["user_id"], kept["item_id"], kept["ts"])) == sorted(zip(
        source["sessionId"].astype(str), source["itemId"].astype(str), expected))
