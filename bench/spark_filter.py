"""Benchmark: filter_noise on the local engine and on the Spark engine, on the same window; and
Spark MLlib's implicit ALS against implicit on the matrix it leaves.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/spark_filter.py [--events 20000000]
        [--groups 16] [--driver-memory 10g] [--als-factors 64] [--als-iterations 3]

The window is bench/filter.py's (the simulator's 60 days, 50,000 users, every kind of bot; built
once under --data and reused). Measured in one run, on this machine:
- the local engine (rules.run: read, rules, write), the fastest of two runs;
- the Spark engine in local[N] mode (spark_engine.run) on the same window: the JVM's start, a
  cold run (first Python workers, JIT) and a warm run, each step timed, and whether both engines
  removed the same rows, kept the same events and counted the same (metrics/filter.json less
  timings);
- the confidence aggregation as Spark triplets against confidence.aggregate (same matrix?);
- where the Spark engine's by-user step spends its time: the scan, the shuffle of the events,
  the round trip of the events through Arrow to the Python workers and back, the rules;
- ALS on that matrix: implicit (CPU, one BLAS thread per core as train does) against MLlib ALS
  with implicitPrefs, both at --als-factors, seconds per iteration;
- peak memory (RSS), each in a fresh process: the local filter_noise, train's matrix build, the
  implicit fit: the bytes per event and per nonzero docs/scaling.md works its limits out from.
The table goes to docs/benchmarks.md (section "spark_filter"); docs/scaling.md reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import filter as FB  # noqa: E402
from bench.report import load, markdown_table, publish  # noqa: E402
from dailyrec.quality.filtering import clean  # noqa: E402
from dailyrec.core import settings
from dailyrec.core import spark as SP  # noqa: E402
from dailyrec.model import confidence as C  # noqa: E402
from dailyrec.model import spark_confidence as SC  # noqa: E402
from dailyrec.model.training import read_events  # noqa: E402
from dailyrec.quality.filtering import engine as FE  # noqa: E402
from dailyrec.quality.filtering import spark_engine as SE  # noqa: E402
from dailyrec.model import settings as model  # noqa: E402
from dailyrec.quality import settings as quality


def comparable(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if k not in ("seconds", "events_per_second")}


def time_als(matrix, config, factors: int, iterations: int, spark) -> dict:
    """implicit's CPU fit and MLlib's implicit ALS on the same confidence matrix: seconds per
    iteration. MLlib takes ratings r and builds c = 1 + alpha * r itself, so it is given
    r = (c - 1) / alpha with our alpha: the same confidences."""
    import implicit
    from pyspark.ml.recommendation import ALS
    from threadpoolctl import threadpool_limits

    out = {"users": matrix.shape[0], "items": matrix.shape[1], "nonzeros": int(matrix.nnz)}
    with threadpool_limits(1, "blas"):
        fit = implicit.cpu.als.AlternatingLeastSquares(
            factors=factors, regularization=config.regularization, iterations=iterations,
            alpha=1.0, random_state=config.random_state, calculate_training_loss=False)
        started = time.perf_counter()
        fit.fit(matrix, show_progress=False)
        out["implicit_s_per_iteration"] = (time.perf_counter() - started) / iterations
    alpha = config.confidence.alpha
    ratings = _ratings_frame(spark, matrix.tocoo(), alpha)
    ratings = ratings.repartition(SP.groups(spark)).persist()
    ratings.count()
    als = ALS(rank=factors, maxIter=iterations, regParam=config.regularization,
              implicitPrefs=True, alpha=alpha, userCol="user", itemCol="item",
              ratingCol="rating", seed=config.random_state, coldStartStrategy="drop",
              numUserBlocks=SP.groups(spark), numItemBlocks=SP.groups(spark))
    started = time.perf_counter()
    fitted = als.fit(ratings)
    fitted.userFactors.count()
    out["mllib_s_per_iteration"] = (time.perf_counter() - started) / iterations
    ratings.unpersist()
    return out


def _ratings_frame(spark, coo, alpha: float):
    """The ratings through a Parquet file (millions of Python tuples would cost more than the
    fit)."""
    import pyarrow as pa

    path = Path("/tmp/dailyrec-bench-spark-ratings.parquet")
    pq.write_table(pa.table({"user": coo.row.astype(np.int32), "item": coo.col.astype(np.int32),
                             "rating": ((coo.data - 1) / alpha).astype(np.float32)}), path)
    return spark.read.parquet(str(path))


def where_by_user_goes(spark, history: Path, cfg) -> list[list]:
    """The by-user step cut into what it does, each timing including the ones before it: scan
    the files, shuffle the events by user, send each group through Arrow to Python and back
    unchanged, and apply the rules (spark_engine.judge_by_user), the output discarded."""
    from pyspark.sql import functions as F

    files = FB.window_files(cfg, history)
    events = SP.read_events(spark, files)
    steps = {
        "scan only": lambda: events.count(),
        "scan, shuffle by user": lambda: events.repartition(SP.groups(spark), "user_id")
        .write.format("noop").mode("overwrite").save(),
        "scan, shuffle, groups through Arrow to Python and back unchanged": lambda: SP.by_group(
            events, F.col("user_id"), lambda table: table, SE._columns(), spark)
        .write.format("noop").mode("overwrite").save(),
        "all of it, the rules too (no persist)": lambda: SE.judge_by_user(
            events, cfg, spark).write.format("noop").mode("overwrite").save(),
    }
    rows = []
    for label, step in steps.items():
        started = time.perf_counter()
        step()
        rows.append([f"by_user again, {label}", f"{time.perf_counter() - started:.1f}", "",
                     load()])
    return rows


MEMORY_STEPS = {
    "filter_noise": """
