"""Serving speed: publish throughput and Redis memory at 1M users; the API under load vs raw Redis.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/serve.py [--users 1000000] [--items 20000]

Everything runs on this machine, against a private redis-server on a free loopback port:
  1. scoring: publish's recommend (implicit's batch recommend, unfiltered + vectorised filter)
     against implicit's own filtered batch recommend, same users, same lists;
  2. the Redis write path alone (records -> Redis) for every user: publish's raw-RESP HSET writer
     against plain redis-py pipelining of the same commands, and against one key per user (MSET);
     Redis memory per user from INFO used_memory;
  3. publish() end to end (score, write, verify, switch) for every user;
  4. the API (python -m serving.server, as `make serve` runs it) under wrk from a separate
     process at several concurrencies, against redis-benchmark GET at the same concurrencies as
     the ceiling;
  5. request-time work (fold-in, similar items, explanations) at --fold-in-items items x --factors
     factors: a second model (implicit ALS fitted on synthetic interactions) published twice,
     explanations' user histories off and on (publish's extra seconds for similar items + item
     factors; Redis bytes per user and per item, key by key), then, against the same API server and
     Redis, wrk at 1 and 4 connections for a cached list (known user: the baseline), a similar-items
     lookup, a fold-in (an unknown visitor with 5-20 random known recent items) and a fold-in with
     explain=1; each row's p99 as a multiple of the cached list's, and the 1-minute load average
     beside it; the one-off cost of a worker's first requests after the version switch (item table,
     then item factors); and where an in-process fold-in request's time goes.
A synthetic model stands in for a trained one (random factors, Zipf-like interactions): publish and
serving speed do not depend on how good the factors are.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench.report import markdown_table, publish  # noqa: E402
from dailyrec.model import artifacts  # noqa: E402
from dailyrec.model.confidence import one_event_confidence  # noqa: E402
from dailyrec.model.topk import top_k  # noqa: E402
from dailyrec.model.recommender import ALSRecommender  # noqa: E402
from dailyrec.model.settings import train_from_dict  # noqa: E402
from dailyrec.publish.settings import PublishSettings  # noqa: E402
from dailyrec.publish import connection  # noqa: E402
from dailyrec.publish import keys as K  # noqa: E402
from dailyrec.publish import writer as pub  # noqa: E402
from dailyrec.publish.reader import RecommendationStore  # noqa: E402
from tests import servers  # noqa: E402
from tests.params import project_params  # noqa: E402

DAY = dt.date(2026, 11, 21)
LAYOUT = K.Layout()
PUBLISHED = K.Layout.from_env()  # where publish() writes and the API reads (REDIS_KEY_PREFIX)


def train_params(factors: int) -> dict:
    """params.yaml's train section (publish reads the fold-in confidence from the bundle's
    meta), with the bench's number of factors."""
    return {**project_params()["train"], "factors": factors}


def _interactions(rng, n_users: int, n_items: int, per_user: int, low: int = 1) -> sp.csr_matrix:
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    counts = np.clip(rng.geometric(1 / per_user, n_users), low, n_items // 2)
    rows = np.repeat(np.arange(n_users), counts)
    cols = rng.choice(n_items, size=rows.size, p=weights / weights.sum())
    user_items = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)),
                               shape=(n_users, n_items))
    user_items.sum_duplicates()
    user_items.data[:] = 1
    return user_items


def synthetic_bundle(n_users: int, n_items: int, factors: int, per_user: int,
                     seed: int = 0) -> artifacts.ModelBundle:
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(seed)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, random_state=seed)
    model.user_factors = rng.standard_normal((n_users, factors), dtype=np.float32) * 0.1
    model.item_factors = rng.standard_normal((n_items, factors), dtype=np.float32) * 0.1
    user_items = _interactions(rng, n_users, n_items, per_user)
    return artifacts.ModelBundle(model, np.array([f"u{i}" for i in range(n_users)]),
                                 np.array([f"i{j}" for j in range(n_items)]), user_items,
                                 {"params": train_params(factors)})


