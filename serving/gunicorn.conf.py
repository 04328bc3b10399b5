"""gunicorn settings for the API: `gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'`.

Environment overrides: DAILYREC_BIND (127.0.0.1:8000), WEB_CONCURRENCY (worker processes, default
twice the CPU count), DAILYREC_THREADS (threads per worker, 2), DAILYREC_WORKER_CLASS (gthread),
DAILYREC_ACCESS_LOG (a path or "-"; off by default: at thousands of requests a second it costs
more than the request), DAILYREC_LOG_LEVEL (info).
"""

import glob
import os
import tempfile

# One BLAS thread per worker: the workers and their threads are the concurrency; a fold-in's
# matrix-vector product split over BLAS threads was 3-10x slower at p99 under load
# (docs/benchmarks.md, section serve). Set before the workers import NumPy.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

bind = os.environ.get("DAILYREC_BIND", "127.0.0.1:8000")
# Two processes per core, two threads each. Keep-alive connections stay with the worker that
# accepted them, and the workers race to accept: with one worker per core, half the runs of 4
# connections on 2 cores had most of them in one process (one GIL: ~2,100 req/s instead of ~5,000);
# with 4 x 2 every run gave 4,900-5,400, and p99 at 16 connections 6-8.5 ms instead of 7.5-10
# (docs/benchmarks.md, bench/api_profile.py). Each worker holds its own copy of the served version's
# item table (and, once a visitor is folded in, its item factors).
workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * (os.cpu_count() or 1))
# Threads, not one sync process per request: keep-alive connections, and a worker waiting on Redis
# still answers others. The work per request is short, so a few threads per process suffice.
worker_class = os.environ.get("DAILYREC_WORKER_CLASS", "gthread")
threads = int(os.environ.get("DAILYREC_THREADS", "2"))
timeout = 30
# The app bounds what it accepts (ids of 128 characters, 50 recent items: about 20 KB once
# URL-encoded); gunicorn's own cap (4 KB, at most 8 KB) would refuse valid requests with an HTML
# page. Put a proxy's limit in front in production (docs/serving.md).
limit_request_line = 0
graceful_timeout = 10
keepalive = 5
max_requests = 200_000  # recycle workers now and then; the jitter keeps them from doing it at once
max_requests_jitter = 20_000
accesslog = os.environ.get("DAILYREC_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("DAILYREC_LOG_LEVEL", "info")
proc_name = "dailyrec-api"
control_socket_disable = True  # not used; several instances (tests, bench) would share its path

# Prometheus metrics from every worker: prometheus_client reads this variable when first imported,
# which happens in the workers after this file has run.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dailyrec-metrics-")


def on_starting(server):
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)  # counters from an earlier run would otherwise add up


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
