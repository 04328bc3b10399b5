"""A tiny, hand-written production database for the ingestion tests, every row chosen on purpose.

The three tables have the schemas of the shipped params.yaml (web_events, app_events,
legacy_clicks, as the simulator writes them), so the tests exercise the configuration users get.
Two consecutive run dates are covered:

    run 2026-11-15 reads 2026-11-14 (DAY1)      run 2026-11-16 reads 2026-11-15 (DAY2)

Events are named by their ids; EXPECTED_DAY2 lists what fetch must keep for DAY2, and
QUARANTINE_DAY2 why each other row of DAY2 is refused.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from tests.params import project_params

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc
RUN1, RUN2 = dt.date(2026, 11, 15), dt.date(2026, 11, 16)
DAY1, DAY2 = dt.date(2026, 11, 14), dt.date(2026, 11, 15)


def at(day: dt.date, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)


def ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def params(run_date: dt.date, **changes) -> dict:
    """The shipped params.yaml with run.date set; changes as {"history.days": 3, ...}."""
    return project_params(run_date.isoformat(), **changes)


UA = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


def web_row(uuid, user, item, etype, ts, ingested: dt.datetime, ua=UA, ip="81.2.3.4") -> dict:
    return {"event_uuid": uuid, "userId": user, "productId": item, "eventType": etype, "ts": ts,
            "userAgent": ua, "ip": ip, "ingested_at": ms(ingested)}


def web_events() -> pd.DataFrame:
    late_written = at(DAY2, 3)
    rows = [
        # DAY1 ------------------------------------------------------------------------------
        web_row("w-day1", "101", "5001", "View", "2026-11-14T10:00:00Z", at(DAY1, 10, 0, 2)),
        # Happened on DAY1 late in the evening, written to the database on DAY2: fetched by the
        # DAY2 run only, and stored under its own day.
        web_row("w-late", "102", "5002", "Click", "2026-11-14T23:30:00Z", late_written),
        # DAY2: the forms production writes -------------------------------------------------
        web_row("w-z", "103", "5003", "PAGE_VIEW", "2026-11-15T10:00:00Z", at(DAY2, 10)),
        web_row("w-ist", " 104 ", "5004.0", "add-to-cart", "2026-11-15T15:30:00+05:30",
                at(DAY2, 10, 0, 1)),
        web_row("w-est", "105.0", "5005", "Add To Cart", "2026-11-15T05:00:00-05:00",
                at(DAY2, 10, 0, 2)),
        web_row("w-naive", "106", "5006", "purchase", "2026-11-15T11:00:00", at(DAY2, 11)),
        web_row("w-epoch", "107", "5007", "Purchase", str(int(at(DAY2, 12).timestamp())),
                at(DAY2, 12)),
        web_row(None, "108", "5008", "view", "2026-11-15T13:00:00Z", at(DAY2, 13), ua="  ",
                ip=None),
        # The same write retried: an exact duplicate (same uuid).
        web_row("w-z", "103", "5003", "PAGE_VIEW", "2026-11-15T10:00:00Z", at(DAY2, 10)),
        # Window edges: start is inclusive, end exclusive.
        web_row("w-first", "109", "5009", "view", "2026-11-15T00:00:00Z", at(DAY2, 0)),
        web_row("w-next-day", "110", "5010", "view", "2026-11-16T00:00:00Z",
                dt.datetime(2026, 11, 16, tzinfo=UTC)),
        # DAY2: garbage ---------------------------------------------------------------------
        web_row("q-user-null", None, "5001", "view", "2026-11-15T14:00:00Z", at(DAY2, 14)),
        web_row("q-user-token", "undefined", "5001", "view", "2026-11-15T14:00:00Z", at(DAY2, 14)),
        web_row("q-user-bad", "<script>alert(1)</script>", "5001", "view", "2026-11-15T14:00:00Z",
                at(DAY2, 14)),
        web_row("q-item-null", "101", None, "view", "2026-11-15T14:00:00Z", at(DAY2, 14)),
        web_row("q-item-bad", "101", "item 1", "view", "2026-11-15T14:00:00Z", at(DAY2, 14)),
        web_row("q-type-null", "101", "5001", None, "2026-11-15T14:00:00Z", at(DAY2, 14)),
        web_row("q-type-bad", "101", "5001", "hover", "2026-11-15T14:00:00Z", at(DAY2, 14)),
        web_row("q-ts-null", "101", "5001", "view", None, at(DAY2, 14)),
        web_row("q-ts-bad", "101", "5001", "view", "not a date", at(DAY2, 14)),
        web_row("q-ts-future", "101", "5001", "view", "2056-11-15T14:00:00Z", at(DAY2, 14)),
        web_row("q-ts-ancient", "101", "5001", "view", "2001-01-01T00:00:00Z", at(DAY2, 14)),
    ]
    return pd.DataFrame(rows)


def app_events() -> pd.DataFrame:
    def row(user, item, name, ts: dt.datetime | None, written: dt.datetime):
        return {"user_id": user, "item_id": item, "event_name": name,
                "event_time_ms": None if ts is None else ms(ts), "device_ua": "DailyShop/5.2.1",
                "client_ip": "31.4.5.6", "written_at": written.replace(tzinfo=None)}

    frame = pd.DataFrame([
        row(201, 6001, "view", at(DAY1, 9), at(DAY1, 9, 0, 5)),
        row(202, 6002, "tap", at(DAY2, 9), at(DAY2, 9, 0, 5)),  # tap: a click (table alias)
        row(203, 6003, "cart_add", at(DAY2, 9, 30), at(DAY2, 9, 30, 5)),
        row(204, 6004, "order", at(DAY2, 9, 45), at(DAY2, 9, 45, 5)),
        row(-1, 6005, "view", at(DAY2, 10), at(DAY2, 10, 0, 5)),  # the app's garbage id
        row(205, None, "view", at(DAY2, 10), at(DAY2, 10, 0, 5)),
        row(206, 6006, "view", None, at(DAY2, 10, 0, 5)),
    ])
    frame["user_id"] = frame["user_id"].astype("Int64")
    frame["item_id"] = frame["item_id"].astype("Int64")
    frame["event_time_ms"] = frame["event_time_ms"].astype("Int64")
    return frame


def legacy_clicks() -> pd.DataFrame:
    def row(user, item, action, moment: dt.datetime):
        return {"UserID": user, "ItemID": item, "Action": action,
                "EventTime": int(moment.timestamp()), "RemoteAddr": "94.1.2.3"}

    return pd.DataFrame([
        # On DAY1: read by both runs (the event-time window looks back 2 days).
        row("301.0", 7001.0, "VIEW", at(DAY1, 8)),
        row("302.0", 7002.0, "BUY", at(DAY2, 8)),  # BUY: a purchase (table alias)
        row("302.0", 7002.0, "BUY", at(DAY2, 8)),  # exact duplicate, no id: same derived id
        row("303", 7003.0, "CLICK", at(DAY2, 8, 30)),
        # Four days before DAY2: outside the lookback, never read.
        row("304.0", 7004.0, "VIEW", at(DAY2 - dt.timedelta(days=4), 8)),
    ])


TABLES = {"web_events": web_events, "app_events": app_events, "legacy_clicks": legacy_clicks}


def write(url: str) -> None:
    """(Re)create the three tables in the database at url."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for name, build in TABLES.items():
            build().to_sql(name, conn, if_exists="replace", index=False)
    engine.dispose()


