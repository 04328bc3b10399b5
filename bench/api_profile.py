"""The API's cost per request: where a known user's request spends its time, and the
API under load before and after, against Redis GETs at the same concurrency.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/api_profile.py [--baseline HEAD]

Everything runs on this machine, against a private redis-server on a free loopback port, with a
synthetic model published by publish() itself (--users users, --items items, top 20, similar
items and explanations' histories on, as the project publishes):
  1. in this process (no HTTP), each piece of one known user's GET /recommendations/<user>?n=20
     timed alone (median of batches): Flask's request context and routing, the hooks (request
     id, token check), validation, the bucket hash, the Lua call and its round trip, record
     decoding, building and encoding the JSON body, the Prometheus counters, and whole requests
     through the WSGI app; with the same for the --baseline code (a `git archive` of that ref, in
     a subprocess), and where cProfile puts the time, by package;
  2. the HTTP server's own share: wrk at 1 connection against a bare WSGI app under the same
     server and settings, Flask's /healthz, and the known-user route, for each tree under its own
     server (serving/server.py, granian; a baseline from before it: gunicorn);
  3. under load: wrk (95% known users, 5% unknown -> fallback, n=20) at each --concurrency against
     the --baseline code, this checkout with the hot path off, and this checkout, one after the
     other per row, and redis-benchmark GET at the same concurrency; `cat /proc/loadavg` beside
     each row;
  4. server settings (workers x threads) for this checkout's code at the same concurrencies.
Writes its own section of docs/benchmarks.md (<!-- bench:api_profile -->).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The code under test: this checkout, or (for the baseline's in-process profile) an archive of a
# git ref, put first on the path by the parent process.
SOURCE = Path(os.environ.get("DAILYREC_PROFILE_SOURCE") or ROOT)
sys.path.insert(0, str(ROOT))
if SOURCE != ROOT:
    sys.path.insert(0, str(SOURCE))
# prometheus_client reads this when first imported: profile what a server's worker runs.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="dailyrec-profile-"))
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

from werkzeug.test import EnvironBuilder  # noqa: E402

from bench.report import markdown_table, publish  # noqa: E402

DAY = dt.date(2026, 11, 21)
KNOWN_PATH = "/recommendations/u{user}"
QUERY = "n=20"

# A bare WSGI app under the same server and settings: what the server itself costs per request.
HELLO_BODY = b'{"status":"alive"}\n'


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(HELLO_BODY)))])
    return [HELLO_BODY]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- 1. in-process pieces ------------------------------------------------------------------------

def per_call_us(fn, n: int, rounds: int = 7) -> tuple[float, float]:
    """(CPU, wall) microseconds per call of fn, n calls a round: the median over rounds of this
    thread's CPU time (what other processes on a busy machine do not inflate; it leaves out
    waiting for Redis), and the fastest round's wall time (the round trip included)."""
    fn()
    cpu, wall = [], []
    for _ in range(rounds):
        c, t = time.thread_time(), time.perf_counter()
        for _ in range(n):
            fn()
        wall.append((time.perf_counter() - t) / n * 1e6)
        cpu.append((time.thread_time() - c) / n * 1e6)
    return statistics.median(cpu), min(wall)


def environ_for(path: str, query: str = QUERY, headers: dict | None = None) -> dict:
    return EnvironBuilder(path=path, query_string=query, headers=headers or {}).get_environ()


def wsgi_call(app, environ: dict):
    def start_response(status, headers, exc_info=None):
        return None

    def call():
        body = app(dict(environ), start_response)
        out = b"".join(body)
        if hasattr(body, "close"):
            body.close()
        return out
    return call


