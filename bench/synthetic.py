"""Synthetic event windows for the train benchmarks: canonical Arrow tables, built vectorised.

`window` is for timing (Pareto user activity, Zipf item popularity, the funnel's event mix, uniform
times over the window: realistic shapes, no taste structure). For quality, use the production
simulator (tools.simulate), whose users have tastes.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from dailyrec.core import schema as S

FUNNEL = np.array([0.70, 0.20, 0.07, 0.03])


def _ids(prefix: str, codes: np.ndarray, n: int) -> pa.Array:
    dictionary = pa.array([f"{prefix}{k}" for k in range(n)], pa.string())  # n distinct, not rows
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), dictionary) \
        .cast(pa.string())


def _constant(text: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)),
                                          pa.array([text])).cast(pa.string())


def window(n_events: int, n_users: int, n_items: int, days: int, end: dt.datetime,
           seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    activity = rng.pareto(1.6, n_users) + 0.05
    users = np.searchsorted(np.cumsum(activity) / activity.sum(), rng.random(n_events))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 1.05
    popularity = popularity[rng.permutation(n_items)]
    items = np.searchsorted(np.cumsum(popularity) / popularity.sum(), rng.random(n_events))
    types = np.searchsorted(np.cumsum(FUNNEL), rng.random(n_events) * FUNNEL.sum())
    end_us = int(end.timestamp() * 1_000_000)
    ts = end_us - rng.integers(1, days * 86_400_000_000, n_events)
    event_types = pa.DictionaryArray.from_arrays(pa.array(types.astype(np.int32)),
                                                 pa.array(list(S.EVENT_TYPES))).cast(pa.string())
    return S.conform(pa.table({
        # event ids repeat every million rows: train never reads them, and 20M distinct Python
        # strings would dominate the set-up time
        "event_id": _ids("e", np.arange(n_events) % 1_000_000, 1_000_000),
        "user_id": _ids("u", np.minimum(users, n_users - 1), n_users),
        "item_id": _ids("i", np.minimum(items, n_items - 1), n_items),
        "event_type": event_types,
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "source": _constant("bench", n_events),
        "user_agent": pa.nulls(n_events, pa.string()),
        "ip": pa.nulls(n_events, pa.string()),
    }))


def simulated(first_day: dt.date, days: int, users: int, items: int, events_per_day: int,
              seed: int = 7) -> pa.Table:
    """Human events from the production simulator (users with tastes), as canonical events."""
    import pandas as pd

    from tools import simulate

    pop = simulate.Population(seed, users, items)
    frames = []
    for offset in range(days):  # a loop over days; each day is vectorised
        day = first_day + dt.timedelta(days=offset)
        rng = np.random.default_rng([seed, 2, day.toordinal()])
        frames.append(simulate.human_events(rng, pop, pd.Timestamp(day), events_per_day))
    raw = pd.concat(frames, ignore_index=True)
    n = len(raw)
    ts = raw["ts"].to_numpy().astype("datetime64[us]").astype(np.int64)
    return S.conform(pa.table({
        "event_id": _ids("s", np.arange(n) % 1_000_000, 1_000_000),
        "user_id": _ids("", raw["user"].to_numpy() - 1, users),
        "item_id": _ids("", raw["item"].to_numpy() - 1, items),
        "event_type": pa.DictionaryArray.from_arrays(
            pa.array(raw["type"].to_numpy().astype(np.int32)),
            pa.array(list(S.EVENT_TYPES))).cast(pa.string()),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "source": _constant("simulator", n),
        "user_agent": pa.nulls(n, pa.string()),
        "ip": pa.nulls(n, pa.string()),
    }))
