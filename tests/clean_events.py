"""Clean data for the train/evaluate/tune tests, until filter_noise writes data/clean in a test.

Human events from the production simulator (power-law users, Zipf items, genre tastes, sessions),
in the canonical schema: what data/clean's day files hold. Small and seeded.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from dailyrec.quality.filtering import clean
from dailyrec.core import schema as S
from dailyrec.ingest import normalise as N
from tools import simulate


def human_events(first_day: dt.date, days: int, users: int = 400, items: int = 150,
                 events_per_day: int = 3000, seed: int = 3) -> pd.DataFrame:
    pop = simulate.Population(seed, users, items, n_genres=6)
    frames = []
    for offset in range(days):
        day = first_day + dt.timedelta(days=offset)
        rng = np.random.default_rng([seed, 9, day.toordinal()])
        raw = simulate.human_events(rng, pop, pd.Timestamp(day), events_per_day)
        frames.append(raw)
    raw = pd.concat(frames, ignore_index=True)
    events = pd.DataFrame({
        "user_id": raw["user"].astype(str).astype("str"),
        "item_id": raw["item"].astype(str).astype("str"),
        "event_type": pd.Series(simulate.EVENT_TYPES[raw["type"].to_numpy()], dtype="str"),
        "ts": pd.to_datetime(raw["ts"]).dt.tz_localize("UTC").astype("datetime64[us, UTC]"),
        "source": "web_events",
        "user_agent": raw["ua"].astype("str"),
        "ip": raw["ip"].astype("str"),
    })
    events["event_id"] = N.derive_event_ids(events)
    events = events.drop_duplicates("event_id").sort_values(["ts", "event_id"], kind="stable")
    events["quantity"] = np.nan
    return events[list(S.COLUMNS)].reset_index(drop=True)


def write_clean(root: Path, events: pd.DataFrame | pa.Table) -> Path:
    """events (in time order) as filter_noise writes them: data/clean's day files."""
    path = Path(root) / "data" / "clean"
    path.parent.mkdir(parents=True, exist_ok=True)
    with clean.DayWriter(path) as writer:
        writer.add(events if isinstance(events, pa.Table) else S.to_table(events))
    return path


def frame(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Canonical events from (user_id, item_id, event_type, ISO ts) tuples."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True).astype("datetime64[us, UTC]")
    df["source"] = "test"
    df["user_agent"] = None
    df["ip"] = None
    df["quantity"] = np.nan
    df["event_id"] = [f"e{i}" for i in range(len(df))]
    for col in ("user_id", "item_id", "event_type", "source", "event_id"):
        df[col] = df[col].astype("str")
    return df[list(S.COLUMNS)]
