"""The business owner's daily report: what came in, what was cleaned away, how the model did, what
was published, and the main metric over the last runs.

    build(day) -> Report      read metrics/*.json and MLflow; any missing block says so, never fails
    save(report) -> paths     reports/daily/DATE.{html,txt,png,json}
    daily_report(day)         build, save and mail it (the runner calls this after a good run)

The numbers come only from the stages' metrics files (their keys are the stages' contract) and
from MLflow for the history; the JSON saved beside each report is the fallback history when
MLflow has none.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages import params as P

log = logging.getLogger("dailyrec.report")

METRICS_DIR = Path("metrics")
REPORTS_DIR = Path("reports/daily")
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"
DEFAULT_MAIN_METRIC = "ndcg_at_20"
DEFAULT_CHART_RUNS = 30
METRIC_FILES = ("fetch", "history", "validation", "filter", "train", "eval", "gate", "publish",
                "mlflow")
# Evaluation metrics in the order the report lists them (others found in eval.json follow).
METRIC_ORDER = ("ndcg", "recall", "precision", "map", "hit_rate", "coverage",
                "mean_percentile_rank")


@dataclass
class Point:
    """One run in the chart's history."""
    day: dt.date
    value: float
    baseline: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


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

def load_metrics(metrics_dir: Path = METRICS_DIR,
                 day: dt.date | None = None) -> tuple[dict[str, dict | None], list[str]]:
    """Each stage's metrics file (None where missing or unreadable), and the names of those left
    out because they belong to another day (a stage that failed or did not run today)."""
    found: dict[str, dict | None] = {}
    stale: list[str] = []
    for name in METRIC_FILES:
        path = Path(metrics_dir) / f"{name}.json"
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            value = None
        if isinstance(value, dict) and day is not None and not _is_for(value, day):
            stale.append(name)
            value = None
        found[name] = value if isinstance(value, dict) else None
    return found, stale


def _is_for(block: dict, day: dt.date) -> bool:
    """Whether a metrics block describes run.date `day`: its run_date, or for publish.json its
    version, which starts with the run date."""
    if block.get("run_date") is not None:
        return str(block["run_date"])[:10] == day.isoformat()
    if "users_written" in block and block.get("version") is not None:
        return str(block["version"]).startswith(day.isoformat())
    return True


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _pick(block: dict | None, *keys: str, default: Any = None) -> Any:
    """The first of keys present in block (dotted keys reach into nested dicts)."""
    if not isinstance(block, dict):
        return default
    for key in keys:
        node: Any = block
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return default


def eval_metrics(block: dict | None, cutoff: Any = None) -> dict[str, float]:
    """The model's evaluation metrics from eval.json: those at `cutoff` (default: eval.json's `k`;
    every cutoff when neither is known) and the cutoff-free ones such as mean_percentile_rank."""
    if not isinstance(block, dict):
        return {}
    return _ordered(_metric_subset(block, cutoff or block.get("k")))


def _metric_subset(source: dict, k: Any) -> dict[str, float]:
    out = {}
    for name, value in source.items():
        stem, _, cutoff = name.partition("_at_")
        if stem not in METRIC_ORDER or _number(value) is None:
            continue
        if cutoff and k is not None and cutoff != str(k):
            continue
        out[name] = float(value)
    return out


def baseline_metrics(block: dict | None, cutoff: Any = None) -> tuple[str, dict[str, float]]:
    """The most-popular baseline's metrics (eval.json baselines.most_popular), and its label."""
    label = "most popular"
    if not isinstance(block, dict):
        return label, {}
    popular = _pick(block, "baselines.most_popular", "most_popular", "baseline")
    if not isinstance(popular, dict):
        return label, {}
    return label, _ordered(_metric_subset(popular, cutoff or block.get("k")))


