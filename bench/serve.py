"""Serving speed: publish throughput and Redis memory at 1M users; the API under load vs raw Redis.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/serve.py [--users 1000000] [--items 20000]

Everything runs on this machine, against a private redis-server on a free loopback port:
  1. scoring: publish's recommend (implicit's batch recommend, unfiltered + vectorised filter)
     against implicit's own filtered batch recommend, same users, same lists;
  2. the Redis write path alone (records -> Redis) for every user: publish's raw-RESP HSET writer
     against plain redis-py pipelining of the same commands, and against one key per user (MSET);
     Redis memory per user from INFO used_memory;
  3. publish() end to end (score, write, verify, switch) for every user;
  4. the API (gunicorn with serving/gunicorn.conf.py) under wrk from a separate process at several
     concurrencies, against redis-benchmark GET at the same concurrencies as the ceiling.
A synthetic model stands in for a trained one (random factors, Zipf-like interactions): publish and
serving speed do not depend on how good the factors are.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
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
from dailyrec.model.recommender import ALSRecommender  # noqa: E402
from dailyrec.settings.serving import PublishSettings  # noqa: E402
from dailyrec.store import connection  # noqa: E402
from dailyrec.store import keys as K  # noqa: E402
from dailyrec.store import writer as pub  # noqa: E402
from tests import servers  # noqa: E402

DAY = dt.date(2026, 11, 21)
LAYOUT = K.Layout()


def synthetic_bundle(n_users: int, n_items: int, factors: int, per_user: int,
                     seed: int = 0) -> artifacts.ModelBundle:
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(seed)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, random_state=seed)
    model.user_factors = rng.standard_normal((n_users, factors), dtype=np.float32) * 0.1
    model.item_factors = rng.standard_normal((n_items, factors), dtype=np.float32) * 0.1
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    counts = np.minimum(rng.geometric(1 / per_user, n_users), n_items // 2)
    rows = np.repeat(np.arange(n_users), counts)
    cols = rng.choice(n_items, size=rows.size, p=weights / weights.sum())
    user_items = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)),
                               shape=(n_users, n_items))
    user_items.data[:] = 1
    return artifacts.ModelBundle(model, np.array([f"u{i}" for i in range(n_users)]),
                                 np.array([f"i{j}" for j in range(n_items)]), user_items, {})


def used_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


def flush(client) -> int:
    client.flushall(asynchronous=False)
    return used_memory(client)


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
        pub.send_commands(client, pub.hset_commands(LAYOUT, "bench", buckets[rows],
                                                    ids.take(rows), records[rows]))
    ours = time.perf_counter() - t
    ours_mem = (used_memory(client) - base) / n
    assert pub.bucket_lengths(client, LAYOUT, "bench", n_buckets) == n
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


def bench_publish(client, bundle) -> dict:
    base = flush(client)
    settings = PublishSettings(top_n=20, filter_already_liked=True, batch_size=100_000,
                               keep_versions=1)
    summary = pub.publish(bundle, client, settings, run_date=DAY, progress=False)
    summary["memory_per_user"] = (used_memory(client) - base) / len(bundle.user_ids)
    return summary


WRK_SCRIPT = """
math.randomseed(7)
request = function()
  local id
  if math.random() < 0.05 then id = "unknown-" .. math.random(1, 1000000)
  else id = "u" .. math.random(0, %d) end
  return wrk.format("GET", "/recommendations/" .. id .. "?n=20")
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
            "socket_errors": errors.group(1) if errors else ""}


def run_redis_benchmark(port: int, connections: int, requests: int) -> dict:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set,get", "-d", "160",
                          "-r", "100000", "-n", str(requests), "-c", str(connections), "--csv"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells[0] == "GET":
            return {"rps": float(cells[1]), "p50": float(cells[4]), "p99": float(cells[6])}
    raise RuntimeError(f"no GET line in redis-benchmark output:\n{out}")


