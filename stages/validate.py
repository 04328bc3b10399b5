"""validate: Great Expectations suites on the day's delta and on the training window.

    python -m stages.validate                      the DVC stage (reads params.yaml)
    python -m stages.validate admit DAY --by NAME --note TEXT    re-admit a rejected day
    python -m stages.validate reject DAY --by NAME --note TEXT   keep a day out of training by hand
    python -m stages.validate status               list rejected and admitted days

Outputs
    metrics/validation.json        every expectation: pass/fail, severity, observed, expected
    reports/validation/DATE.html   the run's report (self-contained, no CDN); index.html: latest
    data/rejections.json           the rejection ledger (dailyrec/quality/validation/rejections.py)

The suites and their thresholds: dailyrec.quality.validation.expectations and params.yaml `validate`. A
failing `fail` expectation rejects the day and exits 65 (bad data), so `dvc repro` stops here:
nothing downstream runs and yesterday's published lists stay served. The rejection is a verdict
(dailyrec.core.errors.DayRejected): the daily runner records the day as done and later days run
without it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from dailyrec.core import arrays, cli, metrics, paths, settings
from dailyrec.core.errors import ConfigError, DayRejected
from dailyrec.quality.validation import rejections, report as validation_report, window_facts
from dailyrec.quality.validation import verdict as VD
from dailyrec.quality import settings as quality


def run(args) -> int:
    arrays.without_huge_pages()  # the window's arrays: less system time (docs/benchmarks.md)
    cfg = quality.validate(settings.load(args.params))
    report = validation_report.page_path(paths.VALIDATION_REPORTS, cfg.run_date)
    verdict = VD.validate(cfg, paths.DELTA_EVENTS, paths.DELTA_QUARANTINE,
                                    paths.HISTORY_DIR, paths.REJECTIONS, str(report),
                                    facts_dir=window_facts.default_dir())
    metrics.VALIDATION.write(VD.payload(cfg, verdict))
    validation_report.write(cfg, verdict, paths.VALIDATION_REPORTS)
    text = validation_report.summary(cfg, verdict, report)
    if verdict.status == "failed":
        print(text, file=sys.stderr)
        what = f"day {cfg.day} is rejected" if verdict.rejected_now else \
            "the training window fails its checks"
        raise DayRejected(f"{what} (report: {report})")
    print(text)
    return 0


def ledger_command(args) -> int:
    ledger = rejections.load(args.ledger)
    if args.command == "status":
        days = ledger["days"]
        if not days:
            print("no rejected or admitted days")
        for day, entry in days.items():
            who = entry.get("admitted_by") or entry.get("rejected_by") or entry.get("origin", "")
            print(f"{day}  {entry['status']:<8}  {who}  {entry.get('note', '')}")
            for failure in entry.get("failures", [])[:5]:
                print(f"            {failure}")
        return 0
    day = rejections.parse_day(args.day)
    if not args.note.strip():
        raise ConfigError("--note must say why (it is kept in the ledger)")
    if args.command == "admit":
        rejections.admit(ledger, day, args.by, args.note)
    else:
        rejections.reject(ledger, day, args.by, args.note)
    rejections.save(ledger, args.ledger)
    done = {"admit": "admitted", "reject": "rejected"}[args.command]
    print(f"{day} {done} by {args.by} in {args.ledger}; run `dvc repro` to rebuild the training "
          "window (and commit the ledger with dvc.lock)")
    return 0


def main_body(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.validate",
                                 description="Validate the delta and the training window; manage "
                                             "rejected days.")
    ap.add_argument("--params", default=None, help="params file (default params.yaml)")
    sub = ap.add_subparsers(dest="command")
    for name, text in (("admit", "re-admit a rejected day after a person has looked at it"),
                       ("reject", "keep a day out of training by hand")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("day", help="the event day, YYYY-MM-DD (run.date - 1 of the failed run)")
        cmd.add_argument("--by", default=getpass.getuser(), help="who decided (default: $USER)")
        cmd.add_argument("--note", required=True, help="why; kept in the ledger")
        cmd.add_argument("--ledger", default=str(paths.REJECTIONS), type=Path)
    status = sub.add_parser("status", help="list rejected and admitted days")
    status.add_argument("--ledger", default=str(paths.REJECTIONS), type=Path)
    args = ap.parse_args(argv)
    return ledger_command(args) if args.command else run(args)


def main(argv: list[str] | None = None) -> int:
    return cli.run_stage("validate", main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
