"""Real servers for the tests, started from the installed binaries on loopback, on free ports.

No mocks: PostgreSQL, Redis (and, in their own tests, SMTP and the cloud emulators) are the real
programs. Each helper returns an object with the URL and a stop() that cleans up after itself.

Each server writes its output to a log file of its own (log_file(); the folder is
$DAILYREC_TEST_LOGS, else a temporary one), and a failing test prints the end of every server log
written while it ran (tests/conftest.py), instead of the output going to /dev/null.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


LOG_DIR = Path(os.environ.get("DAILYREC_TEST_LOGS") or
               tempfile.mkdtemp(prefix="dailyrec-test-logs-"))
_LOGS: list[Path] = []


def log_file(name: str, owner: str | None = None) -> Path:
    """A new log file for a server of the tests (owner: the user the server runs as)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.chmod(0o755)  # a server run as another user (PostgreSQL) reaches its own file
    path = LOG_DIR / f"{name}-{os.getpid()}-{len(_LOGS)}.log"
    path.touch()
    if owner:
        shutil.chown(path, owner)
    _LOGS.append(path)
    return path


def logs_written_since(moment: float) -> list[Path]:
    """The server logs that changed after moment (time.time())."""
    return [p for p in _LOGS if p.exists() and p.stat().st_mtime >= moment]


def log_output(name: str):
    """An open file for a server's stdout and stderr (closed by the server process's end)."""
    return log_file(name).open("ab")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    if not found:
        raise RuntimeError(f"PostgreSQL binary {name} not found")
    return found if isinstance(found, str) else found[0]


@dataclass
class Postgres:
    port: int
    datadir: Path
    _as_user: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run([*self._as_user, _pg_bin("pg_ctl"), "-D", str(self.datadir), "-m",
                        "immediate", "stop"], capture_output=True)
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_postgres() -> Postgres:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl). As root, it runs as the postgres user."""
    base = Path(tempfile.mkdtemp(prefix="dailyrec-pg-"))
    datadir = base / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        os.chmod(base, 0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, _pg_bin("initdb"), "-D", str(datadir), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    log = log_file("postgres", owner="postgres" if as_user else None)
    subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(datadir), "-w", "-l",
                    str(log), "-o", f"-p {port} -h 127.0.0.1 -k {base} -F", "start"],
                   check=True, capture_output=True)
    return Postgres(port=port, datadir=datadir, _as_user=as_user)


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "Redis":
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        with log_output("redis") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def start_redis(password: str | None = None) -> Redis:
    return Redis(port=free_port(), password=password).start()


@dataclass
class ApiServer:
    """The API under its HTTP server (serving/server.py), as `make serve` runs it."""

    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self) -> None:
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_api(env: dict[str, str], metrics_dir: Path, workers: int = 1,
              wait: bool = True) -> ApiServer:
    """`python -m serving.server` on a free port with `env` over this process's environment
    (REDIS_PASSWORD left out: the test's Redis has none). wait=False returns before it listens
    (call .wait())."""
    import sys

    port = free_port()
    full = {**os.environ, "DAILYREC_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers),
            "DAILYREC_THREADS": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **env}
    full.pop("REDIS_PASSWORD", None)
    with log_output("api") as log:
        proc = subprocess.Popen([sys.executable, "-m", "serving.server"],
                                cwd=Path(__file__).resolve().parents[1], env=full,
                                stdout=log, stderr=subprocess.STDOUT)
    server = ApiServer(proc, port)
    if wait:
        try:
            server.wait()
        except BaseException:
            server.stop()
            raise
    return server
