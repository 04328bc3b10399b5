"""Settings of publishing and of the served lists: params.yaml `publish` and `serving`."""

from __future__ import annotations

from dataclasses import dataclass

from dailyrec.core.settings import ConfigError, Params
from dailyrec.publish.keys import record_width

MAX_BATCH_BYTES = 1 << 30  # Arrow binary offsets are 32-bit: keep one batch's payload well below


@dataclass(frozen=True)
class PublishSettings:
    top_n: int  # items stored per user: the most the API's ?n= can ask for
    filter_already_liked: bool
    batch_size: int  # users scored and written per round
    keep_versions: int  # complete versions kept in Redis, for rollback
    similar_items: bool  # every item's top_n similar items (GET /items/<id>/similar)
    explain_items: int  # past items kept per user to explain their list (0: no explanations)
    # serving.max_age_hours, written with each version: past it, /readyz says degraded and the
    # runner alerts. None (library callers that do not say): no age is judged.
    max_age_hours: float | None = None


def max_age_hours(params: Params) -> float:
    """serving.max_age_hours: how old the served lists' data may get (hours since the end of
    the data they were built from, run.date 00:00 UTC) before it counts as stale."""
    params.known("serving", ("max_age_hours",))
    return params.number("serving.max_age_hours", low=1, high=24 * 365)


def publish(params: Params) -> PublishSettings:
    params.known("publish", ("top_n", "filter_already_liked", "batch_size", "keep_versions",
                             "similar_items", "explain_items"))
    top_n = params.integer("publish.top_n", low=1, high=1000)
    batch_size = params.integer("publish.batch_size", low=1, high=10_000_000)
    if batch_size * (record_width(top_n) + 300) > MAX_BATCH_BYTES:
        raise ConfigError(f"{params.source}: publish.batch_size {batch_size} x top_n {top_n} makes "
                          "one Redis batch over 1 GiB; lower publish.batch_size")
    return PublishSettings(top_n=top_n,
                           filter_already_liked=params.flag("publish.filter_already_liked"),
                           batch_size=batch_size,
                           keep_versions=params.integer("publish.keep_versions", low=1, high=100),
                           similar_items=params.flag("publish.similar_items"),
                           explain_items=params.integer("publish.explain_items", low=0, high=500),
                           max_age_hours=max_age_hours(params))
