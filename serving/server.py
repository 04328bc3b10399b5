"""The API's HTTP server: granian (HTTP/1.1 in Rust; the Flask app in each worker process's
threads). `python -m serving.server` is what `make serve` and the serving image run.

Environment: DAILYREC_BIND (127.0.0.1:8000), WEB_CONCURRENCY (worker processes, default twice the
CPU count), DAILYREC_THREADS (threads running the app per worker, 2), DAILYREC_ACCESS_LOG (1: a
line per request on stderr; off by default: at thousands of requests a second it costs more
than the request), DAILYREC_LOG_LEVEL (info), DAILYREC_WORKER_MAX_RSS_MB (a worker grown past
this is replaced, 1024), DAILYREC_PID_FILE (where to write the server's pid; none by default).

Why granian rather than gunicorn: a request costs the server far less. With Flask answering every
request (the hot path off), on this 2-core machine, gunicorn's gthread workers answered
2,650-3,160 requests/s at 4 connections and granian 4,440-4,620; a bare WSGI app 4,100 and 11,300
at 1 connection (docs/benchmarks.md, bench/api_profile.py).

At start granian warns that there are more workers than cores (on purpose: keep-alive connections
stay with the worker that accepted them) and, on kernels without net.ipv4.tcp_migrate_req=1, that
connections queued on a worker being replaced may be reset (set that sysctl on the host).
"""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path


def _workers() -> int:
    return int(os.environ.get("WEB_CONCURRENCY") or 2 * (os.cpu_count() or 1))


def prepare_environment() -> None:
    """What must be set before a worker imports anything."""
    # One BLAS thread per worker: the workers and their threads are the concurrency; a fold-in's
    # matrix-vector product split over BLAS threads was 3-10x slower at p99 under load
    # (docs/benchmarks.md, section serve).
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    # Prometheus metrics from every worker: prometheus_client reads this variable when first
    # imported (in the workers); /metrics adds up the files. Counters from an earlier run would
    # otherwise add up, so a start clears them.
    metrics = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics:
        metrics = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="dailyrec-metrics-")
    os.makedirs(metrics, exist_ok=True)
    for path in glob.glob(os.path.join(metrics, "*.db")):
        os.remove(path)


def server(target: str = "serving.app:create_app", factory: bool = True):
    """The configured server for a WSGI app (`target`: module:name, a factory when `factory`)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    host, _, port = os.environ.get("DAILYREC_BIND", "127.0.0.1:8000").rpartition(":")
    pid_file = os.environ.get("DAILYREC_PID_FILE")
    return Granian(
        target, factory=factory, interface=Interfaces.WSGI,
        address=host.strip("[]") or "0.0.0.0", port=int(port),
        workers=_workers(), blocking_threads=int(os.environ.get("DAILYREC_THREADS", "2")),
        http=HTTPModes.http1, websockets=False,
        # The app bounds what it accepts (ids of 128 characters, 50 recent items: about 20 KB
        # once URL-encoded); granian's HTTP/1 buffer (408 KB) is far above it.
        http1_settings=HTTP1Settings(keep_alive=True),
        log_level=LogLevels(os.environ.get("DAILYREC_LOG_LEVEL", "info").lower()),
        log_access=os.environ.get("DAILYREC_ACCESS_LOG", "").lower() in ("1", "true", "yes"),
        # Unattended for months: a worker that dies is started again, and one that grows (a
        # leak) is replaced, its open requests given workers_kill_timeout to finish.
        respawn_failed_workers=True,
        workers_max_rss=int(os.environ.get("DAILYREC_WORKER_MAX_RSS_MB", "1024")),
        workers_kill_timeout=10,
        pid_file=Path(pid_file).resolve() if pid_file else None,
    )


def main(target: str = "serving.app:create_app", factory: bool = True) -> None:
    prepare_environment()
    server(target, factory).serve()


if __name__ == "__main__":
    main()
