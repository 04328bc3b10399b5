"""The business owner's daily report: what came in, what was cleaned away, how the model did, what
was published, and the main metric over the last runs.

    build(day) -> Report      read metrics/*.json and MLflow; any missing block says so, never fails
    save(report) -> paths     reports/daily/DATE.{html,txt,png,json}
    daily_report(day)         build, save and mail it (the runner calls this after a good run)

The numbers come only from the stages' metrics files (their shapes: dailyrec.core.metrics) and from
MLflow for the history; the JSON saved beside each report is the fallback history when MLflow has
none. Text and HTML are rendered from the same data by templates/daily.{txt,html}.j2.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dailyrec.core import env, metrics
from dailyrec.core.files import write_bytes, write_json, write_text
from dailyrec.core.render import render
from dailyrec.ops.settings import ReportSettings

log = logging.getLogger("dailyrec.ops.report")

from dailyrec.ops.report_data import (METRIC_FILES, METRICS_DIR, REPORTS_DIR, Point, history,
                                      lift, metric_label, number, summarize)


@dataclass
class Report:
    day: dt.date
    subject: str
    text: str
    html_body: str  # contains {image_src} where the chart goes
    chart_png: bytes | None
    summary: dict[str, Any]
    chart_cid: str = ""

    def html(self, image_src: str) -> str:
        return self.html_body.replace("{image_src}", html.escape(image_src, quote=True))


# --------------------------------------------------------------------------- reading inputs


# --------------------------------------------------------------------------- history


# --------------------------------------------------------------------------- summary


# --------------------------------------------------------------------------- rendering

def _count(value: Any) -> str:
    from dailyrec.core.render import count

    return count(value)


def _signed(delta: float | None, digits: int = 4) -> str:
    return "n/a" if delta is None else f"{delta:+.{digits}f}"


def metric_rows(summary: dict, previous: dict[str, float] | None) -> list[dict[str, Any]]:
    rows = []
    baseline = summary["eval"]["baseline"]
    for name, value in summary["eval"]["metrics"].items():
        before = (previous or {}).get(name)
        rows.append({
            "metric": name, "label": metric_label(name), "value": value,
            "previous": before, "change": None if before is None else value - before,
            "baseline": baseline.get(name), "vs_baseline": lift(value, baseline.get(name)),
        })
    return rows


def subject_line(summary: dict, metric: str, rows: list[dict]) -> str:
    day = summary["run_date"]
    main = next((r for r in rows if r["metric"] == metric), None)
    score = "" if main is None else (f" · {main['label']} {main['value']:.4f}"
                                    + (f" ({main['change']:+.4f})" if main["change"] is not None
                                       else ""))
    publish, gate = summary.get("publish"), summary.get("gate")
    validation = summary.get("validation") or {}
    if publish and publish.get("version") is not None:
        what = f"new recommendations for {_count(publish.get('users'))} users"
    elif validation.get("day_rejected") or summary.get("outcome") == "rejected":
        what = "the day's data was REJECTED, yesterday's recommendations stay"
    elif gate is not None and not gate["passed"]:
        what = "model NOT published, yesterday's recommendations stay (quality gate failed)"
    else:
        what = "nothing published"
    return f"Daily recommendations {day}: {what}{score}"


def chart_png(points: list[Point], metric: str, baseline_label: str) -> bytes | None:
    """The main metric over the last runs (PNG, matplotlib's Agg backend: no display needed)."""
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 2.6), dpi=100)
    ax = fig.add_subplot()
    days = [p.day for p in points]
    ax.plot(days, [p.value for p in points], marker="o", markersize=3.5, color="#1f6feb",
            label="model")
    if any(p.baseline is not None for p in points):
        base = [(p.day, p.baseline) for p in points if p.baseline is not None]
        ax.plot([d for d, _ in base], [v for _, v in base], linestyle="--", color="#888888",
                label=baseline_label)
        ax.legend(loc="best", fontsize=8, frameon=False)
    ax.plot([days[-1]], [points[-1].value], marker="o", markersize=7, color="#d1242f")
    ax.set_title(f"{metric_label(metric)}, last {len(points)} runs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def render_text(summary: dict, rows: list[dict], subject: str, prev_day: str | None,
                n_points: int, source: str) -> str:
    return render("daily.txt.j2", **_context(summary, rows, subject, prev_day, n_points, source,
                                             False))


