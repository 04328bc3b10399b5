"""Settings of data quality: params.yaml `validate` (the suites) and `filter` (the noise rules)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import Any

from dailyrec.core import noise_rules
from dailyrec.core.settings import ConfigError, Params, run_date
from dailyrec.ingest.settings import clock_skew, max_late

SEVERITIES = ("warn", "fail")
# filter.engine: where filter_noise runs; both give the same answer (docs/scaling.md).
ENGINES = ("local", "spark")
# validate.<check>: the keys each check takes and what they hold.
CHECKS: dict[str, dict[str, str]] = {
    "columns": {"severity": "severity"},
    "types": {"severity": "severity"},
    "not_null": {"severity": "severity", "mostly": "share"},
    "event_types": {"severity": "severity", "mostly": "share"},
    "id_format": {"severity": "severity", "mostly": "share"},
    "event_id_unique": {"severity": "severity", "mostly": "share"},
    "ts_in_window": {"severity": "severity", "mostly": "share"},
    "freshness": {"severity": "severity", "max_age_minutes": "count"},
    "volume": {"severity": "severity", "trailing_days": "count", "min_history_days": "count",
               "low": "ratio", "high": "ratio", "min_events": "count"},
    "quarantine_share": {"severity": "severity", "max": "ratio"},
    "window": {"severity": "severity", "enabled": "flag", "min_events": "count"},
}
VALIDATE_TOP_LEVEL = ("examples", "report_days")


@dataclass(frozen=True)
class ValidateSettings:
    run_date: dt.date
    checks: dict[str, dict[str, Any]]
    examples: int
    report_days: int
    window_days: int
    skew: dt.timedelta
    max_late: dt.timedelta

    @property
    def day(self) -> dt.date:
        """The event day the delta covers: its rejection key."""
        return self.run_date - dt.timedelta(days=1)

    def severity(self, check: str) -> str:
        return self.checks[check]["severity"]


def window_days(params: Params) -> int:
    """filter.window_days: the training window, in days before run.date."""
    return params.integer("filter.window_days", low=1)


def validate(params: Params) -> ValidateSettings:
    params.known("validate", [*CHECKS, *VALIDATE_TOP_LEVEL])
    checks = {}
    for name, spec in CHECKS.items():
        where = f"validate.{name}"
        params.known(where, spec)
        values = {}
        for key, kind in spec.items():
            if kind == "severity":
                values[key] = params.choice(f"{where}.{key}", SEVERITIES)
            elif kind == "flag":
                values[key] = params.flag(f"{where}.{key}")
            elif kind == "count":
                values[key] = params.integer(f"{where}.{key}", low=0)
            elif kind == "share":
                values[key] = params.number(f"{where}.{key}", low=0, high=1)
            else:
                values[key] = params.number(f"{where}.{key}", low=0)
        checks[name] = values
    if checks["volume"]["low"] > checks["volume"]["high"]:
        raise ConfigError(f"{params.source}: validate.volume: low must not exceed high")
    return ValidateSettings(run_date=run_date(params), checks=checks,
                            examples=params.integer("validate.examples", low=0),
                            report_days=params.integer("validate.report_days", low=0),
                            window_days=window_days(params), skew=clock_skew(params),
                            max_late=max_late(params))


# --- filter --------------------------------------------------------------------------------------

FILTER_KEYS: dict[str, tuple[str, ...]] = {rule.name: rule.keys for rule in noise_rules.RULES}


@dataclass(frozen=True)
class FilterSettings:
    run_date: dt.date
    engine: str  # one of ENGINES
    window_days: int
    top_offenders: int
    crawler_enabled: bool
    extra_patterns: tuple[str, ...]
    behaviour_enabled: bool
    max_events_per_minute: int
    max_events_per_day: int
    max_distinct_items_per_day: int
    max_active_hours_per_day: int
    bot_days: int
    shared_ip_enabled: bool
    shared_ip_max_events_per_minute: int
    shared_ip_max_events_per_day: int
    shared_ip_max_users_per_day: int
    shared_ip_exempt: tuple[Any, ...]
    internal_enabled: bool
    internal_user_ids: tuple[str, ...]
    internal_user_id_ranges: tuple[tuple[int, int], ...]
    internal_networks: tuple[Any, ...]
    repeated_enabled: bool
    dedupe_seconds: float
    min_user_events: int
    min_item_events: int


def filter_rules(params: Params) -> FilterSettings:
    params.known("filter", ["engine", "window_days", "top_offenders", *FILTER_KEYS])
    for rule, keys in FILTER_KEYS.items():
        params.known(f"filter.{rule}", keys)
    extra = params.items("filter.crawler_ua.extra_patterns")
    if not all(isinstance(p, str) and p for p in extra):
        raise params.fail("filter.crawler_ua.extra_patterns", "a list of regular expressions",
                          extra)
    import pyarrow as pa
    import pyarrow.compute as pc

    for pattern in extra:
        try:
            pc.match_substring_regex(pa.array([""]), pattern)
        except pa.ArrowInvalid as err:
            raise ConfigError(f"{params.source}: filter.crawler_ua.extra_patterns: {pattern!r} is "
                              f"not a valid (RE2) regular expression: {err}") from None
    ranges = []
    for k, pair in enumerate(params.items("filter.internal.user_id_ranges")):
        whole = isinstance(pair, list) and len(pair) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in pair)
        if not (whole and pair[0] <= pair[1]):
            raise params.fail(f"filter.internal.user_id_ranges[{k}]", "[first, last] whole numbers",
                              pair)
        ranges.append((pair[0], pair[1]))
    networks = _networks(params, "filter.internal.ip_cidrs")
    return FilterSettings(
        run_date=run_date(params),
        engine=params.choice("filter.engine", ENGINES),
        window_days=window_days(params),
        top_offenders=params.integer("filter.top_offenders", low=0),
        crawler_enabled=params.flag("filter.crawler_ua.enabled"),
        extra_patterns=tuple(extra),
        behaviour_enabled=params.flag("filter.behaviour.enabled"),
        max_events_per_minute=params.integer("filter.behaviour.max_events_per_minute", low=1),
        max_events_per_day=params.integer("filter.behaviour.max_events_per_day", low=1),
        max_distinct_items_per_day=params.integer(
            "filter.behaviour.max_distinct_items_per_day", low=1),
        max_active_hours_per_day=params.integer("filter.behaviour.max_active_hours_per_day",
                                                low=1, high=24),
        bot_days=params.integer("filter.behaviour.bot_days", low=1),
        shared_ip_enabled=params.flag("filter.shared_ip.enabled"),
        shared_ip_max_events_per_minute=params.integer("filter.shared_ip.max_events_per_minute",
                                                       low=1),
        shared_ip_max_events_per_day=params.integer("filter.shared_ip.max_events_per_day", low=1),
        shared_ip_max_users_per_day=params.integer("filter.shared_ip.max_users_per_day", low=1),
        shared_ip_exempt=tuple(_networks(params, "filter.shared_ip.exempt_cidrs")),
        internal_enabled=params.flag("filter.internal.enabled"),
        internal_user_ids=tuple(str(u).strip() for u in params.items("filter.internal.user_ids")),
        internal_user_id_ranges=tuple(ranges),
        internal_networks=tuple(networks),
        repeated_enabled=params.flag("filter.repeated.enabled"),
        dedupe_seconds=params.number("filter.repeated.dedupe_seconds", low=0),
        min_user_events=params.integer("filter.min_support.min_user_events", low=0),
        min_item_events=params.integer("filter.min_support.min_item_events", low=0),
    )


def _networks(params: Params, key: str) -> list:
    networks = []
    for k, cidr in enumerate(params.items(key)):
        try:
            networks.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError as err:
            raise ConfigError(f"{params.source}: {key}[{k}]: {err}") from None
    return networks