def bench_api(redis_server, n_users: int, concurrencies: list[int], seconds: int) -> list[list]:
    port = servers.free_port()
    metrics_dir = tempfile.mkdtemp(prefix="dailyrec-bench-metrics-")
    env = {**os.environ, "REDIS_URL": redis_server.url, "DAILYREC_BIND": f"127.0.0.1:{port}",
           "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c",
                             "serving/gunicorn.conf.py", "serving.app:create_app()"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        servers.wait_for_port(port, proc=proc)
        for _ in range(50):  # every worker loads the version's item table before timing starts
            with urllib.request.urlopen(f"{base}/recommendations/u1?n=20", timeout=10) as r:
                json.loads(r.read())
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
            fh.write(WRK_SCRIPT % (n_users - 1))
        script = Path(fh.name)
        for c in concurrencies:
            api = run_wrk(base, script, c, seconds)
            raw = run_redis_benchmark(redis_server.port, c, 100_000)
            rows.append([c, round(api["rps"]), api["p50"], api["p99"],
                         api["non_2xx"] or (api["socket_errors"] or 0), round(raw["rps"]),
                         raw["p50"], raw["p99"], f"{api['rps'] / raw['rps']:.2f}"])
            print(rows[-1], flush=True)
        script.unlink()
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--items-per-user", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=10, help="wrk duration per concurrency")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--scoring-sample", type=int, default=50_000)
    args = ap.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    print(f"building a synthetic model: {args.users:,} users x {args.items:,} items ...",
          flush=True)
    load = [os.getloadavg()[0]]
    bundle = synthetic_bundle(args.users, args.items, args.factors, args.items_per_user)
    redis_server = servers.start_redis()
    try:
        client = connection.client({"REDIS_URL": redis_server.url}, timeout=120)
        print("scoring ...", flush=True)
        scoring = bench_scoring(bundle, args.scoring_sample)
        print(scoring, "\nwrite path ...", flush=True)
        writes = bench_write_path(client, bundle, 100_000)
        print(writes, "\npublish end to end ...", flush=True)
        summary = bench_publish(client, bundle)
        print({k: summary[k] for k in ("users_written", "users_per_second", "seconds")},
              "\nAPI ...", flush=True)
        load.append(os.getloadavg()[0])
        api = bench_api(redis_server, args.users, concurrencies, args.seconds)
        load.append(os.getloadavg()[0])
    finally:
        redis_server.stop()

    n = args.users
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True).stdout.split()[2].removeprefix("v=")
    body = "\n\n".join([
        f"Synthetic model: {n:,} users, {args.items:,} items, {args.factors} factors, "
        f"~{args.items_per_user} items per user; top 20 per user; Redis {redis_version} on "
        "loopback (no persistence), everything on this one machine (the load generator, gunicorn "
        "and Redis share its cores). Targets: publish >= 100k users/s; API p99 < 10 ms. "
        f"1-minute load average at start / before the API rows / at the end: "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (other work shared the machine; "
        f"{os.cpu_count()} cores).",
        "**Scoring** (implicit batch recommend, 1 BLAS thread): what users already have left "
        "out by implicit's own filter (a Python loop per user) vs publish's unfiltered "
        "over-fetch plus a vectorised filter.\n\n" + markdown_table(
            ["users", "implicit filter users/s", "publish users/s", "speed-up",
             "identical lists"], [scoring]),
        f"**Writing {n:,} users' records to Redis** (records already computed; "
        f"100k users per batch). Memory from INFO used_memory.\n\n" + markdown_table(
            ["writer", "users/s", "time vs publish", "Redis bytes/user"], writes),
        f"**publish() end to end**, {n:,} users (score + write + verify + switch): "
        f"**{summary['users_per_second']:,.0f} users/s**, {summary['seconds']['total']:.1f} s "
        f"(scoring and encoding {summary['seconds']['score_and_encode']:.1f} s; waiting for the "
        f"Redis writer thread {summary['seconds']['waiting_for_redis']:.1f} s; verify + switch "
        f"{summary['seconds']['verify_and_switch']:.2f} s); Redis memory "
        f"{summary['memory_per_user']:.0f} bytes/user, "
        f"{summary['memory_per_user'] * n / 2**20:,.0f} MiB per version.",
        f"**API under load**: wrk ({args.seconds} s per row, 95% known users, 5% unknown -> "
        "fallback, n=20) against gunicorn with serving/gunicorn.conf.py (gthread, workers = "
        "cores, 4 threads); ceiling: redis-benchmark GET of a 160-byte value at the same "
        "concurrency. One API request = one Redis round trip (a read-only Lua script: GET "
        "current, HGET the user).\n\n"
        + markdown_table(["connections", "API req/s", "p50 ms", "p99 ms", "errors",
                          "Redis GET req/s", "p50 ms", "p99 ms", "API / Redis"], api),
    ])
    publish("serve", "Serving: publish to Redis and the API under load", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