def pieces(redis_url: str, users: list[str], n: int) -> list[list]:
    """[piece, microseconds per call] for one known user's request, piece by piece."""
    import flask
    import numpy as np

    from dailyrec.publish import keys as K
    from serving import api, auth
    from serving.app import create_app

    app = create_app({"REDIS_URL": redis_url})
    store = app.extensions["dailyrec.publish"]
    telemetry = app.extensions["dailyrec.telemetry"]
    user = users[0]
    path = KNOWN_PATH.format(user=user.removeprefix("u"))
    env = environ_for(path)
    rows = []

    def row(name, fn, calls=n):
        rows.append([name, *(round(x, 1) for x in per_call_us(fn, calls))])
        print(rows[-1], flush=True)

    row("/healthz through the WSGI app (Flask + this app's hooks, no Redis)",
        wsgi_call(app, environ_for("/healthz", "")))
    bare = flask.Flask("bare")
    bare.get("/healthz")(lambda: flask.jsonify(status="alive"))
    row("  a bare Flask app's jsonify route (no hooks)", wsgi_call(bare, environ_for("/healthz", "")))
    row("  a bare Flask app, request context push + pop only",
        lambda: bare.request_context(dict(env)).push() or flask.globals.request_ctx.pop())
    adapter = app.url_map.bind_to_environ(env)
    row("routing: url_map match", lambda: adapter.match(path, "GET"))
    row("request context push + pop (routing, null session)",
        lambda: app.request_context(dict(env)).push() or flask.globals.request_ctx.pop())
    row("query string parse (request.args)", lambda: flask.Request(dict(env)).args)

    version, record, _ = store.lookup(user)
    with app.test_request_context(f"{path}?{QUERY}"):
        row("request id + timer (telemetry._start)", telemetry._start)
        row("token check, none configured (auth.require_api)", auth.require_api)
        app.extensions["dailyrec.auth"]["api"] = auth.TokenSet(auth.parse_tokens("t" * 32, "x"))
        with app.test_request_context(f"{path}?{QUERY}",
                                      headers={"Authorization": "Bearer " + "t" * 32}):
            row("token check, one token configured", auth.require_api)
        app.extensions["dailyrec.auth"]["api"] = auth.TokenSet(())
        row("validation: user id, recent, explain, n",
            lambda: (api._checked_id(user, "user_id"), api._recent(), api._explain(),
                     api._n(version)))
        row("bucket hash (FNV-1a + fmix32)", lambda: K.bucket_of(user, version.n_buckets))
        keys = [store.layout.current, store.layout.bucket(version.name,
                                                          K.bucket_of(user, version.n_buckets))]
        row("Redis: the Lua call through redis-py's Script (EVALSHA; the baseline's call)",
            lambda: store._lookup(keys=keys, args=[version.name, user]))
        row("Redis: a plain GET (redis-py)", lambda: store.client.get(keys[0]))
        row("Redis: PING on a raw socket (the round trip alone)", raw_ping(store.client))
        row("store.lookup (hash + Lua + decode)", lambda: store.lookup(user))
        raw = store.client.hget(keys[1], user)
        row("record decoding (struct, 20 items)", lambda: K.decode_record(raw, version.top_n))

        def build():
            seen = np.zeros(0, dtype=np.int64)
            just_seen = set(seen[seen >= 0].tolist())
            chosen = [(i, s) for i, s in record if i not in just_seen][:20]
            items = [{"id": version.item_ids[i], "score": round(s, 6)} for i, s in chosen]
            return {"user_id": user, "items": items, "model_version": version.name,
                    "source": "personalized"}
        row("response dict (ids, round(score, 6))", build)
        body = build()
        row("JSON encoding (json.dumps, Flask's settings)",
            lambda: app.json.dumps(body, separators=(",", ":")))
        row("jsonify (JSON + Response object)", lambda: flask.jsonify(body))
        row("Prometheus: recommendations counter",
            lambda: telemetry.recommendations.labels("personalized").inc())
        response = flask.jsonify(body)
        row("Prometheus + X-Request-ID (telemetry._finish)", lambda: telemetry._finish(response))
        if hasattr(store, "lookup_record"):  # this checkout's hot path
            from serving import render

            row("this checkout: the Lua call on the thread's own connection (_eval_lookup)",
                lambda: store._eval_lookup(keys, [version.name, user]))
            row("this checkout: store.lookup_record (hash + Lua, no decoding)",
                lambda: store.lookup_record(user))
            row("this checkout: the body from pre-encoded pieces (render.list_body)",
                lambda: render.list_body(version, user, raw, 20))
            row("this checkout: Response from the body (response_class)",
                lambda: app.response_class(render.list_body(version, user, raw, 20),
                                           mimetype="application/json"))
            row("this checkout: the recommendations counter (cached child)",
                lambda: telemetry.count_list("personalized"))
    return rows