from dailyrec.quality.filtering import rules as FN
FE.run(quality.filter_rules(FB.bench_params()), HISTORY, set(), Path(OUT).with_suffix('.rss'))
""",
    "matrix_build": """
from dailyrec.model import confidence as C
from dailyrec.model.training import read_events
import scipy.sparse as sp
train = model.train(FB.bench_params())
sp.save_npz(OUT.with_suffix('.npz'), C.confidence(C.aggregate(
    read_events(OUT), train.confidence, settings.window_end(FB.bench_params())),
    train.confidence), compressed=False)
""",
    "implicit_fit": """
import implicit, scipy.sparse as sp
matrix = sp.load_npz(OUT.with_suffix('.npz')).tocsr()
base = peak()  # with the matrix loaded: the fit's own growth is what follows
implicit.cpu.als.AlternatingLeastSquares(factors=FACTORS, iterations=2, random_state=42,
                                         calculate_training_loss=False).fit(matrix,
                                                                            show_progress=False)
""",
}


def peak_memory(clean: Path, history: Path, factors: int = 64) -> dict:
    """Peak RSS of each step in a fresh process, and the peak before it (imports, and for the fit
    the matrix: the fit's own growth is peak - base). VmHWM, not getrusage's ru_maxrss, which a
    child keeps from its parent across exec."""
    import subprocess

    out = {}
    for name, code in MEMORY_STEPS.items():
        script = (f"import sys, json\nsys.path.insert(0, {str(ROOT)!r})\n"
                  "def peak():\n    for line in open('/proc/self/status'):\n"
                  "        if line.startswith('VmHWM:'):\n"
                  "            return int(line.split()[1]) * 1024\n"
                  "from pathlib import Path\nfrom threadpoolctl import threadpool_limits\n"
                  "threadpool_limits(1, 'blas')\nfrom bench import filter as FB\n"
                  "from dailyrec.core import settings\nfrom dailyrec.model import settings as model\nfrom dailyrec.quality import settings as quality\n"
                  f"HISTORY, OUT, FACTORS = Path({str(history)!r}), Path({str(clean)!r}), "
                  f"{factors}\nbase = peak()\n"
                  + code + "print(json.dumps({'base': base, 'peak': peak()}))\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              check=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20_000_000, help="events in the window")
    ap.add_argument("--data", type=Path, default=Path("/tmp/dailyrec-bench-filter"))
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--groups", type=int, default=16, help="spark.sql.shuffle.partitions")
    ap.add_argument("--driver-memory", default="10g")
    ap.add_argument("--arrow-batch", default="100000",
                    help="spark.sql.execution.arrow.maxRecordsPerBatch (Spark's default: 10000)")
    ap.add_argument("--als-factors", type=int, default=64)
    ap.add_argument("--als-iterations", type=int, default=3)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    print(f"building or reusing the window under {args.data} ...", flush=True)
    history, _ = FB.build(args.data, args.events)
    params = FB.bench_params()
    cfg = quality.filter_rules(params)
    out = args.data / "spark-out"
    shutil.rmtree(out, ignore_errors=True)
    rows = []

    local_runs = []
    for _ in range(2):
        started = time.perf_counter()
        counts = FE.run(cfg, history, set(), out / "local" / "clean")
        local_runs.append((time.perf_counter() - started, counts, load()))
    local_s, local, local_load = min(local_runs, key=lambda r: r[0])
    n = local["input"]["rows"]
    sec = local["seconds"]
    rows += [["local: read the window", f"{sec['read']:.1f}", "", local_load],
             ["local: the six rules", f"{sec['rules']:.1f}", f"{n / sec['rules'] / 1e6:.2f}",
              local_load],
             ["local: write data/clean", f"{sec['write']:.1f}", "", local_load],
             ["local: whole stage", f"{local_s:.1f}", f"{n / local_s / 1e6:.2f}", local_load]]
    print(f"local: {local_s:.1f} s", flush=True)

    started = time.perf_counter()
    spark = SP.session({"spark.master": f"local[{args.cores}]",
                        "spark.sql.shuffle.partitions": str(args.groups),
                        "spark.driver.memory": args.driver_memory, "spark.ui.enabled": "false",
                        "spark.sql.execution.arrow.maxRecordsPerBatch": args.arrow_batch,
                        "spark.local.dir": str(args.data / "spark-tmp")})
    spark.sparkContext.setLogLevel("ERROR")
    start_s = time.perf_counter() - started
    rows.append([f"spark local[{args.cores}]: start the JVM and the session", f"{start_s:.1f}",
                 "", load()])
    sparked_runs = []
    for label in ("cold", "warm"):
        started = time.perf_counter()
        counts = SE.run(cfg, history, set(), out / "spark" / "clean", spark)
        wall = time.perf_counter() - started
        sparked_runs.append((wall, counts))
        steps = counts["seconds"]["by_step"]
        rows += [[f"spark ({label}): {step}", f"{s:.1f}", "", load()]
                 for step, s in steps.items()]
        rows += [[f"spark ({label}): write data/clean", f"{counts['seconds']['write']:.1f}", "",
                  load()],
                 [f"spark ({label}): whole stage", f"{wall:.1f}", f"{n / wall / 1e6:.2f}",
                  load()]]
        print(f"spark {label}: {wall:.1f} s {steps}", flush=True)
    spark_s = sparked_runs[-1][0]
    rows += where_by_user_goes(spark, history, cfg)
    same_counts = comparable(sparked_runs[-1][1]) == comparable(local)
    same_clean = all(a.name == b.name and a.read_bytes() == b.read_bytes() for a, b in
                     zip(*(clean.day_files(out / e / "clean") for e in ("spark", "local")),
                         strict=True))

    # The confidence matrix: Spark triplets against train's build, from the same kept events.
    train = model.train(params)
    now = settings.window_end(params)
    started = time.perf_counter()
    events = read_events(out / "local" / "clean")
    local_matrix = C.aggregate(events, train.confidence, now)
    matrix_local_s = time.perf_counter() - started
    del events
    started = time.perf_counter()
    kept = SP.read_events(spark, clean.day_files(out / "spark" / "clean"))
    spark_matrix = SC.interactions(SC.triplets(kept, train.confidence, now, spark))
    matrix_spark_s = time.perf_counter() - started
    same_matrix = (np.array_equal(spark_matrix.user_ids, local_matrix.user_ids)
                   and np.array_equal(spark_matrix.item_ids, local_matrix.item_ids)
                   and all(np.array_equal(getattr(spark_matrix.strength, a),
                                          getattr(local_matrix.strength, a))
                           for a in ("indptr", "indices", "data")))
    rows += [["confidence matrix: local (read data/clean + aggregate)", f"{matrix_local_s:.1f}",
              "", load()],
             ["confidence matrix: spark (triplets + collect)", f"{matrix_spark_s:.1f}", "",
              load()]]
    confidence = C.confidence(local_matrix, train.confidence)
    als = time_als(confidence, train, args.als_factors, args.als_iterations, spark)
    rows += [[f"ALS, implicit (CPU), {args.als_factors} factors: s/iteration",
              f"{als['implicit_s_per_iteration']:.2f}", "", load()],
             [f"ALS, MLlib implicitPrefs, local[{args.cores}], {args.als_factors} factors: "
              "s/iteration", f"{als['mllib_s_per_iteration']:.2f}", "", load()]]
    version = spark.version
    spark.stop()

    memory = peak_memory(out / "local" / "clean", history, args.als_factors)
    history_bytes = sum(p.stat().st_size for p in history.rglob("*.parquet"))
    clean_bytes = sum(p.stat().st_size for p in clean.day_files(out / "local" / "clean"))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sizes = {"events": n, "kept": local["output"]["rows"], "history_bytes": history_bytes,
             "clean_bytes": clean_bytes, "peak_rss_bytes_this_process": peak_rss, **als,
             "memory": memory}
    filter_b = (memory["filter_noise"]["peak"] - memory["filter_noise"]["base"]) / n
    build_b = (memory["matrix_build"]["peak"] - memory["matrix_build"]["base"]) / \
        local["output"]["rows"]
    fit = memory["implicit_fit"]
    factors_b = 4 * args.als_factors * (als["users"] + als["items"])
    fit_b = (fit["peak"] - fit["base"] - factors_b) / als["nonzeros"]
    (args.data / "spark-sizes.json").write_text(json.dumps(sizes, indent=1))
    body = (
        f"The window of bench/filter.py: {n:,} events over {FB.WINDOW_DAYS} days "
        f"({FB.USERS:,} users, {FB.ITEMS:,} items), default params.yaml settings. Spark "
        f"{version} in local[{args.cores}] mode, "
        f"{args.groups} groups (spark.sql.shuffle.partitions), driver memory "
        f"{args.driver_memory}; the local engine the fastest of 2 runs. The last column is the "
        "1-minute load average when the row was measured (the machine is shared).\n\n"
        + markdown_table(["step", "seconds", "M events/s", "load"], rows)
        + f"\n\nSame answer: counters and top offenders {'yes' if same_counts else 'NO'}, "
        f"data/clean {'yes' if same_clean else 'NO'}, confidence matrix (bit for bit) "
        f"{'yes' if same_matrix else 'NO'}. Spark (warm) / local: "
        f"**{spark_s / local_s:.1f}x** the wall time on this machine.\n\n"
        f"Sizes: history {history_bytes / n:.1f} bytes/event on disk (Parquet), data/clean "
        f"{clean_bytes / local['output']['rows']:.1f} bytes/event; the matrix "
        f"{als['users']:,} x {als['items']:,}, {als['nonzeros']:,} nonzeros "
        f"({local['output']['rows'] / als['nonzeros']:.1f} kept events per nonzero). Peak memory "
        f"(VmHWM) of each step in a fresh process, less the process's before it: the local "
        f"filter_noise {filter_b:.0f} bytes per window event, train's matrix build "
        f"{build_b:.0f} bytes per kept event, the implicit fit ({args.als_factors} factors) "
        f"{fit_b:.1f} bytes per nonzero beyond its input matrix (float32 CSR: 8 bytes per "
        f"nonzero) and its factors (4 bytes x factors x (users + items)).\n\n"
        f"Where the by-user step's time goes: the rows \"by_user again\", each a "
        f"run of the step cut short after a part (the scan; the shuffle; the Arrow round trip "
        f"to the Python workers; the rules), so each includes the ones before it."
    )
    publish("spark_filter", "filter_noise on Spark against the local engine", body)
    return 0 if same_counts and same_clean and same_matrix else 1


if __name__ == "__main__":
    sys.exit(main())
