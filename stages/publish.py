"""publish: write every user's top-N list to Redis as a new version, then serve it with one switch.

    python -m stages.publish [--force]          publish models/ (refused if the gate failed)
    python -m stages.publish rollback [--to V]  serve the previous complete version (or version V)
    python -m stages.publish versions           list the versions kept in Redis

Inputs   models/, metrics/gate.json (must say passed, unless --force), metrics/mlflow.json
Outputs  Redis at REDIS_URL (a new complete version; readers see whole versions only)
         metrics/publish.json   the version, its users, how long it took

Then the MLflow alias (mlflow.alias) moves to the served model version. A model of a run.date older
than the served version's is not served (rebuilding a past day keeps the newer lists), unless
--force. When the gate says no and
Redis serves nothing yet (a brand-new deployment), the most-popular list is served as a version
of its own (kind "popular") so the API answers 200 instead of 503 until a model passes. How a version is written,
switched to and rolled back: dailyrec.publish.writer. Exit 3 when the gate kept the model back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dailyrec.core import cli, env, metrics, paths, settings
from dailyrec.ops import tracking
from dailyrec.core.errors import NotPublished, ServiceUnavailable
from dailyrec.core.files import dvc_md5
from dailyrec.model import artifacts
from dailyrec.ops import settings as ops
from dailyrec.publish import settings as publish_settings
from dailyrec.publish import connection, writer
from dailyrec.publish import keys as K


def gate_decision(force: bool, models: Path) -> dict:
    """{"passed", "forced", "reason"}; NotPublished unless the gate passed for this very model
    (the hash it names is models/'s) or force is set."""
    gate = metrics.GATE.read()
    model = dvc_md5(models)
    if gate is not None and gate["passed"] and gate["model_md5"] == model:
        return {"passed": True, "forced": False, "reason": gate["reason"]}
    if gate is None:
        why = f"{paths.GATE} is missing or unreadable (run evaluate first)"
    elif not gate["passed"]:
        why = f"the quality gate failed ({paths.GATE}: {gate['reason']})"
    else:
        why = (f"{paths.GATE} judged another model (models/ {gate['model_md5']}, this one is "
               f"{model}): run evaluate on this model first")
    if not force:
        raise NotPublished(f"refusing to publish: {why}. The served version is unchanged; "
                           "`python -m stages.publish --force` publishes anyway.")
    bar = "!" * 78
    print(f"{bar}\npublish: WARNING: --force: publishing although {why}\n{bar}",
          file=sys.stderr, flush=True)
    return {"passed": None if gate is None else gate["passed"], "forced": True,
            "reason": why if gate is None else gate["reason"]}


def print_versions(rows: list[dict]) -> None:
    if not rows:
        print("no versions in Redis")
    for r in rows:
        print(f"{'*' if r['served'] else ' '} {r['version']:<16} {r.get('status', '?'):<9} "
              f"{r.get('kind', 'model'):<8}"
              f"users={r.get('users_written', '-')} created={r.get('created_at', '-')} "
              f"forced={r.get('forced', '0')}")


def run(args, client, layout: K.Layout, where: str) -> int:
    params = settings.load(args.params)
    if args.command == "versions":
        print_versions(writer.version_table(client, layout))
        return 0
    registry, throttle = ops.mlflow(params), ops.throttle_minutes(params)
    if args.command == "rollback":
        was, now = writer.rollback(client, layout, args.to)
        print(f"rollback: now serving {now} (was {was}) from {where}")
        run = json.loads(writer.version_meta(client, layout, now).get("model_run") or "{}")
        if run.get("model_version") is not None and env.mlflow_enabled():
            tracking.move_alias(registry, run["model_version"], throttle)
        return 0
    cfg, day = publish_settings.publish(params), settings.run_date(params)
    import implicit.cpu.als  # noqa: F401  (loads the BLAS that the limit below must reach)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit warns (and slows) with a threaded BLAS
        bundle = artifacts.load(args.models)
    try:
        gate = gate_decision(args.force, args.models)
    except NotPublished as refused:
        # A brand-new deployment: serve the most-popular list rather than 503s until a model
        # passes the gate (a no-op once anything is served).
        popular = writer.publish_popular(bundle, client, cfg, run_date=day, layout=layout,
                                         reason=str(refused))
        if popular is None:
            raise
        raise NotPublished(f"{refused} Nothing was served yet, so the most-popular list is now "
                           f"served as version {popular} (kind popular) from {where}.") from None
    run = metrics.MLFLOW.read() or {}
    with tracking.ahead():  # MLflow's imports on a thread while scoring: the alias moves at once
        summary = writer.publish(bundle, client, cfg, run_date=day, layout=layout, gate=gate,
                                 model_run=run, progress=False if args.no_progress else None,
                                 replace_newer=args.force)
    summary.update(run_date=day.isoformat(), redis=where, gate=gate, model_run=run,
                   mlflow_alias=None)
    if run.get("model_version") is not None and env.mlflow_enabled():
        summary["mlflow_alias"] = tracking.move_alias(registry, run["model_version"], throttle)
    metrics.PUBLISH.write(summary)
    print(f"publish: serving {summary['version']} ({summary['users_written']:,} users, "
          f"{summary['users_per_second']:,.0f} users/s) from {where}; previous "
          f"{summary['previous_version']}; kept {', '.join(summary['kept_versions'])}")
    return 0


def main_body(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.publish",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="publish",
                    choices=["publish", "rollback", "versions"])
    ap.add_argument("--force", action="store_true",
                    help="publish even though the quality gate failed (logged loudly), or a "
                         "newer run.date is served")
    ap.add_argument("--to", metavar="VERSION", help="rollback: the version to serve")
    ap.add_argument("--models", type=Path, default=paths.MODELS_DIR)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--params", default=None, help="params file (default params.yaml)")
    args = ap.parse_args(argv)
    import redis

    client = connection.client(timeout=60.0, retries=3)
    where = connection.redacted(env.redis_url())
    try:
        return run(args, client, K.Layout.from_env(), where)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
        raise ServiceUnavailable(f"cannot reach Redis at {where}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    return cli.run_stage("publish", main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
