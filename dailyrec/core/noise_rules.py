"""The noise rules of filter_noise, each defined once: its name, where it runs in the order, its
settings under params.yaml `filter.<name>`, whether what it removes is a bot (or internal
traffic) rather than a human's noise, and its words in the report.

This is part of the contract between stages, like the event schema: metrics/filter.json holds one
entry per rule and a summary row `rule_<name>` (dailyrec.core.metrics, dvc.yaml), the settings
checker refuses keys a rule does not have (dailyrec.quality.settings), both engines run them in
this order (dailyrec.quality.filtering), and the report names them. A new rule is a line here,
its function in each engine, its settings in params.yaml and its FilterSettings fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NoiseRule:
    name: str
    keys: tuple[str, ...]  # its settings under filter.<name>
    bot: bool  # a user it removes is not a human customer (counted as a bot or internal user)
    label: str  # the report's words for what it removed


# In the order the rules run: each removes rows the earlier ones left. Repeats go before
# behaviour: a client that fires each action twice is not twice as fast.
RULES: tuple[NoiseRule, ...] = (
    NoiseRule("crawler_ua", ("enabled", "extra_patterns"), True,
              "known crawlers (user agent)"),
    NoiseRule("internal", ("enabled", "user_ids", "user_id_ranges", "ip_cidrs"), True,
              "internal traffic (staff accounts, office networks)"),
    NoiseRule("repeated", ("enabled", "dedupe_seconds"), False,
              "repeated clicks (double clicks, reloads)"),
    NoiseRule("behaviour", ("enabled", "max_events_per_minute", "max_events_per_day",
                            "max_distinct_items_per_day", "max_active_hours_per_day",
                            "bot_days"), True,
              "bot-like behaviour (scrapers)"),
    NoiseRule("shared_ip", ("enabled", "max_events_per_minute", "max_events_per_day",
                            "max_users_per_day", "exempt_cidrs"), True,
              "addresses rotating user ids (scrapers)"),
    NoiseRule("min_support", ("min_user_events", "min_item_events"), False,
              "users and items with too little activity"),
)
NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)
BOT_RULES: tuple[str, ...] = tuple(rule.name for rule in RULES if rule.bot)
BY_NAME: dict[str, NoiseRule] = {rule.name: rule for rule in RULES}
