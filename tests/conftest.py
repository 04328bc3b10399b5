import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from tests import servers  # noqa: E402


_STARTED = pytest.StashKey[float]()


def pytest_runtest_setup(item):
    import time

    item.stash[_STARTED] = time.time()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test prints the end of every server log written while it ran (tests/servers.py
    writes each server's output to a file of its own)."""
    report = yield
    if report.failed and _STARTED in item.stash:
        for path in servers.logs_written_since(item.stash[_STARTED]):
            lines = path.read_text(errors="replace").splitlines()[-40:]
            report.sections.append((f"server log {path}", "\n".join(lines)))
    return report


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own state directory (alert throttle, mail outbox, the runner's
    memory), so nothing a test leaves there reaches another test, or the checkout's .state/
    (where `make demo` keeps its own). A test may still point DAILYREC_STATE_DIR elsewhere."""
    monkeypatch.setenv("DAILYREC_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(autouse=True)
def no_alert_outlives_its_test():
    """Alerts a test queued (the API mails them off the request thread) are sent before the next
    test starts, so none lands in another test's mailbox, whatever the order."""
    yield
    notify = sys.modules.get("dailyrec.ops.notify")
    if notify is not None:
        notify.wait_for_alerts()


@pytest.fixture(autouse=True)
def no_machine_redis(monkeypatch):
    """Tests never reach the machine's own Redis (where `make demo` publishes): a test that needs
    one starts its own and says so in REDIS_URL; one that does not gets a port nothing listens
    on, so a runner that asks what is served hears "unavailable" at once."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")


@pytest.fixture(scope="session")
def postgres():
    server = servers.start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server():
    server = servers.start_redis()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def gcs_emulator():
    """gcp-storage-emulator with the bucket of the committed gcs remote (gs://dailyrec-dvc)."""
    from tests import emulators

    server = emulators.start_gcs()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite():
    """Azurite's blob service with the container of the committed azure remote."""
    from tests import emulators

    server = emulators.start_azurite()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def spark():
    """A Spark session in local[2] for one test module (PySpark is the spark extra)."""
    from dailyrec.core import spark as SP

    environ = dict(os.environ)  # PySpark leaves variables of its own behind: later tests see none
    session = SP.session({"spark.master": "local[2]", "spark.sql.shuffle.partitions": "3",
                          "spark.ui.enabled": "false", "spark.driver.memory": "2g"})
    session.sparkContext.setLogLevel("ERROR")
    yield session
    with SP.arrow_only():
        session.stop()
    os.environ.clear()
    os.environ.update(environ)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A small modeling workspace (tests/modeling_workspace.py: 14 days of clean events), MLflow
    off, as the working directory (test_train, test_spark_train; test_evaluate has its own)."""
    from tests.modeling_workspace import make_workspace

    monkeypatch.setenv("DAILYREC_MLFLOW", "off")
    root = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(root)
    return root