def _ordered(metrics: dict[str, float]) -> dict[str, float]:
    def rank(name: str) -> tuple[int, str]:
        stem = name.split("_at_")[0]
        return (METRIC_ORDER.index(stem) if stem in METRIC_ORDER else len(METRIC_ORDER), name)
    return {k: metrics[k] for k in sorted(metrics, key=rank)}


def report_settings(params: dict | None) -> tuple[str, int]:
    section = (params or {}).get("report") or {}
    metric = str(section.get("main_metric") or DEFAULT_MAIN_METRIC)
    runs = int(section.get("chart_runs") or DEFAULT_CHART_RUNS)
    return metric, max(2, runs)


# --------------------------------------------------------------------------- history

def _sqlite_missing(uri: str) -> bool:
    """A sqlite tracking URI whose file does not exist: no history (and do not create one)."""
    if not uri.startswith("sqlite:///"):
        return False
    return not Path(uri.removeprefix("sqlite:///")).exists()


# Runs of the daily pipeline carry run.date (stages/tracking.py); tuning runs (stages/tune.py) share
# the experiment and are left out of the daily history.
NOT_DAILY_STAGES = {"tune", "tune-trial"}


def _run_day(run) -> dt.date | None:
    if run.data.tags.get("dailyrec.stage") in NOT_DAILY_STAGES:
        return None
    raw = run.data.params.get("run.date") or run.data.tags.get("dailyrec.run_date")
    try:
        return dt.date.fromisoformat(str(raw)[:10]) if raw else None
    except ValueError:
        return None


def mlflow_history(experiment: str, metric: str, before_or_on: dt.date,
                   uri: str | None = None, limit: int = 500) -> list[Point]:
    """One point per run date (the latest run of that date) that logged `metric`, oldest first.
    The most-popular baseline is the run's `most_popular_<metric>` (as evaluate logs it)."""
    uri = uri or os.environ.get(MLFLOW_URI_ENV) or DEFAULT_MLFLOW_URI
    if _sqlite_missing(uri):
        return []
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    by_day: dict[dt.date, Point] = {}
    for run in runs:  # newest first: the first run seen for a date wins
        metrics = run.data.metrics
        day = _run_day(run)
        if metric not in metrics or day is None or day > before_or_on or day in by_day:
            continue
        baseline = metrics.get(f"most_popular_{metric}")
        by_day[day] = Point(day, float(metrics[metric]),
                            None if baseline is None else float(baseline), dict(metrics))
    return [by_day[d] for d in sorted(by_day)]


