"""filter_noise on Apache Spark (params.yaml filter.engine: spark): the same rules, the same kept
events and the same counters as the local engine, dailyrec.quality.filtering.rules, for windows past one
machine (docs/scaling.md).

    run(cfg, history, rejected, out, spark=None) -> counts     as engine.run

One definition per rule: Spark moves and counts events; every decision is the local engine's code.
  1. read        history.select_window's files (the same selection), each event with its place
                 in history order (dailyrec.core.spark.read_events)
  2. by user     events hashed into groups of users; each group, in history order, becomes a
                 Window (window.window_of) that rules.apply_rules runs crawler_ua, internal,
                 repeated and behaviour on. These rules look at one event or at one user's events,
                 never across users, and all of a user's events (all days: bot_days) are in one
                 group, so each group's answer is the whole window's answer for its users.
  3. by address  the same for shared_ip, over the events still alive, on groups of canonical
                 addresses (dailyrec.quality.filtering.ip_texts, named in step 2).
  4. min_support events left per user and per item (Spark counts), judged by rules.low_support.
  5. counters    rows and users per rule by Spark aggregates; a rule's own counters (users over
                 each limit, flagged user-days, ...) summed over the groups, since each user or
                 address is in exactly one; top offenders ranked over the whole window as
                 rules.top_values ranks them: most rows, ties by first appearance in history order.
                 The events whose IP text is no address (step 2 gave no canonical one) likewise.
  6. write       the kept events, sorted in history order by Spark, streamed by this process into
                 data/clean's day files by the local engine's writer (dailyrec.quality.filtering.clean).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dailyrec.quality.filtering import clean
from dailyrec.core import schema as S
from dailyrec.core import spark as SP
from dailyrec.ingest.history import select_window
from dailyrec.quality.filtering import engine as E
from dailyrec.quality.filtering import rules as R
from dailyrec.quality.filtering import window as W
from dailyrec.quality.settings import FilterSettings

BY_USER = ("crawler_ua", "internal", "repeated", "behaviour")
BY_ADDRESS = ("shared_ip",)
KEPT = -1  # removed_by of a kept event; otherwise the index in rules.RULES of the rule that went
RULE_INDEX = {rule: k for k, rule in enumerate(R.RULES)}
# A rule's own counters that add up over groups (each user or address is in one group); its
# other keys are settings, the same in every group.
ADDITIVE = {"internal": ("rows_by_marker",),
            "behaviour": ("users_by_limit", "user_days_flagged", "bot_users"),
            "shared_ip": ("ip_days_by_limit",)}
# Top-offender lists and the column each ranks: counted over the whole window, not per group.
TOP_COLUMNS = {"top_users": "user_id", "top_ips": "ip", "top_user_agents": "user_agent"}
# Where Spark leaves the kept events for this process to fetch: a temporary folder on this machine
# by default; on a cluster, a bucket path both can reach (gs://..., abfss://...).
STAGING_URL = "DAILYREC_SPARK_STAGING"
POSITION_SHIFT = 40  # position = file_index << 40 | row_index: history order of the files' rows


@dataclass
class Judged:
    """Every event of the window with the rule that removed it (removed_by: KEPT or the rule's
    index in rules.RULES), kept by Spark until released; and what the counters need besides."""

    events: Any  # DataFrame: canonical columns, file_index, row_index, removed_by, ...
    idle: dict  # rule -> its detail when it does not run
    support: dict  # min_support's detail
    seconds: dict  # step -> seconds

    def release(self) -> None:
        self.events.unpersist()


def run(cfg: FilterSettings, history: Path | str, rejected: set[dt.date], out: Path,
        spark=None) -> dict:
    """Read the window (rejected days left out), apply the rules, write the kept events to out;
    returns the counts, as engine.run does (filter_noise writes them as metrics/filter.json)."""
    spark = SP.configured(spark or SP.session())
    started = time.perf_counter()
    chosen = select_window(SP.location(history), cfg.run_date, cfg.window_days, rejected)
    judged = judge(spark, chosen.files, cfg)
    try:
        t = time.perf_counter()
        counted = count(judged, cfg)
        counters_s = time.perf_counter() - t
        t = time.perf_counter()
        write_clean(judged, out)
        write_s = time.perf_counter() - t
    finally:
        judged.release()
    steps = {**judged.seconds, "counters": counters_s}
    rules_s = sum(s for step, s in judged.seconds.items() if step != "read")  # the scan included
    return E.record(cfg, chosen, counted, {
        "read": round(steps["read"], 3), "rules": round(rules_s, 3),
        "write": round(write_s, 3), "total": round(time.perf_counter() - started, 3),
        "by_step": {k: round(v, 3) for k, v in steps.items()}})


def judge(spark, files: list, cfg: FilterSettings) -> Judged:
    """Steps 1-4 on the window's files: which rule removed each event."""
    steps: dict[str, float] = {}
    t = time.perf_counter()
    events = SP.read_events(spark, files)
    steps["read"] = time.perf_counter() - t  # the plan: the scan itself is inside by_user
    # What each rule's detail is when it does not run (disabled, or nothing left): the local
    # engine's own answer on an empty window.
    idle = R.apply_rules(W.window_of(W.WINDOW_SCHEMA.empty_table()), cfg).details
    t = time.perf_counter()
    by_user = _materialised(judge_by_user(events, cfg, spark))
    steps["by_user"] = time.perf_counter() - t
    t = time.perf_counter()
    judged = _materialised(judge_by_address(by_user, cfg, spark))
    by_user.unpersist()
    steps["by_address"] = time.perf_counter() - t
    t = time.perf_counter()
    judged, support = min_support(judged, cfg, idle["min_support"])
    steps["min_support"] = time.perf_counter() - t
    return Judged(events=judged, idle=idle, support=support, seconds=steps)


