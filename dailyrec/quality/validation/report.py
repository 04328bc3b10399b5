"""The validation report: one self-contained HTML page per run (inline CSS, no scripts, no CDN),
and the short summary validate prints, both from templates/validation.{html,txt}.j2."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from dailyrec.core import privacy
from dailyrec.core.files import write_text
from dailyrec.quality.validation.verdict import Verdict
from dailyrec.core.render import render
from dailyrec.quality.settings import ValidateSettings

HTML_TEMPLATE = "validation.html.j2"
TEXT_TEMPLATE = "validation.txt.j2"


def page_path(report_dir: Path, run_date: dt.date) -> Path:
    return Path(report_dir) / f"{run_date.isoformat()}.html"


def summary(cfg: ValidateSettings, verdict: Verdict, report: Path) -> str:
    """The short, human summary printed at the end (stderr when the stage fails)."""
    return render(TEXT_TEMPLATE, cfg=cfg, verdict=verdict, report=report).rstrip("\n")


def write(cfg: ValidateSettings, verdict: Verdict, report_dir: Path) -> Path:
    """The run's page (and index.html, the latest); pages older than validate.report_days go."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    oldest = (cfg.run_date - dt.timedelta(days=cfg.report_days)).isoformat()
    for old in report_dir.glob("????-??-??.html"):
        if old.stem < oldest:
            old.unlink()
    others = sorted({p.stem for p in report_dir.glob("????-??-??.html")} |
                    {cfg.run_date.isoformat()}, reverse=True)
    # The page is committed to git: example rows name people by salted hashes only.
    shown = dataclasses.replace(verdict, outcomes=[
        dataclasses.replace(o, examples=privacy.pseudonymise(o.examples))
        for o in verdict.outcomes])
    page = render(HTML_TEMPLATE, cfg=cfg, verdict=shown, others=others)
    path = page_path(report_dir, cfg.run_date)
    for target in (path, report_dir / "index.html"):
        write_text(target, page)
    return path