def fitted_bundle(n_users: int, n_items: int, factors: int, per_user: int, iterations: int,
                  seed: int = 0) -> tuple[artifacts.ModelBundle, float]:
    """implicit ALS fitted on Zipf-like synthetic interactions (each one a fresh view under the
    project's confidence settings); returns (bundle, fit seconds)."""
    from implicit.cpu.als import AlternatingLeastSquares

    train = train_params(factors)
    rng = np.random.default_rng(seed)
    user_items = _interactions(rng, n_users, n_items, per_user, low=5)
    user_items.data[:] = one_event_confidence(train_from_dict(train).confidence)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, regularization=train["regularization"],
                                        iterations=iterations, random_state=seed,
                                        calculate_training_loss=False)
        t = time.perf_counter()
        model.fit(user_items, show_progress=False)
        seconds = time.perf_counter() - t
    return artifacts.ModelBundle(model, np.array([f"u{i}" for i in range(n_users)]),
                                 np.array([f"i{j}" for j in range(n_items)]), user_items,
                                 {"params": train}), seconds


def used_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


def flush(client) -> int:
    client.flushall(asynchronous=False)
    return used_memory(client)


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


def bench_scoring(bundle, n: int) -> list:
    rows = np.arange(min(n, len(bundle.user_ids)))
    with threadpool_limits(1, "blas"):
        t = time.perf_counter()
        ours, _ = ALSRecommender.from_bundle(bundle).recommend(rows, None, 20, True)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        ids, scores = bundle.model.recommend(rows, bundle.user_items[rows], N=20,
                                             filter_already_liked_items=True)
        t_implicit = time.perf_counter() - t
    ids = np.where(scores > np.finfo(np.float32).min, ids, -1)
    same = float((ids == ours).all(axis=1).mean())
    return [len(rows), round(len(rows) / t_implicit), round(len(rows) / t_ours),
            f"{t_implicit / t_ours:.1f}x", f"{same:.1%}"]


def bench_write_path(client, bundle, batch: int) -> list[list]:
    n = len(bundle.user_ids)
    rng = np.random.default_rng(1)
    records = K.encode_records(rng.integers(0, len(bundle.item_ids), (n, 20)),
                               rng.random((n, 20), dtype=np.float32))
    ids = pa.array(bundle.user_ids)
    n_buckets = K.bucket_count(n)
    buckets = K.buckets_of(ids, n_buckets)
    order = np.argsort(buckets, kind="stable")
    rows_out = []

    base = flush(client)
    t = time.perf_counter()
    for start in range(0, n, batch):
        rows = order[start:start + batch]
        pub.send_commands(client, pub.hset_commands(lambda b: LAYOUT.bucket("bench", b),
                                                    buckets[rows], ids.take(rows), records[rows]))
    ours = time.perf_counter() - t
    ours_mem = (used_memory(client) - base) / n
    assert pub.bucket_lengths(client, lambda b: LAYOUT.bucket("bench", b), n_buckets) == n
    rows_out.append(["publish: raw RESP HSET, users hashed into buckets", round(n / ours),
                     "1.0x", round(ours_mem)])

    id_list = bundle.user_ids.tolist()
    values = records.view(np.dtype((np.void, records.shape[1]))).ravel().tolist()
    base = flush(client)
    t = time.perf_counter()
    for start in range(0, n, batch):
        rows = order[start:start + batch]
        args = np.empty(2 * len(rows), dtype=object)
        args[0::2] = [id_list[r] for r in rows.tolist()]
        args[1::2] = [values[r] for r in rows.tolist()]
        args = args.tolist()
        b = buckets[rows]
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        ends = np.r_[starts[1:], len(rows)]
        pipe = client.pipeline(transaction=False)
        for bucket, s, e in zip(b[starts].tolist(), starts.tolist(), ends.tolist()):
            pipe.execute_command("HSET", LAYOUT.bucket("bench", bucket), *args[2 * s:2 * e])
        pipe.execute()
    plain = time.perf_counter() - t
    rows_out.append(["baseline: redis-py pipeline, same HSETs", round(n / plain),
                     f"{plain / ours:.1f}x", round((used_memory(client) - base) / n)])

    base = flush(client)
    t = time.perf_counter()
    for start in range(0, n, batch):
        args = np.empty(2 * min(batch, n - start), dtype=object)
        args[0::2] = [f"bench:u:{u}" for u in id_list[start:start + batch]]
        args[1::2] = values[start:start + batch]
        args = args.tolist()
        pipe = client.pipeline(transaction=False)
        for s in range(0, len(args), 2000):
            pipe.execute_command("MSET", *args[s:s + 2000])
        pipe.execute()
    per_key = time.perf_counter() - t
    rows_out.append(["baseline: one key per user, redis-py MSET", round(n / per_key),
                     f"{per_key / ours:.1f}x", round((used_memory(client) - base) / n)])
    flush(client)
    return rows_out