def _materialised(df):
    """Computed once and kept: every later step and counter reads it."""
    df = df.persist()
    df.count()
    return df


def _columns(*extra: tuple[str, str]):
    """The events' Spark schema (every field nullable: Spark reads files so), the history order
    and the extra columns."""
    from pyspark.sql.types import StructField, StructType

    fields = [StructField(f.name, f.dataType, True) for f in SP.spark_schema(S.EVENT_SCHEMA)]
    order = [("file_index", "integer"), ("row_index", "long")]
    schema = StructType(fields)
    for name, kind in [*order, *extra]:
        schema = schema.add(name, kind, True)
    return schema


JUDGED_BY_USER = (("removed_by", "byte"), ("address", "string"), ("user_detail", "string"))
JUDGED = (*JUDGED_BY_USER, ("address_detail", "string"))


def judge_by_user(events, cfg: FilterSettings, spark):
    """Step 2: every event, with the rule that removed it (or KEPT), its canonical address, and
    each group's rule details on the group's first row."""
    def judge(group: pa.Table) -> pa.Table:
        group = SP.in_history_order(group)
        w = W.window_of(group.select(list(S.COLUMNS)).cast(W.WINDOW_SCHEMA))
        result = R.apply_rules(w, cfg, BY_USER)
        removed_by = np.full(len(w), KEPT, np.int8)
        for rule, removed in result.removed_by.items():  # four rules
            removed_by[removed] = RULE_INDEX[rule]
        address = w.addresses.take(pa.array(w.ip.codes, mask=w.ip.codes < 0))
        return (group.append_column("removed_by", pa.array(removed_by))
                .append_column("address", address)
                .append_column("user_detail", _on_first_row(result.details, len(w))))

    from pyspark.sql import functions as F

    return SP.by_group(events, F.col("user_id"), judge, _columns(*JUDGED_BY_USER), spark)


