"""GPU vs CPU on the same data: fit time and out-of-time quality (needs `pip install .[gpu]`).

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/gpu_check.py [--days 30]
        [--users 100000] [--items 20000] [--events-per-day 300000] [--factors 64]

Simulated human traffic (users with tastes) over --days days; the last day is held out exactly as
evaluate does it. The same train configuration (params.yaml, with --factors/--iterations) is fitted on
the days before on the CPU and on the GPU (dailyrec.model.als.fit, same seed), and each model is
scored with dailyrec.model.evaluation on the held-out users. Expect different factors for one seed (implicit's GPU and CPU
initialise differently) but quality within noise, and the GPU several times faster. Writes
docs/benchmarks.md (section "gpu_check"). Without CUDA in implicit it says so and exits 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench import synthetic  # noqa: E402
from dailyrec.core import settings  # noqa: E402
from dailyrec.model import als  # noqa: E402
from dailyrec.model import evaluation as E  # noqa: E402
from dailyrec.model import scoring as SCO  # noqa: E402
from dailyrec.model import split as SPL  # noqa: E402
from dailyrec.model.recommender import ALSRecommender  # noqa: E402
from dailyrec.model import settings as model_settings  # noqa: E402

FIRST_DAY = dt.date(2026, 10, 1)


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown GPU"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown GPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--events-per-day", type=int, default=300_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--no-publish", action="store_true", help="print only")
    ap.add_argument("--devices", default="cpu,gpu",
                    help="devices to compare (cpu,cpu checks the script itself without a GPU)")
    args = ap.parse_args(argv)
    devices = args.devices.split(",")
    if "gpu" in devices and not als.has_cuda():
        print("gpu_check: implicit has no CUDA support here (implicit.gpu.HAS_CUDA is false). "
              "Install the GPU build on a machine with an NVIDIA GPU: pip install '.[gpu]' "
              "(implicit[gpu] with rmm-cu13, and the CUDA 13 runtime libraries).", file=sys.stderr)
        return 2
    params = settings.load(ROOT / "params.yaml")
    config = model_settings.train(params).replace(factors=args.factors,
                                                  iterations=args.iterations)
    eval_config = model_settings.evaluation(params)
    t = time.perf_counter()
    events = synthetic.simulated(FIRST_DAY, args.days, args.users, args.items,
                                 args.events_per_day)
    window_end = dt.datetime.combine(FIRST_DAY + dt.timedelta(days=args.days), dt.time(),
                                     tzinfo=dt.timezone.utc)
    split = SPL.make_split(events, config.confidence, window_end - dt.timedelta(days=1),
                         window_end, eval_config.relevant_event_types)
    print(f"data: {events.num_rows:,} events, {split.train.shape[0]:,} x {split.train.shape[1]:,}"
          f", {split.train.strength.nnz:,} nonzeros before the holdout; "
          f"{len(split.users):,} held-out users ({time.perf_counter() - t:.1f}s)", flush=True)
    if "gpu" in devices:  # CUDA start-up is not fit time
        als.fit(split.train.strength[:1000].astype("float32"), config.replace(iterations=1),
                "gpu")
    rows, results = [], []
    for device in devices:
        _, fitted = E.fit_on_split(split, config, device)
        scored = SCO.score(ALSRecommender(fitted.model), split, eval_config.cutoffs)
        results.append((fitted, scored))
        m = scored.metrics
        rows.append([device, fitted.seconds, fitted.seconds / config.iterations,
                     fitted.losses[-1] if fitted.losses else float("nan"), m["ndcg_at_20"],
                     m["recall_at_20"], m["mean_percentile_rank"]])
        print(f"  {device}: fit {fitted.seconds:.2f}s, ndcg@20 {m['ndcg_at_20']:.4f}", flush=True)
    cpu, gpu = results[0], results[-1]
    speedup = cpu[0].seconds / gpu[0].seconds
    delta = gpu[1].metrics["ndcg_at_20"] - cpu[1].metrics["ndcg_at_20"]
    label = f"{devices[-1]} vs {devices[0]}"
    body = (
        f"GPU: {gpu_name()}. Simulated traffic: {events.num_rows:,} events over {args.days} days; "
        f"fitted on the {split.train.strength.nnz:,} (user, item) pairs before the last day "
        f"({split.train.shape[0]:,} users x {split.train.shape[1]:,} items), scored on "
        f"{len(split.users):,} held-out users. factors={config.factors}, "
        f"{config.iterations} iterations, {config.confidence.transform} confidence "
        f"alpha={config.confidence.alpha}, same seed on both.\n\n"
        + report.markdown_table(["device", "fit s", "s / iteration", "final loss", "NDCG@20",
                                 "recall@20", "EPR"], rows)
        + f"\n\n**Speed-up {label}: {speedup:.1f}x**; NDCG@20 difference: {delta:+.4f}.\n")
    if args.no_publish or devices != ["cpu", "gpu"]:
        print(body)
    else:
        report.publish("gpu_check", "GPU vs CPU (bench/gpu_check.py)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