def render_html(summary: dict, rows: list[dict], subject: str, prev_day: str | None,
                n_points: int, source: str, has_chart: bool) -> str:
    """The HTML body; `{image_src}` stands where the chart goes (a cid: link in the mail, a data:
    URL in the saved page)."""
    return render("daily.html.j2", **_context(summary, rows, subject, prev_day, n_points, source,
                                              has_chart))


def _context(summary: dict, rows: list[dict], subject: str, prev_day: str | None, n_points: int,
             source: str, has_chart: bool) -> dict[str, Any]:
    """What both templates show, computed once."""
    absent = {name: _absent(summary, name) for name in METRIC_FILES}
    return {"s": summary, "rows": rows, "subject": subject, "prev_day": prev_day,
            "n_points": n_points, "source": source, "has_chart": has_chart,
            "data_lines": _data_lines(summary), "window_note": _window_note(summary["filter"]),
            "train_lines": None if summary["train"] is None else _train_lines(summary["train"]),
            "publish_lines": _publish_lines(summary), "absent": absent}


def _window_note(filt: dict | None) -> str:
    days = None if filt is None else number(filt.get("window_days"))
    return f" (training window: last {int(days)} days)" if days else ""


def _train_lines(train: dict) -> list[str]:
    secs = train["seconds"]
    lines = [f"Training time: {'n/a' if secs is None else f'{secs:.1f} s'} on "
             f"{train['device'] or 'n/a'}"]
    if train.get("users") is not None:
        lines.append(f"Model size: {_count(train['users'])} users x {_count(train['items'])} "
                     "items")
    return lines


def _data_lines(summary: dict) -> list[str]:
    """Data checks (validate) and the history kept, when known."""
    lines = []
    validation, hist = summary.get("validation"), summary.get("history")
    if validation is not None:
        failed, warned = number(validation.get("failed")), number(validation.get("warned"))
        verdict = "passed" if validation.get("passed") is not False else "FAILED"
        detail = []
        if failed:
            detail.append(f"{int(failed)} failed")
        if warned:
            detail.append(f"{int(warned)} warning(s)")
        lines.append(f"Data checks: {verdict}" + (f" ({', '.join(detail)})" if detail else ""))
        if validation.get("day_rejected"):
            lines.append("The day's data was REJECTED and kept out of training")
    if hist is not None and hist.get("days") is not None:
        lines.append(f"History kept: {_count(hist['days'])} days, {_count(hist['rows'])} events")
    return lines


def _absent(summary: dict, name: str) -> str:
    if name in summary.get("stale", []):
        return f"not available (metrics/{name}.json is from another day: the stage did not run)"
    return f"not available (metrics/{name}.json missing)"


def _publish_lines(summary: dict) -> list[str]:
    gate, publish, ml = summary["gate"], summary["publish"], summary["mlflow"]
    lines = []
    if gate is not None:
        reason = str(gate["reason"] or "").removeprefix("passed: ").removeprefix("failed: ")
        lines.append(f"Quality gate: {'passed' if gate['passed'] else 'FAILED'}"
                     + (f" ({reason})" if reason else ""))
    if publish is not None and publish.get("version") is not None:
        model = ""
        if publish.get("model_version") is not None:
            model = f" (MLflow model {publish.get('model_name') or 'model'} " \
                    f"v{publish['model_version']})"
        lines.append(f"Published version {publish['version']}{model}: recommendations for "
                     f"{_count(publish['users'])} users")
        if number(publish.get("users_without_recommendations")):
            lines.append(f"{_count(publish['users_without_recommendations'])} users got no "
                         "personal list (they see the most popular items)")
        if publish.get("previous_version"):
            lines.append(f"Replaces version {publish['previous_version']} (kept for rollback)")
        if publish.get("forced"):
            lines.append("WARNING: published with --force although the quality gate failed")
    elif "publish" in summary.get("stale", []) or (gate is not None and not gate["passed"]) \
            or (summary.get("validation") or {}).get("day_rejected") \
            or summary.get("outcome") == "rejected":
        lines.append("Nothing published today: users keep the recommendations of the last "
                     "published version")
    else:
        lines.append(_absent(summary, "publish"))
    if ml and ml.get("run_id"):
        lines.append(f"MLflow run {ml['run_id']}")
    served = summary.get("served")
    if served and served.get("error"):
        lines.append(f"Served now: unknown ({served['error']})")
    elif served and served.get("model_version"):
        age = served.get("age_hours")
        limit = served.get("max_age_hours")
        line = (f"Served now: version {served['model_version']}, built from the data of "
                f"{served.get('run_date')}" + ("" if age is None else f", {age:.0f} hours old"))
        if served.get("stale"):
            line = f"WARNING: {line}, older than the {limit:g} hours allowed " \
                   "(serving.max_age_hours): the daily runs are not publishing"
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- entry points