def judge_by_address(judged, cfg: FilterSettings, spark):
    """Step 3: shared_ip over the events still alive, grouped by canonical address (events without
    one go by user: the rule leaves them alone, but still counts a window that has only those)."""
    shared_ip = RULE_INDEX["shared_ip"]

    def judge(group: pa.Table) -> pa.Table:
        group = SP.in_history_order(group)
        alive = np.asarray(pc.equal(group.column("removed_by"), KEPT))
        if not alive.any():
            return group.append_column("address_detail", pa.nulls(group.num_rows, pa.string()))
        rows = group.filter(pa.array(alive))
        w = W.window_of(rows.select(list(S.COLUMNS)).cast(W.WINDOW_SCHEMA))
        result = R.apply_rules(w, cfg, BY_ADDRESS)
        removed_by = group.column("removed_by").to_numpy().copy()
        removed_by[np.flatnonzero(alive)[result.removed_by["shared_ip"]]] = shared_ip
        group = group.set_column(group.schema.get_field_index("removed_by"), "removed_by",
                                 pa.array(removed_by))
        return group.append_column("address_detail",
                                   _on_first_row(result.details, group.num_rows))

    from pyspark.sql import functions as F

    key = F.coalesce(F.col("address"), F.col("user_id"))
    return SP.by_group(judged, key, judge, _columns(*JUDGED), spark)


def _on_first_row(details: dict, rows: int) -> pa.Array:
    """A group's rule details as JSON on its first row, NULL on the rest."""
    return pa.concat_arrays([pa.array([json.dumps(details)], pa.string()),
                             pa.nulls(rows - 1, pa.string())])


def min_support(judged, cfg: FilterSettings, idle: dict):
    """Step 4: users and items with fewer events left than the minimum (one pass). Returns the
    events and the rule's detail."""
    from pyspark.sql import functions as F

    alive = judged.where(F.col("removed_by") == KEPT)
    if not idle["enabled"] or alive.isEmpty():
        return judged, idle
    low = {}
    for column, minimum in (("user_id", cfg.min_user_events), ("item_id", cfg.min_item_events)):
        def below(batches, minimum=minimum, column=column):
            for batch in batches:
                yield batch.filter(pa.array(R.low_support(batch.column("events").to_numpy(),
                                                          minimum))).select([column])

        counts = alive.groupBy(column).agg(F.count("*").alias("events"))
        with SP.arrow_only():
            low[column] = counts.mapInArrow(below, f"{column} string").persist()
    detail = {**R.support_detail(cfg, low["user_id"].count(), low["item_id"].count()),
              "enabled": True}
    flagged = (judged.join(low["user_id"].withColumn("low_user", F.lit(True)), "user_id", "left")
               .join(low["item_id"].withColumn("low_item", F.lit(True)), "item_id", "left"))
    below_minimum = F.coalesce(F.col("low_user"), F.lit(False)) | \
        F.coalesce(F.col("low_item"), F.lit(False))
    removed_by = F.when((F.col("removed_by") == KEPT) & below_minimum,
                        F.lit(RULE_INDEX["min_support"])).otherwise(F.col("removed_by"))
    result = _materialised(flagged.withColumn("removed_by", removed_by.cast("tinyint"))
                           .select(*judged.columns))
    judged.unpersist()
    for frame in low.values():
        frame.unpersist()
    return result, detail