def bench_publish(client, bundle, *, explain_items: int = 20, similar_items: bool = True,
                  fresh: bool = True) -> dict:
    """publish() with the project's publish settings; fresh: into an emptied Redis (memory per
    user from INFO used_memory), else on top of what is served (a version switch)."""
    base = flush(client) if fresh else None
    settings = PublishSettings(top_n=20, filter_already_liked=True, batch_size=100_000,
                               keep_versions=1, similar_items=similar_items,
                               explain_items=explain_items)
    summary = pub.publish(bundle, client, settings, run_date=DAY, progress=False)
    if fresh:
        summary["memory_per_user"] = (used_memory(client) - base) / len(bundle.user_ids)
    summary["memory"] = version_memory(client, summary["version"])
    return summary


def version_memory(client, version: str) -> dict[str, int]:
    """Redis bytes of one version's keys, by kind (MEMORY USAGE ... SAMPLES 0: every field)."""
    meta = pub.version_meta(client, PUBLISHED, version)
    n_buckets, n_item_buckets = int(meta["buckets"]), int(meta.get("item_buckets") or 0)
    groups = {
        "lists": [PUBLISHED.bucket(version, b) for b in range(n_buckets)],
        "histories": [PUBLISHED.history(version, b) for b in range(n_buckets)],
        "similar": [PUBLISHED.similar(version, b) for b in range(n_item_buckets)],
        "factors": [PUBLISHED.factors(version)],
        "items": [PUBLISHED.items(version), PUBLISHED.fallback(version), PUBLISHED.meta(version)],
    }
    out = {}
    for kind, names in groups.items():
        total = 0
        for start in range(0, len(names), 1000):
            pipe = client.pipeline(transaction=False)
            for name in names[start:start + 1000]:
                pipe.execute_command("MEMORY", "USAGE", name, "SAMPLES", "0")
            total += sum(v or 0 for v in pipe.execute())
        out[kind] = total
    return out


# wrk: each thread seeds its own generator (setup runs once per thread, init in the thread)
WRK_SEED = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end
function init(args)
  math.randomseed(7 + 1000 * (seed or 0))
end
"""

WRK_SCRIPT = WRK_SEED + """
request = function()
  local id
  if math.random() < 0.05 then id = "unknown-" .. math.random(1, 1000000)
  else id = "u" .. math.random(0, %(last_user)d) end
  return wrk.format("GET", "/recommendations/" .. id .. "?n=20")
end
"""

WRK_CACHED = WRK_SEED + """
request = function()
  return wrk.format("GET", "/recommendations/u" .. math.random(0, %(last_user)d) .. "?n=20")
end
"""

WRK_SIMILAR = WRK_SEED + """
request = function()
  return wrk.format("GET", "/items/i" .. math.random(0, %(last_item)d) .. "/similar?n=20")
end
"""

WRK_FOLD_IN = WRK_SEED + """
request = function()
  local recent = {}
  for j = 1, math.random(5, 20) do recent[j] = "i" .. math.random(0, %(last_item)d) end
  return wrk.format("GET", "/recommendations/visitor-" .. math.random(1, 1000000000)
                    .. "?n=20&recent=" .. table.concat(recent, ",") .. "%(extra)s")
end
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> dict:
    out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s",
                          "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": _ms(latency["50"]), "p99": _ms(latency["99"]),
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "socket_errors": errors.group(1) if errors else "",
            "load": load_average()}


def run_redis_benchmark(port: int, connections: int, requests: int) -> dict:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set,get", "-d", "160",
                          "-r", "100000", "-n", str(requests), "-c", str(connections), "--csv"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells[0] == "GET":
            return {"rps": float(cells[1]), "p50": float(cells[4]), "p99": float(cells[6])}
    raise RuntimeError(f"no GET line in redis-benchmark output:\n{out}")


@contextlib.contextmanager
def wrk_script(text: str):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(text)
    try:
        yield Path(fh.name)
    finally:
        os.unlink(fh.name)