def build(day: dt.date, metrics_dir: Path = METRICS_DIR, reports_dir: Path = REPORTS_DIR,
          settings: ReportSettings | None = None, experiment: str | None = None,
          notes: list[str] = (), served: dict | None = None, outcome: str | None = None
          ) -> Report:
    """The day's report from its metrics files and the MLflow history. settings and experiment
    default to params.yaml's report and mlflow.experiment."""
    if settings is None or experiment is None:
        from dailyrec.core import settings as params_file
        from dailyrec.ops import settings as ops

        params = params_file.load()
        settings = settings or ops.report(params)
        experiment = experiment or ops.mlflow(params).experiment
    metric, runs = settings.main_metric, settings.chart_runs
    summary = summarize(metrics.snapshot(day, metrics_dir), metric)
    summary["notes"] = list(notes)  # what the runner had to say: recoveries, a push to retry
    summary["served"] = served  # what the API serves now and how old it is (the runner's check)
    summary["outcome"] = outcome  # the runner's word for the day: published, rejected, ...
    experiment = (summary["mlflow"] or {}).get("experiment") or experiment
    points, source = history(summary, metric, runs, reports_dir, experiment)
    earlier = [p for p in points if p.day < day]
    previous = earlier[-1] if earlier else None
    if previous is not None and not set(summary["eval"]["metrics"]) & set(previous.metrics):
        previous = None
    rows = metric_rows(summary, previous.metrics if previous else None)
    prev_day = None if previous is None else (
        "yesterday" if previous.day == day - dt.timedelta(days=1) else previous.day.isoformat())
    summary["eval"]["previous_day"] = None if previous is None else previous.day.isoformat()
    summary["eval"]["previous"] = {} if previous is None else {
        k: previous.metrics[k] for k in summary["eval"]["metrics"] if k in previous.metrics}
    summary["chart"] = {"metric": metric, "source": source,
                        "points": [[p.day.isoformat(), p.value] for p in points]}
    subject = subject_line(summary, metric, rows)
    png = chart_png(points, metric, summary["eval"]["baseline_label"])
    return Report(
        day=day, subject=subject,
        text=render_text(summary, rows, subject, prev_day, len(points), source),
        html_body=render_html(summary, rows, subject, prev_day, len(points), source,
                              png is not None),
        chart_png=png, summary=summary, chart_cid=f"chart-{day.isoformat()}@dailyrec")


def save(report: Report, reports_dir: Path = REPORTS_DIR) -> list[Path]:
    """reports/daily/DATE.html (chart embedded, opens on its own), .txt, .png and .json."""
    import base64

    reports_dir = Path(reports_dir)
    stem = reports_dir / report.day.isoformat()
    image = "" if report.chart_png is None else \
        "data:image/png;base64," + base64.b64encode(report.chart_png).decode()
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(report.subject)}</title></head><body>{report.html(image)}</body></html>")
    written = [stem.with_suffix(".html"), stem.with_suffix(".txt"), stem.with_suffix(".json")]
    write_text(written[0], page)
    write_text(written[1], report.text)
    write_json(written[2], report.summary)
    if report.chart_png is not None:
        write_bytes(stem.with_suffix(".png"), report.chart_png)
        written.append(stem.with_suffix(".png"))
    return written


def preload() -> None:
    """Import what build() imports later (MLflow and, for a database URI, its SQL stores, as
    tracking.preload does; matplotlib): about 3 s of one core's Python that the runner does on a
    thread while DVC and the stages run, instead of at the end of the day. Nothing is connected
    or written; an import that fails is left for build() to meet and handle."""
    try:
        if not env.mlflow_store_missing():
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            from dailyrec.ops import tracking

            tracking.preload()
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure  # noqa: F401
    except Exception:  # noqa: BLE001 - build() meets it again, and handles it
        pass


def daily_report(day: dt.date, send: bool = True, metrics_dir: Path = METRICS_DIR,
                 reports_dir: Path = REPORTS_DIR, notes: list[str] = (),
                 served: dict | None = None, outcome: str | None = None) -> tuple[Report, bool]:
    """Build, save and (unless send is False) mail the day's report; returns it and whether it
    was mailed."""
    from dailyrec.ops import notify

    report = build(day, metrics_dir, reports_dir, notes=notes, served=served, outcome=outcome)
    save(report, reports_dir)
    return report, (notify.send_report(report) if send else False)