def saved_history(metric: str, before_or_on: dt.date,
                  reports_dir: Path = REPORTS_DIR) -> list[Point]:
    """History from the JSON summaries saved beside earlier reports (when MLflow has none)."""
    points = []
    for path in sorted(Path(reports_dir).glob("*.json")):
        try:
            summary = json.loads(path.read_text())
            day = dt.date.fromisoformat(summary["run_date"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        metrics = (summary.get("eval") or {}).get("metrics") or {}
        baseline = (summary.get("eval") or {}).get("baseline") or {}
        if day <= before_or_on and _number(metrics.get(metric)) is not None:
            points.append(Point(day, float(metrics[metric]), _number(baseline.get(metric)),
                                {k: float(v) for k, v in metrics.items()
                                 if _number(v) is not None}))
    return points


def history(summary: dict, metric: str, runs: int, reports_dir: Path = REPORTS_DIR,
            experiment: str = "dailyrec") -> tuple[list[Point], str]:
    """The last `runs` points up to today, and where they came from."""
    day = dt.date.fromisoformat(summary["run_date"])
    try:
        points, source = mlflow_history(experiment, metric, day), "MLflow"
    except Exception as err:  # noqa: BLE001 - a history problem must not cost the report
        log.warning("MLflow history unavailable: %s", err)
        points, source = [], "MLflow"
    if not points:
        points, source = saved_history(metric, day, reports_dir), "saved reports"
    today = summary["eval"]["metrics"].get(metric)
    if today is not None:  # today's own numbers are authoritative
        points = [p for p in points if p.day != day]
        points.append(Point(day, today, summary["eval"]["baseline"].get(metric),
                            dict(summary["eval"]["metrics"])))
    return points[-runs:], source


# --------------------------------------------------------------------------- summary

def summarize(day: dt.date, metrics: dict[str, dict | None], stale: list[str] = (),
              main_metric: str = DEFAULT_MAIN_METRIC) -> dict[str, Any]:
    """The report's numbers from the stages' metrics files; a missing file leaves its block None.
    The evaluation table shows the main metric's cutoff (ndcg_at_20: @20)."""
    cutoff = main_metric.partition("_at_")[2] or None
    fetch, filt, train = metrics.get("fetch"), metrics.get("filter"), metrics.get("train")
    evaluation, gate, publish = metrics.get("eval"), metrics.get("gate"), metrics.get("publish")
    mlflow_info, hist, validation = metrics.get("mlflow"), metrics.get("history"), \
        metrics.get("validation")
    baseline_label, baseline = baseline_metrics(evaluation, cutoff)
    summary: dict[str, Any] = {
        "run_date": day.isoformat(),
        "missing": [name for name in METRIC_FILES
                    if metrics.get(name) is None and name not in stale],
        "stale": list(stale),
        "fetch": None if fetch is None else {
            "fetched": _pick(fetch, "fetched"),
            "kept": _pick(fetch, "kept"),
            "duplicates": _pick(fetch, "duplicates"),
            "quarantined": _pick(fetch, "quarantined"),
            "quarantined_by_reason": dict(_pick(fetch, "quarantined_by_reason", default={})),
        },
        "history": None if hist is None else {
            "days": _pick(hist, "days"), "rows": _pick(hist, "rows"), "added": _pick(hist, "added"),
        },
        "validation": None if validation is None else {
            "passed": _pick(validation, "passed"),
            "failed": _pick(validation, "failed"),
            "warned": _pick(validation, "warned"),
            "day_rejected": _pick(validation, "day_rejected"),
        },
        "filter": None if filt is None else _filter_summary(filt),
        "train": None if train is None else {
            "seconds": _number(_pick(train, "durations_s.fit", "fit_seconds", "seconds")),
            "stage_seconds": _number(_pick(train, "durations_s.total")),
            "device": _pick(train, "device", "backend"),
            "users": _pick(train, "users", "n_users"),
            "items": _pick(train, "items", "n_items"),
            "interactions": _pick(train, "nonzeros", "events"),
        },
        "eval": {
            "metrics": eval_metrics(evaluation, cutoff),
            "baseline": baseline,
            "baseline_label": baseline_label,
            "status": _pick(evaluation, "status"),
        },
        "gate": None if gate is None else {
            "passed": bool(_pick(gate, "passed", default=False)),
            "reason": _pick(gate, "reason", default=""),
        },
        "publish": None if publish is None else {
            "version": _pick(publish, "version"),
            "previous_version": _pick(publish, "previous_version"),
            "users": _pick(publish, "users_written", "users"),
            "users_without_recommendations": _pick(publish, "users_without_recommendations"),
            "forced": bool(_pick(publish, "gate.forced", default=False)),
            "model_version": _pick(publish, "model_run.model_version"),
            "model_name": _pick(publish, "model_run.model_name"),
        },
        "mlflow": None if mlflow_info is None else {
            k: mlflow_info.get(k) for k in ("run_id", "experiment", "model_name", "model_version")
        },
    }
    return summary


RULE_LABELS = {
    "crawler_ua": "known crawlers (user agent)",
    "behaviour": "bot-like behaviour (scrapers)",
    "internal": "internal traffic (staff accounts, office networks)",
    "repeated": "repeated clicks (double clicks, reloads)",
    "min_support": "users and items with too little activity",
}


def _filter_summary(filt: dict) -> dict[str, Any]:
    """Events removed per rule (metrics/filter.json `rules`), over the training window."""
    counts: dict[str, int] = {}
    rules = filt.get("rules") if isinstance(filt.get("rules"), dict) else {}
    for rule, entry in rules.items():
        if isinstance(entry, dict) and entry.get("enabled", True) is not False:
            rows = _number(entry.get("rows"))
            if rows is not None:
                counts[RULE_LABELS.get(rule, rule.replace("_", " "))] = int(rows)
    removed = _number(_pick(filt, "removed.rows"))
    return {
        "removed_by_rule": counts,
        "removed": int(removed) if removed is not None else sum(counts.values()),
        "removed_users": _pick(filt, "removed.bot_or_internal_users"),
        "input": _pick(filt, "input.rows"),
        "kept": _pick(filt, "output.rows"),
        "users": _pick(filt, "output.users"),
        "items": _pick(filt, "output.items"),
        "window_days": _pick(filt, "window.days"),
        "rejected_days": _pick(filt, "window.rejected_days_left_out", default=[]),
    }


# --------------------------------------------------------------------------- rendering

def _count(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{int(number):,}"


def _metric_label(name: str) -> str:
    stem, _, k = name.partition("_at_")
    label = {"ndcg": "NDCG", "map": "MAP", "hit_rate": "Hit rate", "mean_percentile_rank":
             "MPR (lower=better)"}.get(stem, stem.replace("_", " ").capitalize())
    return f"{label}@{k}" if k else label


def _signed(delta: float | None, digits: int = 4) -> str:
    return "n/a" if delta is None else f"{delta:+.{digits}f}"


def _lift(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "n/a"
    return f"{(value - base) / abs(base):+.1%}"


def metric_rows(summary: dict, previous: dict[str, float] | None) -> list[dict[str, Any]]:
    rows = []
    baseline = summary["eval"]["baseline"]
    for name, value in summary["eval"]["metrics"].items():
        before = (previous or {}).get(name)
        rows.append({
            "metric": name, "label": _metric_label(name), "value": value,
            "previous": before, "change": None if before is None else value - before,
            "baseline": baseline.get(name), "vs_baseline": _lift(value, baseline.get(name)),
        })
    return rows


def subject_line(summary: dict, metric: str, rows: list[dict]) -> str:
    day = summary["run_date"]
    main = next((r for r in rows if r["metric"] == metric), None)
    score = "" if main is None else (f" · {main['label']} {main['value']:.4f}"
                                    + (f" ({main['change']:+.4f})" if main["change"] is not None
                                       else ""))
    publish, gate = summary.get("publish"), summary.get("gate")
    if publish and publish.get("version") is not None:
        what = f"new recommendations for {_count(publish.get('users'))} users"
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
    ax.set_title(f"{_metric_label(metric)}, last {len(points)} runs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def render_text(summary: dict, rows: list[dict], subject: str, prev_day: str | None,
                n_points: int, source: str) -> str:
    out = [subject, ""]
    fetch = summary["fetch"]
    out.append("Data received")
    if fetch is None:
        out.append(f"  {_absent(summary, 'fetch')}")
    else:
        out += [f"  Events fetched:        {_count(fetch['fetched'])}",
                f"  Kept:                  {_count(fetch['kept'])}",
                f"  Duplicates dropped:    {_count(fetch['duplicates'])}",
                f"  Quarantined:           {_count(fetch['quarantined'])}"]
        out += [f"    {reason}: {_count(n)}" for reason, n in
                fetch["quarantined_by_reason"].items()]
    out += [f"  {line}" for line in _data_lines(summary)]
    filt = summary["filter"]
    out += ["", "Removed as bots or internal traffic" + _window_note(filt)]
    if filt is None:
        out.append(f"  {_absent(summary, 'filter')}")
    else:
        out.append(f"  Removed:               {_count(filt['removed'])}")
        out += [f"    {rule}: {_count(n)}" for rule, n in filt["removed_by_rule"].items()]
        if filt.get("kept") is not None:
            out.append(f"  Trusted events used:   {_count(filt['kept'])}")
        if filt.get("rejected_days"):
            out.append(f"  Days kept out (failed data checks): {', '.join(filt['rejected_days'])}")
    out += ["", "Training"]
    train = summary["train"]
    if train is None:
        out.append(f"  {_absent(summary, 'train')}")
    else:
        out += [f"  {line}" for line in _train_lines(train)]
    out += ["", "Evaluation" + (f" (change since {prev_day})" if prev_day else "")]
    if not rows:
        out.append(f"  {_absent(summary, 'eval')}")
    else:
        label = summary["eval"]["baseline_label"]
        out.append(f"  {'metric':<22}{'today':>9}{'change':>10}{label:>16}{'lift':>9}")
        for r in rows:
            base = "n/a" if r["baseline"] is None else f"{r['baseline']:.4f}"
            out.append(f"  {r['label']:<22}{r['value']:>9.4f}{_signed(r['change']):>10}"
                       f"{base:>16}{r['vs_baseline']:>9}")
    out += ["", "Published"]
    out += [f"  {line}" for line in _publish_lines(summary)]
    out += ["", f"Chart (HTML version): the main metric over the last {n_points} runs, "
                f"from {source}."]
    if summary["missing"]:
        out += ["", "Missing metrics files: " + ", ".join(f"metrics/{m}.json"
                                                          for m in summary["missing"])]
    return "\n".join(out) + "\n"


def _window_note(filt: dict | None) -> str:
    days = None if filt is None else _number(filt.get("window_days"))
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
        failed, warned = _number(validation.get("failed")), _number(validation.get("warned"))
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
        if _number(publish.get("users_without_recommendations")):
            lines.append(f"{_count(publish['users_without_recommendations'])} users got no "
                         "personal list (they see the most popular items)")
        if publish.get("previous_version"):
            lines.append(f"Replaces version {publish['previous_version']} (kept for rollback)")
        if publish.get("forced"):
            lines.append("WARNING: published with --force although the quality gate failed")
    elif "publish" in summary.get("stale", []) or (gate is not None and not gate["passed"]):
        lines.append("Nothing published today: users keep the recommendations of the last "
                     "published version")
    else:
        lines.append(_absent(summary, "publish"))
    if ml and ml.get("run_id"):
        lines.append(f"MLflow run {ml['run_id']}")
    return lines


def render_html(summary: dict, rows: list[dict], subject: str, prev_day: str | None,
                n_points: int, source: str, has_chart: bool) -> str:
    e = html.escape
    td = 'style="padding:2px 10px;border-bottom:1px solid #eee"'
    tdr = 'style="padding:2px 10px;border-bottom:1px solid #eee;text-align:right"'

    def table(header: list[str], body: list[list[str]]) -> str:
        head = "".join(f'<th {tdr if i else td}>{e(h)}</th>' for i, h in enumerate(header))
        trs = "".join("<tr>" + "".join(f"<td {tdr if i else td}>{e(c)}</td>"
                                       for i, c in enumerate(row)) + "</tr>" for row in body)
        return (f'<table style="border-collapse:collapse;font-size:14px"><tr>{head}</tr>{trs}'
                "</table>")

    def missing(name: str) -> str:
        return f"<p><i>{e(_absent(summary, name))}</i></p>"

    parts = ['<div style="font-family:Arial,Helvetica,sans-serif;color:#222">',
             f"<h2 style=\"font-size:18px\">{e(subject)}</h2>", "<h3>Data received</h3>"]
    fetch = summary["fetch"]
    if fetch is None:
        parts.append(missing("fetch"))
    else:
        body = [["Events fetched", _count(fetch["fetched"])], ["Kept", _count(fetch["kept"])],
                ["Duplicates dropped", _count(fetch["duplicates"])],
                ["Quarantined", _count(fetch["quarantined"])]]
        body += [[f"  quarantined: {r}", _count(n)] for r, n in
                 fetch["quarantined_by_reason"].items()]
        parts.append(table(["", "events"], body))
    parts += [f"<p>{e(line)}</p>" for line in _data_lines(summary)]
    filt = summary["filter"]
    parts.append(f"<h3>Removed as bots or internal traffic{e(_window_note(filt))}</h3>")
    if filt is None:
        parts.append(missing("filter"))
    else:
        body = [[rule, _count(n)] for rule, n in filt["removed_by_rule"].items()]
        body.append(["Total removed", _count(filt["removed"])])
        if filt.get("kept") is not None:
            body.append(["Trusted events used for training", _count(filt["kept"])])
        parts.append(table(["rule", "events"], body))
        if filt.get("rejected_days"):
            parts.append(f"<p>Days kept out (failed data checks): "
                         f"{e(', '.join(filt['rejected_days']))}</p>")
    parts.append("<h3>Training</h3>")
    train = summary["train"]
    if train is None:
        parts.append(missing("train"))
    else:
        parts += [f"<p>{e(line.strip())}</p>" for line in _train_lines(train)]
    parts.append("<h3>Evaluation" + (f" (change since {e(prev_day)})" if prev_day else "")
                 + "</h3>")
    if not rows:
        parts.append(missing("eval"))
    else:
        parts.append(table(
            ["metric", "today", "change", summary["eval"]["baseline_label"], "lift"],
            [[r["label"], f"{r['value']:.4f}", _signed(r["change"]),
              "n/a" if r["baseline"] is None else f"{r['baseline']:.4f}", r["vs_baseline"]]
             for r in rows]))
    parts.append("<h3>Published</h3>")
    parts += [f"<p>{e(line)}</p>" for line in _publish_lines(summary)]
    if has_chart:
        parts.append(f'<p><img src="{{image_src}}" alt="main metric over the last {n_points} '
                     f'runs" style="max-width:100%"></p>'
                     f'<p style="color:#666;font-size:12px">Last {n_points} runs, from '
                     f"{e(source)}.</p>")
    if summary["missing"]:
        parts.append('<p style="color:#666;font-size:12px">Missing metrics files: '
                     + e(", ".join(f"metrics/{m}.json" for m in summary["missing"])) + "</p>")
    parts.append("</div>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- entry points

def build(day: dt.date, metrics_dir: Path = METRICS_DIR, reports_dir: Path = REPORTS_DIR,
          params: dict | None = None) -> Report:
    if params is None:
        try:
            params = P.load()
        except P.ConfigError:
            params = {}
    metric, runs = report_settings(params)
    summary = summarize(day, *load_metrics(metrics_dir, day), main_metric=metric)
    experiment = (summary["mlflow"] or {}).get("experiment") or \
        ((params.get("mlflow") or {}).get("experiment")) or "dailyrec"
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
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = reports_dir / report.day.isoformat()
    image = "" if report.chart_png is None else \
        "data:image/png;base64," + base64.b64encode(report.chart_png).decode()
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(report.subject)}</title></head><body>{report.html(image)}</body></html>")
    written = [stem.with_suffix(".html"), stem.with_suffix(".txt"), stem.with_suffix(".json")]
    written[0].write_text(page)
    written[1].write_text(report.text)
    P.write_json(written[2], report.summary)
    if report.chart_png is not None:
        stem.with_suffix(".png").write_bytes(report.chart_png)
        written.append(stem.with_suffix(".png"))
    return written


def daily_report(day: dt.date, send: bool = True, metrics_dir: Path = METRICS_DIR,
                 reports_dir: Path = REPORTS_DIR) -> tuple[Report, bool]:
    """Build, save and (unless send is False) mail the day's report; returns it and whether it
    was mailed."""
    from stages import notify

    report = build(day, metrics_dir, reports_dir)
    save(report, reports_dir)
    return report, (notify.send_report(report) if send else False)