def count(judgement: Judged, cfg: FilterSettings) -> dict:
    """Step 5: what engine.run counts, in the same shape (input, output, bot_or_internal_users,
    ip_texts, rules)."""
    from pyspark.sql import functions as F

    judged, idle = judgement.events, judgement.idle
    tally = _tally(judged)
    try:
        per_rule = {(row["column"], row["removed_by"]): row for row in tally.groupBy(
            "column", "removed_by").agg(F.count("*").alias("values"),
                                        F.sum("rows").alias("rows")).collect()}
        bot = F.col("removed_by").isin([RULE_INDEX[r] for r in R.BOT_RULES])
        whole = {row["column"]: row for row in tally.groupBy("column").agg(
            F.countDistinct("value").alias("values"),
            F.countDistinct(F.when(bot, F.col("value"))).alias("bot_values")).collect()}
        details = {**_merged(judged, BY_USER + BY_ADDRESS, idle),
                   "min_support": judgement.support}

        def of(column: str, rule: int, what: str) -> int:
            row = per_rule.get((column, rule))
            return int(row[what]) if row else 0

        if "distinct_user_agents" in details["crawler_ua"]:  # each matching agent lost its events
            details["crawler_ua"]["distinct_user_agents"] = of("user_agent",
                                                               RULE_INDEX["crawler_ua"], "values")
        rules = {}
        for rule in R.RULES:
            k = RULE_INDEX[rule]
            rules[rule] = {"rows": of("user_id", k, "rows"), "users": of("user_id", k, "values"),
                           **details[rule]}
            if rule in E.TOP_USERS_ADDED and "top_users" not in rules[rule]:
                rules[rule]["top_users"] = []
            if rule == "min_support":
                rules[rule]["items"] = of("item_id", k, "values")
        _rank_top_offenders(tally, rules, cfg.top_offenders)
        if rules["behaviour"].get("top_users"):
            _add_peaks(judged, rules["behaviour"]["top_users"])
        ip_texts = _ip_texts(judged, tally, cfg.top_offenders)
    finally:
        tally.unpersist()
    n = sum(of("user_id", k, "rows") for k in [KEPT, *RULE_INDEX.values()])
    return {"input": {"rows": n, "users": int(whole["user_id"]["values"]) if n else 0,
                      "items": int(whole["item_id"]["values"]) if n else 0},
            "output": {"rows": of("user_id", KEPT, "rows"), "users": of("user_id", KEPT, "values"),
                       "items": of("item_id", KEPT, "values")},
            "bot_or_internal_users": int(whole["user_id"]["bot_values"]) if n else 0,
            "ip_texts": ip_texts, "rules": rules}


TALLIED = ("user_id", "item_id", "ip", "user_agent")


def _tally(judged):
    """One row per (column, value, removed_by) of the tallied columns: rows, and where the value
    first appears in history order (over the whole window, whatever removed it). Small beside
    the events, and every counter is read from it."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    position = F.col("file_index").cast("long") * (1 << POSITION_SHIFT) + F.col("row_index")
    values = F.explode(F.array(*[F.struct(F.lit(c).alias("column"), F.col(c).alias("value"))
                                 for c in TALLIED]))
    tally = (judged.select("removed_by", position.alias("position"), values.alias("v"))
             .where(F.col("v.value").isNotNull())
             .groupBy(F.col("v.column").alias("column"), F.col("v.value").alias("value"),
                      "removed_by")
             .agg(F.count("*").alias("rows"), F.min("position").alias("first")))
    first = F.min("first").over(Window.partitionBy("column", "value"))
    return _materialised(tally.withColumn("first", first))


def _ip_texts(judged, tally, n: int) -> dict:
    """engine.ip_text_counts over the whole window: the events without an IP, those whose IP text
    is no address (no canonical address in step 2), and the commonest such texts, ranked as
    _rank_top_offenders ranks (most rows, ties by first appearance in history order)."""
    from pyspark.sql import functions as F

    unusable = F.col("ip").isNotNull() & F.col("address").isNull()
    row = judged.agg(F.count(F.when(F.col("ip").isNull(), 1)).alias("without"),
                     F.count(F.when(unusable, 1)).alias("unusable"),
                     F.countDistinct(F.when(unusable, F.col("ip"))).alias("values")).first()
    top = []
    if n and row["unusable"]:
        texts = judged.where(unusable).select(F.col("ip").alias("value")).distinct()
        ranked = (tally.where(F.col("column") == "ip").join(texts, "value")
                  .groupBy("value").agg(F.sum("rows").alias("rows"), F.min("first").alias("first"))
                  .orderBy(F.desc("rows"), F.asc("first")).limit(n).collect())
        top = [{"ip": r["value"], "rows": int(r["rows"])} for r in ranked]
    return {"rows_without_ip": int(row["without"] or 0),
            "rows_not_an_address": int(row["unusable"] or 0),
            "values_not_an_address": int(row["values"] or 0), "top_not_an_address": top}


def _merged(judged, rules: tuple[str, ...], idle: dict) -> dict:
    """The groups' details of the given rules, their additive counters summed."""
    from pyspark.sql import functions as F

    groups: dict[str, list] = {rule: [] for rule in rules}
    for row in judged.where(F.col("user_detail").isNotNull() | F.col("address_detail").isNotNull()
                            ).select("user_detail", "address_detail").collect():
        for text in row:
            if text is not None:
                for rule, detail in json.loads(text).items():
                    groups[rule].append(detail)
    merged = {}
    for rule in rules:
        ran = [detail for detail in groups[rule] if detail != idle[rule]]
        if not ran:
            merged[rule] = dict(idle[rule])
            continue
        merged[rule] = dict(ran[0])  # settings (limits, dedupe_seconds) are the same everywhere
        for key in ADDITIVE.get(rule, ()):
            merged[rule][key] = _sum([detail[key] for detail in ran])
    return merged


