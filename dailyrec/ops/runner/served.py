"""What the API serves now, and how old it is: said after every night, alerted when stale, so a
week of failed or held-back runs never goes unnoticed."""

from __future__ import annotations

import json

from dailyrec.core import errors, settings
from dailyrec.ops.runner.commands import DayContext


def check_served(run: DayContext, alert_stale: bool = True) -> dict:
    """How old the lists the API serves now are (dailyrec.publish.reader.Freshness), against
    params.yaml's serving.max_age_hours; alerts when they are stale, whatever today's run did,
    unless alert_stale is False (a backfill of past days, whose lists are old by design).
    Returns what the report shows."""
    from dailyrec.publish import connection
    from dailyrec.publish import keys as K
    from dailyrec.publish.reader import (Freshness, NotPublished, RecommendationStore,
                                         RedisUnavailable, freshness)
    from dailyrec.publish.settings import max_age_hours

    try:
        store = RecommendationStore(connection.client(connection.settings_from_env(),
                                                      timeout=10.0), K.Layout.from_env())
        fresh = freshness(store.ready())
    except (NotPublished, RedisUnavailable) as err:
        run.progress("served", f"unknown ({err})")
        run.log.write(f"served: unknown: {err!r}\n")
        return {"error": str(err)}
    except Exception as err:  # noqa: BLE001 - a check must never end the run it reports on
        run.progress("served", f"unknown ({type(err).__name__}: {err})")
        run.log.write(f"served: check failed: {err!r}\n")
        return {"error": f"{type(err).__name__}: {err}"}
    try:
        limit = max_age_hours(settings.load())
    except errors.ConfigError:
        limit = fresh.max_age_hours  # what it was published with
    fresh = Freshness(fresh.version, fresh.run_date, fresh.age_hours, limit)
    age = "age unknown" if fresh.age_hours is None else f"data {fresh.age_hours:.1f} h old"
    stale = "" if not fresh.stale else \
        f" (STALE: over serving.max_age_hours {limit:g})" if alert_stale else \
        f" (over serving.max_age_hours {limit:g}, as a backfill of past days leaves it: " \
        "not alerted)"
    run.progress("served", f"version {fresh.version}, {age}{stale}")
    run.log.write(f"served: {json.dumps(fresh.as_dict())}\n")
    if fresh.stale and alert_stale:
        run.alert(f"served recommendations are stale: data {fresh.age_hours:.0f} h old "
                  f"(version {fresh.version})",
                  context=run.context(served_version=fresh.version,
                                      served_run_date=fresh.run_date,
                                      age_hours=round(fresh.age_hours, 1), max_age_hours=limit),
                  log_tail=f"The API serves version {fresh.version}, built from the data of "
                           f"{fresh.run_date}; serving.max_age_hours is {limit:g}. Daily runs "
                           "since then did not publish: see their alerts and logs/daily/.")
    return fresh.as_dict()
