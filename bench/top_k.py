"""Benchmark: top_k of this checkout against a baseline commit's, taking turns.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/top_k.py [--baseline 00a2643]

The baseline's dailyrec/model/topk.py (dailyrec/model/ranking.py before top_k had a module of its
own) is loaded from git as a module of its own. Cases: a
batch as evaluate scores it (2,000 users x 20,000 items, float32, 0.5% excluded, one thread: the
slices per core are the same in both), and one row of 5,000 items (an API visitor's fold-in).
Each is timed in turns, best of --repeats; the answers must be equal (scores without ties, where
the two tie rules agree).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import markdown_table, publish  # noqa: E402
from dailyrec.core import arrays  # noqa: E402
from dailyrec.model import topk  # noqa: E402


def baseline_ranking(rev: str):
    for name in ("topk", "ranking"):
        found = subprocess.run(["git", "show", f"{rev}:dailyrec/model/{name}.py"], cwd=ROOT,
                               capture_output=True, text=True)
        if found.returncode == 0:
            break
    else:
        raise SystemExit(f"{rev} has neither dailyrec/model/topk.py nor ranking.py")
    source = found.stdout
    sys.modules.setdefault("dailyrec.core.arrays", arrays)  # where arrays lived before core/
    path = Path(tempfile.mkdtemp()) / f"{name}_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def per_call(call, inner: int) -> float:
    """Seconds per call, over inner calls in a row."""
    started = time.perf_counter()
    for _ in range(inner):
        call()
    return (time.perf_counter() - started) / inner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="00a2643")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    old = baseline_ranking(args.baseline)
    rng = np.random.default_rng(7)
    batch = rng.standard_normal((2_000, 20_000)).astype(np.float32)
    batch[rng.random(batch.shape) < 0.005] = np.nan
    row = batch[:1, :5_000].copy()
    cases = [("batch 2,000 x 20,000, one thread (us)", "_top_k", batch, 1),
             ("one row of 5,000 items (us)", "top_k", row, 2_000)]
    rows = []
    for name, function, scores, inner in cases:
        ours, theirs = getattr(topk, function), getattr(old, function)
        if not np.array_equal(ours(scores, 20), theirs(scores, 20)):
            raise SystemExit(f"{name}: the answers differ")
        times = {"base": [], "ours": []}
        for _ in range(args.repeats):  # taking turns
            times["base"].append(per_call(lambda: theirs(scores, 20), inner))
            times["ours"].append(per_call(lambda: ours(scores, 20), inner))
        base, new = min(times["base"]) * 1e6, min(times["ours"]) * 1e6
        rows.append([name, round(base, 1), round(new, 1), f"{base / new:.2f}x"])
    body = (f"k = 20; best of {args.repeats}, the two taking turns; the same answers (scores "
            "without ties).\n\n"
            + markdown_table(["case", f"baseline {args.baseline}", "this checkout", "speed-up"],
                             rows))
    publish("top_k", "top_k against a baseline commit", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
