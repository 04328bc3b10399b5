"""Hyperparameter search with Optuna, scored exactly like evaluate (same out-of-time split and metric).

    python -m tools.tune --trials 30 [--apply] [--timeout SECONDS] [--seed N]

Searches factors, regularization, alpha, iterations and the confidence transform (SEARCH_SPACE), each
trial fitted on the days before the holdout and scored on the held-out users (eval.gate_metric). The
first trial is the current params.yaml configuration, so the table shows whether the search beats it.
Float values are rounded to 3 significant digits before a trial runs, so what --apply writes is
exactly what was scored. Every trial is a nested MLflow run under one "tune" run (unless
DAILYREC_MLFLOW=off). --apply writes the best values into params.yaml's train section, keeping its
comments; `dvc repro` then retrains with them.

Reads data/clean/ and params.yaml; writes nothing else (a developer tool, not a DVC
stage).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from dailyrec.core import cli, env, paths, settings
from dailyrec.core.errors import ConfigError
from dailyrec.core.files import write_text
from dailyrec.model import als
from dailyrec.model import evaluation as E
from dailyrec.model import scoring as SCO
from dailyrec.model import split as SPL
from dailyrec.model.recommender import ALSRecommender, PopularRecommender
from dailyrec.model.training import read_events
from dailyrec.model import settings as model_settings
from dailyrec.ops import settings as ops
from dailyrec.model.settings import TRANSFORMS, TrainConfig

# name -> (kind, low, high) or ("categorical", choices)
SEARCH_SPACE: dict[str, tuple] = {
    "factors": ("int_log", 8, 256),
    "regularization": ("float_log", 1e-3, 1.0),
    "alpha": ("float_log", 0.1, 100.0),
    "iterations": ("int", 3, 50),
    "confidence": ("categorical", list(TRANSFORMS)),
}


def round_sig(value: float, digits: int = 3) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def suggest(trial) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in SEARCH_SPACE.items():
        kind = spec[0]
        if kind == "int_log":
            out[name] = trial.suggest_int(name, spec[1], spec[2], log=True)
        elif kind == "int":
            out[name] = trial.suggest_int(name, spec[1], spec[2])
        elif kind == "float_log":
            out[name] = round_sig(trial.suggest_float(name, spec[1], spec[2], log=True))
        else:
            out[name] = trial.suggest_categorical(name, spec[1])
    return out


def current_values(config: TrainConfig) -> dict[str, Any]:
    values = config.as_dict()
    return {name: values[name] for name in SEARCH_SPACE}


def to_config(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    changes = dict(values)
    if "confidence" in changes:
        changes["transform"] = changes.pop("confidence")
    return base.replace(**changes)


def tune(params: settings.Params, trials: int, seed: int | None = None,
         timeout: float | None = None, data_path: Path = paths.CLEAN_DIR,
         out=None) -> dict[str, Any]:
    import optuna

    out = out or sys.stdout

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from dailyrec.ops import tracking

    base = model_settings.train(params)
    config = model_settings.evaluation(params)
    window_end = settings.window_end(params)
    holdout_start = window_end - dt.timedelta(days=config.holdout_days)
    device = als.resolve_device(base.device)
    split = SPL.make_split(read_events(data_path), base.confidence, holdout_start, window_end,
                         config.relevant_event_types)
    if split.train.strength.nnz == 0 or len(split.users) < config.min_test_users:
        raise ConfigError(f"not enough data to tune: {len(split.users)} held-out users with new "
                            f"items before {window_end.date()} (eval.min_test_users="
                            f"{config.min_test_users}); run the pipeline for more days first")
    metric = config.gate_metric
    popular = SCO.score(PopularRecommender(split.train.strength), split, config.cutoffs).metrics
    print(f"tune: {trials} trials on {split.counts['evaluated_users']} held-out users "
          f"({holdout_start.date()}), metric {metric}; most-popular scores {popular[metric]:.4f}",
          file=out, flush=True)
    mlflow = None
    if env.mlflow_enabled():
        mlflow, _ = tracking._connect(ops.mlflow(params))
    sampler = optuna.samplers.TPESampler(seed=base.random_state if seed is None else seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(current_values(base))  # trial 0: what params.yaml has now

    def objective(trial) -> float:
        values = suggest(trial)
        trial_config = to_config(base, values)
        start = time.perf_counter()
        _, fitted = E.fit_on_split(split, trial_config, device)
        scored = SCO.score(ALSRecommender(fitted.model), split, config.cutoffs)
        seconds = time.perf_counter() - start
        value = scored.metrics[metric]
        trial.set_user_attr("values", values)
        if mlflow is not None:
            with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
                mlflow.log_params({f"train.{k}": v for k, v in trial_config.as_dict().items()})
                mlflow.log_metrics({**scored.metrics, "fit_s": fitted.seconds,
                                    "trial_s": seconds})
                for step, loss in enumerate(fitted.losses):
                    mlflow.log_metric("train_loss", loss, step=step)
                mlflow.set_tags({"dailyrec.stage": "tune-trial", "trial": str(trial.number)})
        print(f"  trial {trial.number:3d}  {metric} {value:.4f}  "
              + "  ".join(f"{k}={v}" for k, v in values.items())
              + f"  ({seconds:.1f}s)", file=out, flush=True)
        return value

    parent = mlflow.start_run(run_name=f"tune {settings.run_date(params)}") if mlflow \
        else contextlib.nullcontext()
    with parent:
        if mlflow is not None:
            mlflow.log_params({**{f"train.{k}": v for k, v in base.as_dict().items()},
                               "tune.trials": trials, "tune.metric": metric,
                               "tune.search_space": str(SEARCH_SPACE),
                               "run.date": str(settings.run_date(params))})
            mlflow.set_tags({"dailyrec.stage": "tune", **tracking.git_info()})
            mlflow.log_metrics({f"most_popular_{k}": v for k, v in popular.items()})
        study.optimize(objective, n_trials=trials, timeout=timeout)
        best = study.best_trial
        result = {
            "metric": metric, "best_value": best.value, "best_trial": best.number,
            "best_params": best.user_attrs["values"], "current_value": study.trials[0].value,
            "current_params": current_values(base), "most_popular": popular[metric],
            "trials": len(study.trials),
        }
        if mlflow is not None:
            mlflow.log_metrics({"best_value": best.value, "current_value": result["current_value"],
                                "best_trial": best.number})
            mlflow.set_tags({f"best.{k}": str(v) for k, v in result["best_params"].items()})
            result["run_id"] = mlflow.active_run().info.run_id
    return result


def apply(best: dict[str, Any], path: Path | str | None = None) -> None:
    """Write values into params.yaml's train section, changing nothing else in the file.

    ruamel locates each value (line and column); only that token is replaced, so comments, layout
    and the other sections stay byte for byte (a ruamel dump would re-wrap flow mappings)."""
    import yaml
    from ruamel.yaml import YAML

    path = Path(path or env.params_file())
    text = path.read_text()
    doc = YAML().load(text)
    train = doc.get("train") if hasattr(doc, "get") else None
    if train is None:
        raise ConfigError(f"{path}: no train section to update")
    lines = text.splitlines(keepends=True)
    for key, value in best.items():
        if key not in train:
            raise ConfigError(f"{path}: train.{key} is not there to update")
        line_no, col = train.lc.value(key)
        line = lines[line_no]
        token = re.match(r"[^\s#,}]+", line[col:])
        if token is None:
            raise ConfigError(f"{path}:{line_no + 1}: cannot find the value of train.{key}")
        lines[line_no] = line[:col] + _yaml_scalar(value) + line[col + token.end():]
    updated = "".join(lines)
    check = yaml.safe_load(updated)["train"]
    wrong = {k: check.get(k) for k, v in best.items() if check.get(k) != v}
    if wrong:
        raise ConfigError(f"{path}: could not write {wrong} (expected {best})")
    write_text(path, updated)


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:  # YAML 1.1 floats need a dot
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        return value
    raise ConfigError(f"cannot write {value!r} into params.yaml")


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, required=True, help="number of trials (the first is the "
                    "current configuration)")
    ap.add_argument("--apply", action="store_true", help="write the best values into params.yaml")
    ap.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--seed", type=int, default=None, help="sampler seed (default train.random_state)")
    ap.add_argument("--params", default=str(env.params_file()))
    args = ap.parse_args(argv)
    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    params = settings.load(args.params)
    result = tune(params, args.trials, seed=args.seed, timeout=args.timeout)
    metric = result["metric"]
    print(f"\nbest {metric} {result['best_value']:.4f} (trial {result['best_trial']}); current "
          f"params.yaml {result['current_value']:.4f}; most-popular {result['most_popular']:.4f}")
    print("best train params: " + ", ".join(f"{k}={v}" for k, v in result["best_params"].items()))
    if args.apply:
        if result["best_trial"] == 0:
            print("params.yaml already has the best configuration found: nothing to apply")
        else:
            apply(result["best_params"], args.params)
            print(f"written to {args.params} (train section); run `dvc repro` to retrain")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_stage("tune", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