def raw_ping(client):
    import socket

    kw = client.connection_pool.connection_kwargs
    sock = socket.create_connection((kw.get("host", "127.0.0.1"), kw.get("port", 6379)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def ping():
        sock.sendall(b"PING\r\n")
        sock.recv(64)
    return ping


def whole_request(redis_url: str, users: list[str], n: int) -> dict:
    """Whole known-user requests through the WSGI app, and cProfile's time by package."""
    from serving.app import create_app

    app = create_app({"REDIS_URL": redis_url})
    envs = [environ_for(KNOWN_PATH.format(user=u.removeprefix("u"))) for u in users]
    calls = [wsgi_call(app, e) for e in envs]
    for call in calls[:50]:
        call()
    it = iter(range(10**9))

    def one():
        calls[next(it) % len(calls)]()
    cpu, wall = per_call_us(one, n)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        one()
    prof.disable()
    stats = pstats.Stats(prof)
    by_package: dict[str, float] = {}
    total = 0.0
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():
        by_package[package_of(filename)] = by_package.get(package_of(filename), 0.0) + tottime
        total += tottime
    return {"cpu_us": cpu, "wall_us": wall,
            "share": {k: v / total for k, v in by_package.items()}}


def package_of(filename: str) -> str:
    path = filename.replace("\\", "/")
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for own in ("serving", "dailyrec", "bench"):
        if f"/{own}/" in path:
            return own
    if path.startswith("<"):
        return "builtins (C: sockets, json, struct...)"
    return "stdlib"


# --- 2.-4. the HTTP server under wrk -------------------------------------------------------------

def server_command(source: Path, app: str | None) -> tuple[list[str], str]:
    """The command that serves `app` (default: the API) the way `source`'s tree serves it, and
    the server's name: serving/server.py (granian) where the tree has it, else gunicorn with the
    tree's serving/gunicorn.conf.py (a baseline from before the switch)."""
    if (source / "serving" / "server.py").exists():
        target, factory = (app, False) if app else ("serving.app:create_app", True)
        code = f"from serving import server; server.main({target!r}, factory={factory})"
        return [sys.executable, "-c", code], "granian"
    return ([str(Path(sys.executable).parent / "gunicorn"), "-c",
             str(source / "serving" / "gunicorn.conf.py"), app or "serving.app:create_app()"],
            "gunicorn")


@contextlib.contextmanager
def api_server(redis_url: str, source: Path, env: dict | None = None, app: str | None = None):
    from tests import servers

    port = servers.free_port()
    metrics = tempfile.mkdtemp(prefix="dailyrec-bench-metrics-")
    full = {**os.environ, "REDIS_URL": redis_url, "DAILYREC_BIND": f"127.0.0.1:{port}",
            "PROMETHEUS_MULTIPROC_DIR": metrics, "PYTHONPATH": f"{source}:{ROOT}",
            **(env or {})}
    command, _ = server_command(source, app)
    proc = subprocess.Popen(command, cwd=source, env=full, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        servers.wait_for_port(port, proc=proc)
        base = f"http://127.0.0.1:{port}"
        for _ in range(40):  # every worker loads the version before timing starts
            with contextlib.suppress(Exception):
                import urllib.request
                urllib.request.urlopen(f"{base}/recommendations/u1?n=20", timeout=10).read()
        yield base
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(metrics, ignore_errors=True)


def wrk_row(base: str, script: Path, connections: int, seconds: int) -> dict:
    from bench.serve import run_wrk

    r = run_wrk(base, script, connections, seconds)
    r["loadavg"] = loadavg()
    return r


def baseline_tree(ref: str) -> Path:
    """serving/ and dailyrec/ as they are at a git ref, in a temporary folder."""
    out = Path(tempfile.mkdtemp(prefix="dailyrec-baseline-"))
    archive = subprocess.run(["git", "archive", ref, "serving", "dailyrec"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def setup_redis(users: int, items: int):
    from bench.serve import synthetic_bundle
    from dailyrec.publish.settings import PublishSettings
    from dailyrec.publish import connection
    from dailyrec.publish import writer as pub
    from tests import servers

    server = servers.start_redis()
    client = connection.client({"REDIS_URL": server.url}, timeout=120)
    bundle = synthetic_bundle(users, items, 32, 10)
    settings = PublishSettings(top_n=20, filter_already_liked=True, batch_size=100_000,
                               keep_versions=1, similar_items=True, explain_items=20)
    pub.publish(bundle, client, settings, run_date=DAY, progress=False)
    return server, client


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--calls", type=int, default=2000, help="calls per timed batch, in-process")
    ap.add_argument("--seconds", type=int, default=8, help="wrk duration per row")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--repeat", type=int, default=2,
                    help="passes over the concurrencies, before/after order alternating")
    ap.add_argument("--baseline", default="HEAD",
                    help="git ref whose serving/ and dailyrec/ are the 'before' ('' for none)")
    ap.add_argument("--settings", default="2x2,4x1,4x2,8x1",
                    help="server workers x threads to compare ('' to skip)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # in-process profile of another tree
    args = ap.parse_args(argv)

    if args.child:  # redis url: whole requests of SOURCE's code, printed as JSON
        users = [f"u{i}" for i in range(0, args.users, max(1, args.users // 1000))]
        print("RESULT " + json.dumps(whole_request(args.child, users, args.calls)))
        return 0

    import numpy as np

    from bench.serve import WRK_SCRIPT, run_redis_benchmark, wrk_script

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.baseline:  # named by its commit in the tables: HEAD moves on
        args.baseline = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT,
                                       check=True, capture_output=True, text=True).stdout.strip()
    rng = np.random.default_rng(5)
    users = [f"u{i}" for i in rng.integers(0, args.users, 1000)]
    print(f"publishing {args.users:,} synthetic users ...", flush=True)
    server, client = setup_redis(args.users, args.items)
    before = baseline_tree(args.baseline) if args.baseline else None
    try:
        print("in-process pieces ...", flush=True)
        piece_rows = pieces(server.url, users, args.calls)
        whole_after = whole_request(server.url, users, args.calls)
        whole_before = None
        if before is not None:
            out = subprocess.run([sys.executable, __file__, "--child", server.url,
                                  "--users", str(args.users), "--calls", str(args.calls)],
                                 env={**os.environ, "DAILYREC_PROFILE_SOURCE": str(before)},
                                 capture_output=True, text=True, check=True).stdout
            whole_before = json.loads(out.split("RESULT ", 1)[1])
        print(whole_before, whole_after, flush=True)

        print("the server's share, 1 connection ...", flush=True)
        share_rows = []
        hello_script = None
        with wrk_script(WRK_SCRIPT % {"last_user": args.users - 1}) as script, \
                wrk_script("") as plain:
            hello_script = plain
            trees = [("this checkout", ROOT)] + ([(f"baseline ({args.baseline})", before)]
                                                  if before is not None else [])
            for label, tree in trees:
                name = server_command(tree, None)[1]
                with api_server(server.url, tree, app="bench.api_profile:hello") as base:
                    r = wrk_row(base + "/healthz", hello_script, 1, args.seconds)
                    share_rows.append([f"bare WSGI app ({name} alone), {label}", r])
                with api_server(server.url, tree) as base:
                    r = wrk_row(base + "/healthz", hello_script, 1, args.seconds)
                    share_rows.append([f"Flask /healthz ({name}), {label}", r])
                    r = wrk_row(base, script, 1, args.seconds)
                    share_rows.append([f"known user ({name}), {label}", r])
            for row in share_rows:
                print(row[0], row[1], flush=True)

            print("under load: before / after / Redis ...", flush=True)
            load_rows = []
            stack = contextlib.ExitStack()
            with stack:
                after_base = stack.enter_context(api_server(server.url, ROOT))
                # this checkout's server with the hot path off: Flask answers every request
                flask_base = stack.enter_context(api_server(
                    server.url, ROOT, {"DAILYREC_API_HOT_PATH": "false"}))
                before_base = (stack.enter_context(api_server(server.url, before))
                               if before is not None else None)
                for rep in range(args.repeat):
                    for c in concurrencies:
                        # alternate which one goes first: a busy spell should not always land
                        # on the same side
                        b = a = None
                        if rep % 2:
                            a = wrk_row(after_base, script, c, args.seconds)
                        f = wrk_row(flask_base, script, c, args.seconds)
                        if before_base:
                            b = wrk_row(before_base, script, c, args.seconds)
                        if a is None:
                            a = wrk_row(after_base, script, c, args.seconds)
                        g = run_redis_benchmark(server.port, c, 100_000)
                        g["loadavg"] = loadavg()
                        load_rows.append((c, b, f, a, g))
                        print(c, b, f, a, g, flush=True)

            settings_rows = []
            for setting in [s for s in args.settings.split(",") if s]:
                workers, threads = setting.split("x")
                env = {"WEB_CONCURRENCY": workers, "DAILYREC_THREADS": threads}
                with api_server(server.url, ROOT, env) as base:
                    for c in concurrencies:
                        r = wrk_row(base, script, c, args.seconds)
                        settings_rows.append([f"{workers} x {threads}", c, r])
                        print(settings_rows[-1], flush=True)
    finally:
        server.stop()
        if before is not None:
            shutil.rmtree(before, ignore_errors=True)

    write_section(args, piece_rows, whole_before, whole_after, share_rows, load_rows,
                  settings_rows)
    return 0


def _us(rps: float) -> float:
    return round(1e6 / rps, 1)


def write_section(args, piece_rows, whole_before, whole_after, share_rows, load_rows,
                  settings_rows) -> None:
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True).stdout.split()[2].removeprefix("v=")
    parts = [
        f"Synthetic model published by publish(): {args.users:,} users, {args.items:,} items, "
        f"top 20, similar items and explanations' histories on; Redis {redis_version} on "
        "loopback; wrk, the HTTP server and Redis share this machine's "
        f"{os.cpu_count()} cores. Baseline: serving/ and dailyrec/ as at `{args.baseline}` "
        "(`git archive`), run side by side with this checkout's. Load average (1, 5, 15 min, "
        "`/proc/loadavg`) beside each row.",
    ]
    rows = [list(r) for r in piece_rows]
    if whole_before is not None:
        rows.insert(0, [f"whole request, baseline `{args.baseline}` (WSGI, no HTTP)",
                        round(whole_before["cpu_us"], 1), round(whole_before["wall_us"], 1)])
    rows.insert(0 if whole_before is None else 1,
                ["whole request, this checkout (WSGI, no HTTP)", round(whole_after["cpu_us"], 1),
                 round(whole_after["wall_us"], 1)])
    parts.append(
        "**Where a known user's request goes, in-process** (GET /recommendations/<user>?n=20, "
        f"7 batches of {args.calls:,} calls: the median batch's CPU time of this thread per call "
        "(leaves out waiting for Redis, and what other processes take) and the fastest batch's "
        "wall time per call; PROMETHEUS_MULTIPROC_DIR set, as in a "
        "server's worker; no per-request log line: the server's access log is off by default and "
        "the app logs nothing on success). Pieces overlap (the whole-request rows contain the "
        "rest).\n\n"
        + markdown_table(["piece", "CPU µs per call", "wall µs per call"], rows))
    names = sorted(set(whole_after["share"]) | set((whole_before or {}).get("share", {})),
                   key=lambda k: -(whole_before or whole_after)["share"].get(k, 0))
    share_table = [[k, f"{(whole_before or {}).get('share', {}).get(k, 0):.0%}"
                    if whole_before else "", f"{whole_after['share'].get(k, 0):.0%}"]
                   for k in names if max(whole_after["share"].get(k, 0),
                                         (whole_before or {}).get("share", {}).get(k, 0)) >= 0.01]
    parts.append("**cProfile, whole requests by package** (share of self time):\n\n"
                 + markdown_table(["package", f"baseline `{args.baseline}`", "this checkout"],
                                  share_table))
    parts.append(
        "**The HTTP server's share**, wrk at 1 connection (one request at a time: µs per "
        "request = 1 / req/s, the whole round trip through wrk, the server, the app and Redis); "
        "each tree under its own server (this checkout: serving/server.py, granian; a baseline "
        "from before it: gunicorn with its serving/gunicorn.conf.py):\n\n"
        + markdown_table(["server", "req/s", "µs per request", "p50 ms", "p99 ms", "loadavg"],
                         [[name, round(r["rps"]), _us(r["rps"]), r["p50"], r["p99"],
                           r["loadavg"]] for name, r in share_rows]))
    load = []
    for c, b, f, a, g in load_rows:
        for label, r in (("baseline", b), ("this checkout, hot path off", f),
                         ("this checkout", a)):
            if r is None:
                continue
            load.append([c, label, round(r["rps"]), r["p50"], r["p99"],
                         r["non_2xx"] or (r["socket_errors"] or 0), f"{r['rps'] / g['rps']:.3f}",
                         r["loadavg"]])
        load.append([c, "Redis GET (redis-benchmark)", round(g["rps"]), g["p50"], g["p99"], 0,
                     "1", g["loadavg"]])
    verdict = []
    for c in dict.fromkeys(r[0] for r in load_rows):
        pairs = [(b, a) for cc, b, _, a, _ in load_rows if cc == c and b is not None]
        if pairs:
            verdict.append(
                f"{c} connection{'s' if c > 1 else ''}: "
                + " / ".join(f"{a['rps'] / b['rps']:.2f}x" for b, a in pairs)
                + " the baseline's req/s, p99 "
                + " / ".join(f"{b['p99']:.2f} -> {a['p99']:.2f} ms" for b, a in pairs))
    at4 = [a for c, _, _, a, _ in load_rows if c == 4]
    at16 = [a for c, _, _, a, _ in load_rows if c == 16]
    if at4 and at16:
        verdict.append(
            "this checkout at 4 connections: " + " / ".join(f"{a['rps']:,.0f}" for a in at4)
            + f" req/s (>= 6,000: {'met' if min(a['rps'] for a in at4) >= 6000 else 'NOT met'})"
            + "; p99 at 16: " + " / ".join(f"{a['p99']:.2f}" for a in at16)
            + f" ms (< 10 ms: {'met' if max(a['p99'] for a in at16) < 10 else 'NOT met'})")
    parts.append(
        "**Under load**: wrk, 95% known users at random, 5% unknown (the fallback), n=20, "
        f"{args.seconds} s per row, each side under its own server and settings (its default "
        "workers and threads); \"hot path off\" is this checkout with DAILYREC_API_HOT_PATH=false "
        "(Flask answers every request: the server's share alone); the rows run one after the other "
        f"(which goes first alternates between the {args.repeat} passes). "
        "Targets: >= 6,000 req/s at 4 connections, p99 < 10 ms at 16. "
        + "; ".join(verdict) + ".\n\n"
        + markdown_table(["connections", "server", "req/s", "p50 ms", "p99 ms", "errors",
                          "vs Redis GET", "loadavg"], load))
    if settings_rows:
        parts.append(
            "**Server settings** (this checkout; WEB_CONCURRENCY worker processes x "
            "DAILYREC_THREADS threads each):"
            "\n\n" + markdown_table(["workers x threads", "connections", "req/s", "p50 ms",
                                     "p99 ms", "errors", "loadavg"],
                                    [[s, c, round(r["rps"]), r["p50"], r["p99"],
                                      r["non_2xx"] or (r["socket_errors"] or 0), r["loadavg"]]
                                     for s, c, r in settings_rows]))
    parts.append(
        "What changed: known users' lists and the fallback (no query but ?n=) are answered by "
        "serving/hot.py in front of Flask (same status, headers, bytes and metrics as the route: "
        "tests/test_serving_hot.py compares them; anything else, every error included, still "
        "goes through Flask), and the API runs under granian (serving/server.py) instead of "
        "gunicorn's gthread workers. Earlier (same section, 2026-12-01): the lookup's EVALSHA "
        "packed by hand on a connection each thread keeps, bodies joined from per-version "
        "pre-encoded pieces, Prometheus children looked up once.")
    publish("api_profile", "The API's cost per request (bench/api_profile.py)", "\n\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