@contextlib.contextmanager
def api_server(redis_server, extra_env: dict | None = None):
    """The API as `make serve` runs it (python -m serving.server) on a free port; yields its base
    URL."""
    port = servers.free_port()
    metrics_dir = tempfile.mkdtemp(prefix="dailyrec-bench-metrics-")
    env = {**os.environ, "REDIS_URL": redis_server.url, "DAILYREC_BIND": f"127.0.0.1:{port}",
           "PROMETHEUS_MULTIPROC_DIR": metrics_dir, **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "serving.server"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        servers.wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def get(url: str) -> tuple[float, int, dict]:
    """(milliseconds, status, body) of one GET on a new connection."""
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    return (time.perf_counter() - t) * 1e3, status, json.loads(raw)


def bench_api(base: str, redis_server, n_users: int, concurrencies: list[int],
              seconds: int) -> list[list]:
    rows = []
    for _ in range(50):  # every worker loads the version's item table before timing starts
        get(f"{base}/recommendations/u1?n=20")
    with wrk_script(WRK_SCRIPT % {"last_user": n_users - 1}) as script:
        for c in concurrencies:
            api = run_wrk(base, script, c, seconds)
            raw = run_redis_benchmark(redis_server.port, c, 100_000)
            rows.append([c, round(api["rps"]), api["p50"], api["p99"],
                         api["non_2xx"] or (api["socket_errors"] or 0), round(raw["rps"]),
                         raw["p50"], raw["p99"], f"{api['rps'] / raw['rps']:.2f}", api["load"]])
            print(rows[-1], flush=True)
    return rows


# --- request-time work: similar items, fold-in, explanations --------------------------------------

def _recent_ids(rng, n_items: int) -> list[str]:
    return [f"i{j}" for j in rng.integers(0, n_items, int(rng.integers(5, 21)))]


def _fold_in_path(rng, n_items: int, explain: bool = False) -> str:
    return (f"/recommendations/visitor-{int(rng.integers(1, 10**9))}?n=20&recent="
            + ",".join(_recent_ids(rng, n_items)) + ("&explain=1" if explain else ""))


def first_requests_after_switch(base: str, n_users: int, n_items: int, count: int = 30
                                ) -> dict[str, list[float]]:
    """Latencies (ms) of the first `count` cached-list requests after a version switch (each
    worker loads the new version's item table), then of the first `count` fold-in requests (each
    worker loads the item factors), one at a time on new connections."""
    rng = np.random.default_rng(3)
    out = {"cached": [], "fold_in": []}
    for _ in range(count):
        ms, status, body = get(f"{base}/recommendations/u{int(rng.integers(n_users))}?n=20")
        assert status == 200 and body["source"] == "personalized", body
        out["cached"].append(ms)
    for _ in range(count):
        ms, status, body = get(base + _fold_in_path(rng, n_items))
        assert status == 200 and body["source"] == "session", body
        out["fold_in"].append(ms)
    return out


def load_cost_in_process(client, version: str) -> dict[str, float]:
    """What a worker's first requests after a switch do, timed step by step in this process."""
    from dailyrec.model.foldin import FoldIn

    store = RecommendationStore(client, PUBLISHED)
    t = time.perf_counter()
    v = store.version(version)  # meta + item ids (JSON) + fallback
    t_version = time.perf_counter() - t
    t = time.perf_counter()
    raw = client.get(PUBLISHED.factors(version))
    t_get = time.perf_counter() - t
    t = time.perf_counter()
    store.fold_in(v)  # GET the factors again + FoldIn (YᵀY + λI)
    t_fold_in = time.perf_counter() - t
    factors = np.frombuffer(raw, dtype="<f4").reshape(len(v.item_ids), v.n_factors)
    init = {}
    for blas in ("default", "1"):
        limit = threadpool_limits(1, "blas") if blas == "1" else contextlib.nullcontext()
        samples = []
        with limit:
            for _ in range(3):
                t = time.perf_counter()
                FoldIn(factors, v.regularization)
                samples.append(time.perf_counter() - t)
        init[blas] = float(np.median(samples)) * 1e3
    return {"version_table_ms": t_version * 1e3, "get_factors_ms": t_get * 1e3,
            "factors_mib": len(raw) / 2**20, "fold_in_load_ms": t_fold_in * 1e3,
            "fold_in_init_ms": init["default"], "fold_in_init_1_thread_ms": init["1"]}


KINDS = [("cached list (known user)", WRK_CACHED, ""),
         ("similar items", WRK_SIMILAR, ""),
         ("fold-in, 5-20 recent items", WRK_FOLD_IN, ""),
         ("fold-in + explain=1", WRK_FOLD_IN, "&explain=1")]


def bench_request_time(base: str, bundle, concurrencies: list[int], seconds: int,
                       kinds: list = KINDS) -> list[list]:
    """wrk rows for each kind at each concurrency; the first kind is the baseline of the
    ratios."""
    n_users, n_items = len(bundle.user_ids), len(bundle.item_ids)
    # each kind answers as intended before it is timed
    _, status, body = get(f"{base}/items/i0/similar?n=20")
    assert status == 200 and len(body["items"]) == 20, body
    rng = np.random.default_rng(5)
    _, status, body = get(base + _fold_in_path(rng, n_items, explain=True))
    assert status == 200 and body["source"] == "session" and len(body["items"]) == 20, body
    assert all("because" in item for item in body["items"]), body

    def script_text(template: str, extra: str) -> str:
        return template % {"last_user": n_users - 1, "last_item": n_items - 1, "extra": extra}

    # 4 keep-alive connections for 2 s: every worker has loaded the version and its factors
    with wrk_script(script_text(WRK_FOLD_IN, "")) as script:
        run_wrk(base, script, 4, 2)
    rows = []
    for c in concurrencies:
        baseline = None
        for name, template, extra in kinds:
            with wrk_script(script_text(template, extra)) as script:
                r = run_wrk(base, script, c, seconds)
            baseline = baseline or r["p99"]
            rows.append([name, c, round(r["rps"]), r["p50"], r["p99"],
                         f"{r['p99'] / baseline:.1f}x",
                         r["non_2xx"] or (r["socket_errors"] or 0), r["load"]])
            print(rows[-1], flush=True)
    return rows


def _percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def profile_fold_in(client, redis_url: str, version: str, n_items: int, count: int
                    ) -> list[list]:
    """Where one fold-in request's time goes, in this process (no HTTP, no load generator): the
    steps of serving/api.py's session branch, with the BLAS threads a worker has (OpenBLAS's
    default) and with 1; then whole requests through Flask's test client."""
    store = RecommendationStore(client, PUBLISHED)
    rng = np.random.default_rng(11)
    steps = ["Redis lookup (Lua: current + HGET)", "item ids -> positions",
             "solve (64x64 system)", "scores (n_items x f matvec)",
             "exclude + top_k (argpartition)", "explain (stacked solve + einsum)",
             "response dict + JSON"]
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(20):  # connection, script load, first BLAS calls
        store.lookup("visitor-0")
        fold_in = store.fold_in(store.version(version))
        fold_in.recommend(fold_in.solve(np.arange(5)[None, :], 1.0), 20)
    for blas in ("default", "1"):
        times = {s: [] for s in steps}
        limit = threadpool_limits(1, "blas") if blas == "1" else contextlib.nullcontext()
        with limit:
            for _ in range(count):
                recent = _recent_ids(rng, n_items)
                user = f"visitor-{int(rng.integers(1, 10**9))}"
                t0 = time.perf_counter()
                v, record, _ = store.lookup(user)
                t1 = time.perf_counter()
                assert v.name == version and record is None
                seen = v.positions(recent)
                known = seen[seen >= 0]
                fold_in = store.fold_in(v)
                t2 = time.perf_counter()
                solved = fold_in.solve(known[None, :], v.fold_in_confidence)
                t3 = time.perf_counter()
                scores = fold_in.scores(solved)
                t4 = time.perf_counter()
                rows, cols = np.nonzero(solved.items >= 0)
                scores[rows, solved.items[rows, cols]] = np.nan
                positions = top_k(scores, 20)
                picked = np.take_along_axis(scores, np.maximum(positions, 0), axis=1)
                t5 = time.perf_counter()
                contributions = fold_in.explain(solved, positions)[0]
                t6 = time.perf_counter()
                items = [{"id": v.item_ids[i], "score": round(float(s), 6)}
                         for i, s in zip(positions[0].tolist(), picked[0].tolist()) if i >= 0]
                for item, row in zip(items, contributions):
                    order = np.argsort(-row, kind="stable")[:3]
                    item["because"] = [{"id": v.item_ids[solved.items[0][j]],
                                        "weight": round(float(row[j]), 6)} for j in order]
                json.dumps({"user_id": user, "items": items, "model_version": v.name,
                            "source": "session"})
                t7 = time.perf_counter()
                for step, took in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4,
                                              t6 - t5, t7 - t6)):
                    times[step].append(took)
        results[blas] = times
    table = []
    for step in steps:
        d50, d99 = _percentiles(results["default"][step])
        o50, o99 = _percentiles(results["1"][step])
        table.append([step, d50, d99, o50, o99])

    from serving.app import create_app

    saved = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = redis_url
    try:
        app = create_app({"TESTING": True})
    finally:
        if saved is None:
            os.environ.pop("REDIS_URL")
        else:
            os.environ["REDIS_URL"] = saved
    web = app.test_client()
    web.get("/recommendations/u0?n=20")
    web.get(_fold_in_path(rng, n_items))  # loads the version and the factors
    for name, explain in (("whole request, Flask test client: fold-in", False),
                          ("whole request, Flask test client: fold-in + explain", True)):
        cells = []
        for blas in ("default", "1"):
            limit = threadpool_limits(1, "blas") if blas == "1" else contextlib.nullcontext()
            samples = []
            with limit:
                for _ in range(count):
                    path = _fold_in_path(rng, n_items, explain)
                    t = time.perf_counter()
                    response = web.get(path)
                    samples.append(time.perf_counter() - t)
                    assert response.status_code == 200
            cells += _percentiles(samples)
        table.append([name, *cells])
    return table


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--items-per-user", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=10, help="wrk duration per row")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--scoring-sample", type=int, default=50_000)
    ap.add_argument("--fold-in-items", type=int, default=50_000,
                    help="items of the model behind the similar-items and fold-in rows")
    ap.add_argument("--fold-in-users", type=int, default=100_000)
    ap.add_argument("--fold-in-items-per-user", type=int, default=20)
    ap.add_argument("--fit-iterations", type=int, default=10)
    ap.add_argument("--explain-items", type=int, default=20,
                    help="publish.explain_items for the fold-in model's second publish")
    ap.add_argument("--fold-in-concurrency", default="1,4")
    ap.add_argument("--profile-requests", type=int, default=1000)
    ap.add_argument("--no-blas-per-core", dest="blas_per_core", action="store_false",
                    help="skip the rows from a second API server whose workers get OpenBLAS's "
                         "own thread count (serving/server.py sets 1 unless told otherwise)")
    args = ap.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    fold_concurrencies = [int(c) for c in args.fold_in_concurrency.split(",")]

    print(f"building a synthetic model: {args.users:,} users x {args.items:,} items ...",
          flush=True)
    load = [load_average()]
    bundle = synthetic_bundle(args.users, args.items, args.factors, args.items_per_user)
    print(f"fitting implicit ALS: {args.fold_in_users:,} users x {args.fold_in_items:,} items, "
          f"{args.factors} factors ...", flush=True)
    fold, fit_seconds = fitted_bundle(args.fold_in_users, args.fold_in_items, args.factors,
                                      args.fold_in_items_per_user, args.fit_iterations)
    print(f"fitted in {fit_seconds:.1f} s", flush=True)
    redis_server = servers.start_redis()
    try:
        client = connection.client({"REDIS_URL": redis_server.url}, timeout=120)
        print("scoring ...", flush=True)
        scoring = bench_scoring(bundle, args.scoring_sample)
        print(scoring, "\nwrite path ...", flush=True)
        writes = bench_write_path(client, bundle, 100_000)
        print(writes, "\npublish end to end ...", flush=True)
        summary = bench_publish(client, bundle)
        print({k: summary[k] for k in ("users_written", "users_per_second", "seconds", "memory")},
              "\nAPI ...", flush=True)
        load.append(load_average())
        with api_server(redis_server) as base:
            api = bench_api(base, redis_server, args.users, concurrencies, args.seconds)
            load.append(load_average())
            print("publishing the fold-in model: explain_items 0, then "
                  f"{args.explain_items} ...", flush=True)
            off = bench_publish(client, fold, explain_items=0, fresh=False)
            on = bench_publish(client, fold, explain_items=args.explain_items, fresh=False)
            for s in (off, on):
                print(s["explain_items"], s["seconds"], s["memory"], flush=True)
            first = first_requests_after_switch(base, args.fold_in_users, args.fold_in_items)
            print({k: [round(x, 1) for x in v] for k, v in first.items()}, flush=True)
            loading = load_cost_in_process(client, on["version"])
            print(loading, "\nrequest-time rows ...", flush=True)
            request_rows = bench_request_time(base, fold, fold_concurrencies, args.seconds)
            load.append(load_average())
        per_core_rows, first_per_core = [], None
        if args.blas_per_core:
            # serving/server.py gives its workers 1 BLAS thread unless the environment says
            # otherwise: the comparison is with as many threads as cores
            print("the same rows, workers with a BLAS thread per core ...", flush=True)
            with api_server(redis_server, {"OPENBLAS_NUM_THREADS": str(os.cpu_count() or 1)}
                            ) as base:
                first_per_core = first_requests_after_switch(base, args.fold_in_users,
                                                        args.fold_in_items)
                print({k: [round(x, 1) for x in v] for k, v in first_per_core.items()}, flush=True)
                per_core_rows = bench_request_time(base, fold, fold_concurrencies,
                                                     args.seconds,
                                                     kinds=[KINDS[0], KINDS[2], KINDS[3]])
        print("profiling a fold-in request in-process ...", flush=True)
        profile = profile_fold_in(client, redis_server.url, on["version"], args.fold_in_items,
                                  args.profile_requests)
        for row in profile:
            print(row, flush=True)
    finally:
        redis_server.stop()

    n = args.users
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True).stdout.split()[2].removeprefix("v=")
    mem = summary["memory"]
    fold_users, fold_items = args.fold_in_users, args.fold_in_items

    def publish_row(s: dict) -> list:
        m = s["memory"]
        return [s["explain_items"], s["seconds"]["total"], s["seconds"]["score_and_encode"],
                s["seconds"]["similar_items_and_factors"], round(m["lists"] / fold_users),
                round(m["histories"] / fold_users), round(sum(m.values()) / fold_users),
                round(m["similar"] / fold_items), _mib(m["factors"])]

    fold_p99 = {r[1]: r[4] for r in request_rows if r[0].startswith("fold-in,")}
    cached_p99 = {r[1]: r[4] for r in request_rows if r[0].startswith("cached")}
    fold_ratio = {c: fold_p99[c] / cached_p99[c] for c in fold_p99}
    verdict = ", ".join(f"{fold_p99[c]:.1f} ms at {c} connection{'s' if c > 1 else ''} "
                        f"({fold_ratio[c]:.1f}x the cached list; "
                        f"{'met' if fold_p99[c] <= 15 else 'NOT met'})"
                        for c in sorted(fold_p99))
    slow_cached = sorted(first["cached"], reverse=True)
    slow_fold = sorted(first["fold_in"], reverse=True)
    body = "\n\n".join([
        f"Synthetic model: {n:,} users, {args.items:,} items, {args.factors} factors, "
        f"~{args.items_per_user} items per user; top 20 per user; Redis {redis_version} on "
        "loopback (no persistence), everything on this one machine (the load generator, the API "
        "server "
        "and Redis share its cores). Targets: publish >= 100k users/s; API p99 < 10 ms; fold-in "
        "p99 <= 15 ms at 50,000 items and 64 factors. "
        f"1-minute load average at start / before the API rows / before the fold-in model's "
        f"publish / at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} / {load[3]:.1f} "
        f"(other work shared the machine; {os.cpu_count()} cores); each wrk row has the load "
        "average measured as it ended.",
        "**Scoring** (implicit batch recommend, 1 BLAS thread): what users already have left "
        "out by implicit's own filter (a Python loop per user) vs publish's unfiltered "
        "over-fetch plus a vectorised filter.\n\n" + markdown_table(
            ["users", "implicit filter users/s", "publish users/s", "speed-up",
             "identical lists"], [scoring]),
        f"**Writing {n:,} users' records to Redis** (records already computed; "
        f"100k users per batch). Memory from INFO used_memory.\n\n" + markdown_table(
            ["writer", "users/s", "time vs publish", "Redis bytes/user"], writes),
        f"**publish() end to end**, {n:,} users (score + write + verify + switch; "
        f"similar_items on, explain_items 20): "
        f"**{summary['users_per_second']:,.0f} users/s**, {summary['seconds']['total']:.1f} s "
        f"(scoring and encoding {summary['seconds']['score_and_encode']:.1f} s; waiting for the "
        f"Redis writer thread {summary['seconds']['waiting_for_redis']:.1f} s; similar items + "
        f"item factors {summary['seconds']['similar_items_and_factors']:.1f} s; verify + switch "
        f"{summary['seconds']['verify_and_switch']:.2f} s); Redis memory "
        f"{summary['memory_per_user']:.0f} bytes/user, "
        f"{summary['memory_per_user'] * n / 2**20:,.0f} MiB per version (lists "
        f"{mem['lists'] / n:.0f} B/user, histories {mem['histories'] / n:.0f} B/user, similar "
        f"items {_mib(mem['similar'])}, item factors {_mib(mem['factors'])}, by MEMORY USAGE).",
        f"**API under load**: wrk ({args.seconds} s per row, 95% known users, 5% unknown -> "
        "fallback, n=20) against the API server (serving/server.py, granian, its default "
        "workers and threads); ceiling: redis-benchmark GET of a 160-byte value at the same "
        "concurrency. One API request = one Redis round trip (a read-only Lua script: GET "
        "current, HGET the user).\n\n"
        + markdown_table(["connections", "API req/s", "p50 ms", "p99 ms", "errors",
                          "Redis GET req/s", "p50 ms", "p99 ms", "API / Redis", "load avg"], api),
        f"**Request-time work at {fold_items:,} items and {args.factors} factors**. "
        f"implicit ALS fitted on {fold_users:,} synthetic users x ~{args.fold_in_items_per_user}"
        f" Zipf-distributed items ({fold.user_items.nnz:,} interactions, "
        f"{args.fit_iterations} iterations, {fit_seconds:.0f} s), published on top of the "
        "version above while the API server runs (a version switch), first with explain_items 0, "
        "then "
        f"with {args.explain_items}; Redis bytes by MEMORY USAGE of the version's keys.\n\n"
        + markdown_table(["explain_items", "publish s", "scoring s", "similar items + factors s",
                          "lists B/user", "histories B/user", "all keys B/user",
                          "similar B/item", "item factors"], [publish_row(off), publish_row(on)]),
        (f"**After the switch**, one request at a time on new connections: the first "
        f"{len(first['cached'])} cached-list requests (each worker loads the version's item "
        f"table) took at most {slow_cached[0]:.1f} / {slow_cached[1]:.1f} ms (median "
        f"{np.median(first['cached']):.1f} ms); the next {len(first['fold_in'])} fold-in requests "
        f"(each worker loads the item factors) at most {slow_fold[0]:.1f} / {slow_fold[1]:.1f} ms "
        f"(median {np.median(first['fold_in']):.1f} ms). The same steps in this process: item "
        f"table {loading['version_table_ms']:.0f} ms; item factors "
        f"{loading['fold_in_load_ms']:.0f} ms (GET of {loading['factors_mib']:.1f} MiB alone "
        f"{loading['get_factors_ms']:.0f} ms, the rest is YᵀY + λI: "
         f"{loading['fold_in_init_ms']:.0f} ms with OpenBLAS's default threads, "
         f"{loading['fold_in_init_1_thread_ms']:.0f} ms with 1). Once per worker and version."),
        f"**Request-time rows**: wrk, {args.seconds} s per row, n=20, against the same API server "
        "and Redis: a cached list (known users at random: the baseline), a similar-items lookup "
        "(known items at random), a fold-in (an unknown visitor with 5-20 known items at random "
        "in ?recent=: a 64x64 solve, an items x factors matvec, argpartition) and the same with "
        "explain=1; p99 as a multiple of the cached list's at the same connections. "
        f"Fold-in p99: {verdict}.\n\n"
        + markdown_table(["request", "connections", "req/s", "p50 ms", "p99 ms",
                          "p99 vs cached list", "errors", "load avg"], request_rows),
        *([(f"**The same rows from a second API server whose workers were started with "
             f"OPENBLAS_NUM_THREADS={os.cpu_count() or 1}** (a BLAS thread per core; the "
             f"server's default is 1; the environment only, serving/ unchanged); on its fresh "
             f"workers the first cached-list requests took at most "
             f"{max(first_per_core['cached']):.1f} ms, the first fold-in requests at most "
             f"{max(first_per_core['fold_in']):.1f} ms.\n\n")
            + markdown_table(["request", "connections", "req/s", "p50 ms", "p99 ms",
                              "p99 vs cached list", "errors", "load avg"], per_core_rows)]
          if per_core_rows else []),
        f"**Where a fold-in request's time goes** ({args.profile_requests:,} requests, in this "
        "process after the API server stopped: the steps of serving/api.py's session branch, then "
        "whole requests through Flask's test client, no HTTP), with OpenBLAS's default threads "
        "(what a worker gets without OPENBLAS_NUM_THREADS) and with 1 BLAS thread.\n\n"
        + markdown_table(["step", "p50 ms", "p99 ms", "p50 ms, 1 BLAS thread",
                          "p99 ms, 1 BLAS thread"], profile),
    ])
    publish("serve", "Serving: publish to Redis and the API under load", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
