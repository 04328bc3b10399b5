"""Settings of ingestion's windows: params.yaml `fetch` and `history` (fetch_delta, merge_history,
and the stages that read the history). The source tables' own settings: dailyrec.ingest.tables."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dailyrec.core.settings import Params, day_window, run_date


@dataclass(frozen=True)
class Window:
    """The fetch window of a run, and the bounds outside which an event is quarantined."""

    start: dt.datetime  # inclusive, UTC
    end: dt.datetime  # exclusive, UTC
    max_future: dt.datetime  # events after this are ts:future
    min_ts: dt.datetime  # events before this are ts:too_old (outside the kept history)
    max_late: dt.timedelta = dt.timedelta(days=3)  # events more this before start: ts:too_late


def history_days(params: Params) -> int:
    """history.days: days kept in data/history (and the oldest event fetch accepts)."""
    return params.integer("history.days", low=1)


def max_removed_share(params: Params) -> float:
    """history.max_removed_share: the most of the history's events one run may age out."""
    return params.number("history.max_removed_share", low=0, strict=True, high=1)


def clock_skew(params: Params) -> dt.timedelta:
    """fetch.max_clock_skew_minutes: how far past the window's end an event may be stamped."""
    return dt.timedelta(minutes=params.number("fetch.max_clock_skew_minutes", low=0))


def max_late(params: Params) -> dt.timedelta:
    """fetch.max_late_days: how long before the window an event may have happened and still be
    fetched (written late); older ones are quarantined as ts:too_late, row by row."""
    return dt.timedelta(days=params.integer("fetch.max_late_days", low=0))


def fetch_window(params: Params) -> Window:
    start, end = day_window(run_date(params))
    return Window(start=start, end=end, max_future=end + clock_skew(params),
                  min_ts=end - dt.timedelta(days=history_days(params)),
                  max_late=max_late(params))
