"""evaluate: how good is today's configuration, out of time, against baselines; and the gate.

    python -m stages.evaluate [--params params.yaml]

Inputs   data/clean/ (a file per day), models/ (its meta.json must match params.yaml's train
         section), metrics/mlflow.json (the train run); params.yaml run.date, train, eval, mlflow
Outputs  metrics/eval.json             ALS metrics at K=20 and eval.k, counts, `baselines`,
                                       `sessions` (the session protocol), `protocol`
         metrics/gate.json             {"passed", "reason", ...}: publish obeys `passed`
         metrics/plots/eval_at_k.csv   recall/ndcg/precision at k = 1..max(20, eval.k) per model

The split, the baselines (most popular, the published model), the session protocol (visitors
who do not return) and the gate: dailyrec.model.evaluation. Metric definitions:
dailyrec.model.ranking.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

from dailyrec.core import cli, env, metrics, paths, settings
from dailyrec.ops import tracking
from dailyrec.core.files import dvc_md5
from dailyrec.model import evaluation, training
from dailyrec.model import settings as model_settings
from dailyrec.ops import settings as ops


def main_body(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate out of time; write metrics and the gate.")
    ap.add_argument("--params", default=None, help="params file (default params.yaml)")
    args = ap.parse_args(argv)
    params = settings.load(args.params)
    train_config, config = model_settings.train(params), model_settings.evaluation(params)
    mlflow_settings = ops.mlflow(params)
    day = settings.run_date(params)
    evaluation.check_models(paths.MODELS_DIR, train_config, day)
    start = time.perf_counter()
    # The published model is looked up on a thread while the split is made and fitted: MLflow's
    # import and queries are mostly one core's Python, the split mostly one core's NumPy.
    compare = config.compare_published
    with tracking.ahead(functools.partial(tracking.fetch_published, mlflow_settings) if compare
                        else tracking.preload) as lookup:
        published = (lambda: tracking.open_published(lookup.result())) if lookup and compare \
            else None
        out = evaluation.evaluate(train_config, config, day, settings.window_end(params),
                                  training.read_events(paths.CLEAN_DIR, dictionary=True),
                                  published=published)
    report, gate = out["report"], out["gate"]
    # The gate names the model it judged: publish refuses a models/ with another hash.
    gate.update(run_date=report["run_date"], model_md5=dvc_md5(paths.MODELS_DIR))
    metrics.EVAL.write(report)
    metrics.GATE.write(gate)
    evaluation.write_plots(paths.EVAL_PLOTS, out["curves"], max(config.cutoffs))
    out["durations"]["total"] = time.perf_counter() - start
    run_id = None
    if env.mlflow_enabled():
        all_curves = {**out["curves"], **out["session_curves"]}
        flat_curves = {f"{name}_{metric}": values.tolist() for name, c in all_curves.items()
                       for metric, values in c.items() if metric in ("recall", "ndcg")}
        report_for_mlflow = {**report, **{f"duration_s_eval_{k}": round(v, 4)
                                          for k, v in out["durations"].items()}}
        eval_params = {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(config).items()}
        holdout = {"path": str(paths.CLEAN_DIR), "md5": dvc_md5(paths.CLEAN_DIR),
                   "window_end": settings.window_end(params).isoformat()}
        run_id = tracking.log_evaluation(mlflow_settings, eval_params, report_for_mlflow, gate,
                                         flat_curves, out["fit_losses"], metrics.MLFLOW.read(),
                                         holdout=holdout)
    metric = config.gate_metric
    summary = (f"{metric} {report[metric]:.4f}, most-popular "
               f"{report['baselines']['most_popular'][metric]:.4f}"
               if report["status"] == "ok" else report["status"])
    sessions = report["sessions"]
    models = sessions["models"]
    session_summary = (
        f"sessions: {metric} fold-in {models['fold_in'][metric]:.4f}, similar items "
        f"{models['similar_items'][metric]:.4f}, most-popular {models['most_popular'][metric]:.4f}"
        if models["fold_in"] is not None else f"sessions: {sessions['status']}")
    print(f"evaluate {day}: {summary}; {report['counts']['evaluated_users']} users; "
          f"{session_summary}; {sessions['counts']['cases']} visitor sessions; "
          f"gate {'PASSED' if gate['passed'] else 'FAILED'}: {gate['reason']}"
          + (f" (MLflow run {run_id})" if run_id else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_stage("evaluate", main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