# What fetch keeps for RUN2 (DAY2's window): (event_id or None for a derived id, user, item,
# type, ts, source).
EXPECTED_DAY2 = [
    ("web_events:w-late", "102", "5002", "click", at(DAY1, 23, 30), "web_events"),
    ("web_events:w-z", "103", "5003", "view", at(DAY2, 10), "web_events"),
    ("web_events:w-ist", "104", "5004", "add_to_cart", at(DAY2, 10), "web_events"),
    ("web_events:w-est", "105", "5005", "add_to_cart", at(DAY2, 10), "web_events"),
    ("web_events:w-naive", "106", "5006", "purchase", at(DAY2, 11), "web_events"),
    ("web_events:w-epoch", "107", "5007", "purchase", at(DAY2, 12), "web_events"),
    (None, "108", "5008", "view", at(DAY2, 13), "web_events"),
    ("web_events:w-first", "109", "5009", "view", at(DAY2, 0), "web_events"),
    (None, "202", "6002", "click", at(DAY2, 9), "app_events"),
    (None, "203", "6003", "add_to_cart", at(DAY2, 9, 30), "app_events"),
    (None, "204", "6004", "purchase", at(DAY2, 9, 45), "app_events"),
    (None, "301", "7001", "view", at(DAY1, 8), "legacy_clicks"),
    (None, "302", "7002", "purchase", at(DAY2, 8), "legacy_clicks"),
    (None, "303", "7003", "click", at(DAY2, 8, 30), "legacy_clicks"),
]

QUARANTINE_DAY2 = {
    "user_id:missing": 2, "user_id:invalid": 2, "item_id:missing": 2, "item_id:invalid": 1,
    "event_type:missing": 1, "event_type:unknown": 1, "ts:missing": 2, "ts:unparseable": 1,
    "ts:future": 1, "ts:too_old": 1,
}
DUPLICATES_DAY2 = {"web_events": 1, "app_events": 0, "legacy_clicks": 1}


def fetch(raw_params: dict, url: str, out_dir: Path) -> dict:
    """fetch_delta's work on params given as a dict: counts, with the run_date fetch.json has."""
    from dailyrec.core import settings
    from dailyrec.ingest import source
    from dailyrec.ingest import settings as ingest
    from dailyrec.ingest import tables

    p = settings.of(raw_params)
    counts = source.fetch(tables.source(p), ingest.fetch_window(p), url, Path(out_dir))
    return {"run_date": settings.run_date(p).isoformat(), **counts}
