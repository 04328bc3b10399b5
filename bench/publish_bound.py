"""Benchmark: how close publish's scoring is to the machine's bound (target: >= 100k users/s).

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/publish_bound.py [--items 50000]

Exact top-N lists need every user x item score: 2 x factors floating-point operations each, so a
machine's float32 matrix-multiply rate caps users per second whatever the code around it. Measured
in one run on random factors (users x factors, items x factors, float32):
  1. the bound: the bare score matrix, NumPy's BLAS (OpenBLAS) sgemm, 1 thread and every core;
  2. publish's scoring: ALSRecommender.recommend (implicit's batch top-k, what publish calls),
     users already liked left out, top 20, at the batch size publish uses;
The ratio 2 / 1 says what is left to win on this machine; 100k users/s over the bound says how much
faster a machine (or a GPU) must be. The table goes to docs/benchmarks.md (section "publish_bound").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import markdown_table, publish  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    fn()  # warm: BLAS threads, page faults
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=10_000, help="users scored per measurement")
    ap.add_argument("--factors", default="8,64")
    ap.add_argument("--top-n", type=int, default=20)
    args = ap.parse_args(argv)
    import implicit.cpu.als
    from threadpoolctl import threadpool_limits

    from dailyrec.model.recommender import ALSRecommender

    cores = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    rows, load = [], []
    for factors in [int(f) for f in args.factors.split(",")]:
        users = rng.standard_normal((args.users, factors), dtype=np.float32)
        items = rng.standard_normal((args.items, factors), dtype=np.float32)
        liked = sp.random(args.users, args.items, density=20 / args.items, format="csr",
                          dtype=np.float32, random_state=1)
        model = implicit.cpu.als.AlternatingLeastSquares(factors=factors, random_state=0)
        model.user_factors, model.item_factors = users, items
        rec = ALSRecommender(model, liked)
        flops = 2.0 * args.users * args.items * factors
        measured = {}
        for threads in sorted({1, cores}):
            with threadpool_limits(threads, "blas"):
                measured[f"sgemm, {threads} BLAS thread(s)"] = best_of(lambda: users @ items.T)
        with threadpool_limits(1, "blas"):  # as publish runs it (implicit's own threads)
            measured["publish's scoring (implicit top-k, liked left out)"] = best_of(
                lambda: rec.recommend(np.arange(args.users), None, args.top_n, True))
        bound = min(v for k, v in measured.items() if k.startswith("sgemm"))
        load.append(os.getloadavg()[0])
        for label, seconds in measured.items():
            rows.append([factors, label, f"{args.users / seconds:,.0f}",
                         f"{flops / seconds / 1e9:.1f}", f"{bound / seconds:.2f}",
                         f"{100_000 * seconds / args.users:.1f}x", f"{load[-1]:.1f}"])
    table = markdown_table(["factors", "step", "users/s", "GFLOP/s (2 x users x items x factors)",
                            "vs the bound", "speed needed for 100k users/s", "load avg"], rows)
    body = (f"{args.users:,} users x {args.items:,} items, float32, top {args.top_n}; best of 3 "
            f"after a warm-up; {cores} cores.\n\n{table}\n\n"
            "An exact list scores every item for the user, so the sgemm rows bound publish on this "
            "machine whatever the code around it; `speed needed` is how many times faster than "
            "that step a machine must score to publish 100,000 users a second. Reaching the "
            "target on this CPU would take an approximate top-k (which changes the lists) or "
            "scoring on a GPU (publish scores on the CPU today, whatever train.device says; "
            "implicit's GPU model has a batched top-k: not wired yet), not a faster loop.")
    publish("publish_bound", "publish against the machine's matrix-multiply bound", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
