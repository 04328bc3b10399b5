"""Benchmark: train.engine spark (Spark MLlib ALS, implicitPrefs) against train.engine local
(implicit, CPU) on the same confidence matrix, at 8 and 64 factors.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/spark_train.py [--users 20000]
        [--items 4000] [--events-per-day 30000] [--days 30] [--iterations 5] [--factors 8 64]

The matrix is train's (dailyrec.model.confidence, params.yaml's train settings) on the simulator's
human traffic (tests.clean_events.human_events), the last day held out. Both engines fit through
dailyrec.model.als.fit, the way train and evaluate do: implicit on the CPU (one BLAS thread, its
own threads on every core), MLlib in Spark local[N] (N = the cores) with train.spark_blocks
blocks. Per engine and factors: seconds per iteration (MLlib: the second of two fits, the first
warms the JVM; both include collecting the factors), implicit's loss function on the final factors,
and recall@10 / NDCG@10 on the held-out day (evaluate's scoring) against most-popular.
The table goes to docs/benchmarks.md (section "spark_train"); docs/scaling.md reads it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import load, markdown_table, publish  # noqa: E402
from dailyrec.core import settings  # noqa: E402
from dailyrec.core import spark as SP  # noqa: E402
from dailyrec.model import als, spark_als  # noqa: E402
from dailyrec.model import confidence as C  # noqa: E402
from dailyrec.model import scoring as SCO  # noqa: E402
from dailyrec.model import split as SPL  # noqa: E402
from dailyrec.model.recommender import ALSRecommender, PopularRecommender  # noqa: E402
from dailyrec.model import settings as model  # noqa: E402
from tests.clean_events import human_events  # noqa: E402

FIRST = dt.date(2026, 10, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=4_000)
    ap.add_argument("--events-per-day", type=int, default=30_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--factors", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)

    started = time.perf_counter()
    events = pa.Table.from_pandas(human_events(FIRST, args.days, users=args.users,
                                               items=args.items,
                                               events_per_day=args.events_per_day),
                                  preserve_index=False)
    print(f"{events.num_rows} events in {time.perf_counter() - started:.0f} s", flush=True)
    base = model.train(settings.load(ROOT / "params.yaml"))
    end = dt.datetime.combine(FIRST + dt.timedelta(days=args.days), dt.time(), dt.timezone.utc)
    split = SPL.make_split(events, base.confidence, end - dt.timedelta(days=1), end,
                         ("view", "click", "add_to_cart", "purchase"))
    matrix = C.confidence(split.train, base.confidence)
    popular = SCO.score(PopularRecommender(split.train.strength), split, [10]).metrics
    users, items = matrix.shape
    print(f"matrix {users} x {items}, {matrix.nnz} nonzeros; {len(split.users)} held-out users",
          flush=True)

    started = time.perf_counter()
    spark = SP.session({"spark.master": f"local[{args.cores}]", "spark.ui.enabled": "false",
                        "spark.driver.memory": "4g",
                        "spark.sql.shuffle.partitions": str(args.cores)})
    spark.sparkContext.setLogLevel("ERROR")
    rows = [["Spark: start the JVM and the session", "", "", f"{time.perf_counter() - started:.1f}",
             "", "", "", "", load()]]
    per_iteration: dict[tuple[str, int], float] = {}
    for factors in args.factors:
        for engine in ("local", "spark"):
            config = base.replace(engine=engine, factors=factors, iterations=args.iterations,
                                  device="cpu", track_loss=False)
            runs = []
            for _ in range(2 if engine == "spark" else 1):
                t = time.perf_counter()
                fitted = als.fit(matrix, config, "cpu")
                runs.append(time.perf_counter() - t)
            wall = runs[-1]
            per_iteration[(engine, factors)] = wall / args.iterations
            scored = SCO.score(ALSRecommender(fitted.model), split, [10]).metrics
            objective = spark_als.loss(matrix, fitted.model, config.regularization)
            label = ("implicit, CPU" if engine == "local"
                     else f"MLlib ALS, local[{args.cores}], {config.spark_blocks} blocks")
            rows.append([label, factors, args.iterations, f"{wall:.2f}",
                         f"{wall / args.iterations:.3f}",
                         "" if engine == "local" else
                         f"{wall / args.iterations / per_iteration[('local', factors)]:.0f}x"
                         + (f" (first fit {runs[0]:.1f} s)" if len(runs) > 1 else ""),
                         f"{objective:.5f}", f"{scored['recall_at_10']:.4f} / "
                         f"{scored['ndcg_at_10']:.4f}", load()])
            print(rows[-1], flush=True)
    rows.append(["most-popular", "", "", "", "", "", "",
                 f"{popular['recall_at_10']:.4f} / {popular['ndcg_at_10']:.4f}", ""])
    with SP.arrow_only():
        spark.stop()

    body = (f"The simulator's human traffic, {args.days} days ({events.num_rows:,} events, "
            f"{args.users:,} users x {args.items:,} items simulated), params.yaml's train "
            f"settings (confidence {base.confidence.transform}, alpha {base.confidence.alpha}, "
            f"regularization {base.regularization}, seed {base.random_state}); the last day held "
            f"out. Matrix: {users:,} x {items:,}, {matrix.nnz:,} nonzeros. Both engines through "
            "`dailyrec.model.als.fit`; loss: implicit's loss function on the final factors "
            "(the objective implicit minimises, whoever fitted them).\n\n"
            + markdown_table(["trainer", "factors", "iterations", "fit s", "s/iteration",
                              "MLlib / implicit", "implicit's loss", "recall@10 / NDCG@10",
                              "load"], rows))
    publish("spark_train", "train.engine: spark (MLlib ALS) against implicit", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
