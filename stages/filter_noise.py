"""filter_noise: only trusted, human interactions reach training.

    python -m stages.filter_noise [--params params.yaml] [--history data/history]

Inputs   data/history (the filter.window_days days before run.date; --history names another,
         a gs:// or abfss:// URL with filter.engine: spark), data/rejections.json (days left
         out), metrics/validation.json (validate must have passed for this run.date)
Outputs  data/clean/YYYY-MM-DD.parquet  canonical events that survive every rule, a file per
                                     UTC day, in history order (dailyrec.quality.filtering.clean)
         metrics/filter.json         rows and users removed by each rule, top offenders named by
                                     salted hashes only (it is committed to git)
         reports/filter/offenders.json  the same with the offenders' user ids, IPs and user agents,
                                     and the IP texts that are no address (DVC-cached, never
                                     in git)
Cache    $DAILYREC_STATE_DIR/day-verdicts/  each day's day-local verdicts, by content hash (outside
                                     DVC, safe to delete: dailyrec.quality.filtering.day_verdicts)
         $DAILYREC_STATE_DIR/clean-days/  the day files written, by the day's files and kept events
                                     (read-only hard links, safe to delete: dailyrec.quality.filtering.clean)

The rules, in order (crawler_ua, internal, repeated, behaviour, shared_ip, min_support), and
their settings (params.yaml `filter`): dailyrec.quality.filtering. filter.engine: spark runs the same
rules as Spark jobs (dailyrec.quality.filtering.spark_engine) with the same outputs (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from dailyrec.core import arrays, cli, metrics, paths, privacy, settings
from dailyrec.core.errors import ConfigError, DataError
from dailyrec.core.files import write_json
from dailyrec.quality.validation import rejections
from dailyrec.quality.filtering import engine
from dailyrec.quality import settings as quality


def check_validation(run_date: dt.date) -> None:
    """Refuse to build training data for a run.date validate has not passed (running the stage
    by hand after a failed validate would otherwise train on the rejected day's neighbours)."""
    verdict = metrics.VALIDATION.read()
    if verdict is None:
        raise ConfigError(f"{paths.VALIDATION_METRICS} not found or unreadable: run validate first")
    if verdict["run_date"] != run_date.isoformat():
        raise ConfigError(f"{paths.VALIDATION_METRICS} is for run.date {verdict['run_date']}, not "
                          f"{run_date}: run validate first")
    if verdict["status"] == "failed":
        raise DataError(f"validate failed for run.date {run_date} (see "
                        f"{paths.VALIDATION_METRICS}); fix the data or admit the day "
                        "(python -m stages.validate admit DAY ...)")


def main_body(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description="Filter bots, internal traffic and repeats out of the "
                                             "training window into data/clean/.")
    ap.add_argument("--params", default=None, help="params file (default params.yaml)")
    ap.add_argument("--history", default=str(paths.HISTORY_DIR),
                    help="the history (default data/history); with filter.engine: spark also a "
                         "URL, gs://... or abfss://... (docs/scaling.md)")
    args = ap.parse_args(argv)
    arrays.without_huge_pages()  # the window's arrays: 2-3 s less system time at 20M events
    cfg = quality.filter_rules(settings.load(args.params))
    if "://" in args.history and cfg.engine != "spark":
        raise ConfigError(f"--history {args.history}: a URL needs filter.engine: spark")
    check_validation(cfg.run_date)
    rejected = rejections.rejected_days(rejections.load(paths.REJECTIONS))
    if cfg.engine == "spark":  # PySpark is imported only where this engine is chosen
        from dailyrec.quality.filtering import spark_engine

        counts = spark_engine.run(cfg, args.history, rejected, paths.CLEAN_DIR)
    else:
        counts = engine.run(cfg, Path(args.history), rejected, paths.CLEAN_DIR)
    write_json(paths.FILTER_OFFENDERS, {"run_date": counts["run_date"], "rules": counts["rules"],
                                        "ip_texts": counts["ip_texts"]})
    metrics.FILTER.write(privacy.pseudonymise(counts))
    removed = ", ".join(f"{r} {m['rows']:,} rows/{m['users']:,} users"
                        for r, m in counts["rules"].items() if m["enabled"])
    print(f"filter_noise {cfg.run_date}: {counts['input']['rows']:,} events in "
          f"{counts['window']['days']} days -> kept {counts['output']['rows']:,} "
          f"({counts['removed']['share']:.1%} removed: {removed})")
    if counts["window"]["rejected_days_left_out"]:
        print("  rejected days left out: " + ", ".join(counts["window"]["rejected_days_left_out"]))
    odd = counts["ip_texts"]
    if odd["rows_not_an_address"]:
        print(f"  {odd['rows_not_an_address']:,} events ({odd['values_not_an_address']:,} distinct "
              "IP texts) carry an IP text that is no address: kept, as events without an IP "
              f"(the texts: {paths.FILTER_OFFENDERS})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_stage("filter_noise", main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