def _sum(values: list):
    if isinstance(values[0], dict):
        return {key: _sum([v[key] for v in values]) for key in values[0]}
    return sum(values)


def _rank_top_offenders(tally, rules: dict, n: int) -> None:
    """Every top list in `rules`, ranked over the whole window as rules.top_values ranks: most rows
    among the rule's removed events, ties by first appearance in history order (the local
    engine's dictionary order)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if n == 0:
        return
    place = F.row_number().over(Window.partitionBy("column", "removed_by")
                                .orderBy(F.desc("rows"), F.asc("first")))
    table = (tally.where(F.col("removed_by") != KEPT).withColumn("place", place)
             .where(F.col("place") <= n).select("column", "removed_by", "value", "rows", "place")
             .toArrow().sort_by([("place", "ascending")]))
    column, rule, value, rows = (table.column(c).to_pylist()
                                 for c in ("column", "removed_by", "value", "rows"))
    ranked: dict[tuple[str, int], list[dict]] = {}
    for c, k, v, r in zip(column, rule, value, rows):  # at most n per rule and column
        ranked.setdefault((c, k), []).append({c: v, "rows": r})
    for name, entry in rules.items():
        for key, c in TOP_COLUMNS.items():
            if key in entry:
                entry[key] = ranked.get((c, RULE_INDEX[name]), [])


def _add_peaks(judged, top: list[dict]) -> None:
    """The behaviour rule's peak figures for its top users, over the events it judged (those the
    earlier rules left), with rules.peak_figures."""
    from pyspark.sql import functions as F

    seen = [KEPT] + [RULE_INDEX[r] for r in R.RULES[R.RULES.index("behaviour"):]]
    users = [t["user_id"] for t in top]
    table = (judged.where(F.col("removed_by").isin(seen) & F.col("user_id").isin(users))
             .select("user_id", F.unix_micros("ts").alias("us")).toArrow())
    user = table.column("user_id").to_numpy(zero_copy_only=False)
    sec = table.column("us").to_numpy() // 1_000_000  # from the epoch: days split at midnight
    for t in top:  # the few top users
        t.update(R.peak_figures(np.sort(sec[user == t["user_id"]])))


def write_clean(judgement: Judged, out: Path) -> int:
    """Step 6: the kept events, in history order, as the local engine writes them (data/clean's
    day files, dailyrec.quality.filtering.clean: the same bytes)."""
    from pyspark.sql import functions as F

    judged = judgement.events

    staging = os.environ.get(STAGING_URL) or tempfile.mkdtemp(prefix="dailyrec-spark-")
    target = f"{staging.rstrip('/')}/clean-{uuid.uuid4().hex}"
    (judged.where(F.col("removed_by") == KEPT).select(*S.COLUMNS, *SP.ORDER)
     .orderBy("ts", *SP.ORDER).select(*S.COLUMNS).write.parquet(target))
    fs, root = pafs.FileSystem.from_uri(target) if "://" in target else \
        (pafs.LocalFileSystem(), target)
    parts = sorted(info.path for info in fs.get_file_info(pafs.FileSelector(root))
                   if Path(info.path).name.startswith("part-"))
    with clean.DayWriter(out) as writer:
        for part in parts:  # Spark's range partitions, in order
            writer.add(pq.read_table(part, filesystem=fs).select(list(S.COLUMNS))
                       .cast(S.EVENT_SCHEMA))
    fs.delete_dir(root)
    if not os.environ.get(STAGING_URL):
        shutil.rmtree(staging, ignore_errors=True)
    return writer.rows
