"""Real cloud-storage emulators for the remote tests and bench/remote.py, on loopback, free ports.

    GCS:   gcp-storage-emulator (PyPI, in the venv), in memory, bucket created at start.
    Azure: Azurite's blob service (npm, installed into node_modules/ by `make test`), in memory,
           container created at start with the well-known development account.

Each start_* returns an object whose `dvc_config` is what `dvc remote modify --local` needs for that
remote (endpoints and credentials live in .dvc/config.local, never in the committed .dvc/config).
Both need GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false for gcsfs (set here, before gcsfs is imported).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import free_port, log_output, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"
AZURITE_VERSION = "3.37.0"

# Azurite's published development account (documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")

# Without it gcsfs probes a gRPC API the emulator lacks and every push stalls for minutes.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


def _stop(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it lingers (Azurite may ignore SIGTERM for a while)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class GcsEmulator:
    port: int
    bucket: str
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str = "cache") -> str:
        return f"gs://{self.bucket}/{prefix}"

    @property
    def dvc_config(self) -> dict[str, str]:
        return {"endpointurl": self.endpoint, "allow_anonymous_login": "true"}

    def filesystem(self):
        from gcsfs import GCSFileSystem

        return GCSFileSystem(endpoint_url=self.endpoint, token="anon")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


def start_gcs(bucket: str = "dailyrec-dvc") -> GcsEmulator:
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    if not exe.exists():
        raise RuntimeError(f"{exe} not found: install the dev extras (make install)")
    port = free_port()
    with log_output("gcs-emulator") as log:
        proc = subprocess.Popen([str(exe), "start", "--host=127.0.0.1", f"--port={port}",
                                 "--in-memory", f"--default-bucket={bucket}", "--quiet"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=proc)
    except Exception:
        _stop(proc)
        raise
    return GcsEmulator(port=port, bucket=bucket, proc=proc)


@dataclass
class Azurite:
    port: int
    container: str
    workdir: Path
    proc: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};")

    def url(self, prefix: str = "cache") -> str:
        return f"azure://{self.container}/{prefix}"

    @property
    def dvc_config(self) -> dict[str, str]:
        # account_name + account_key alone would target the real cloud; the connection string
        # carries the emulator's endpoint.
        return {"connection_string": self.connection_string}

    def filesystem(self):
        from adlfs import AzureBlobFileSystem

        return AzureBlobFileSystem(connection_string=self.connection_string)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_azurite(container: str = "dailyrec-dvc") -> Azurite:
    if not AZURITE_BLOB.exists():
        raise RuntimeError(
            f"{AZURITE_BLOB} not found: run `make test` (it installs Azurite), or "
            f"`npm install --prefix {ROOT} --no-save --no-package-lock azurite@{AZURITE_VERSION}`")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="dailyrec-azurite-"))
    with log_output("azurite") as log:
        proc = subprocess.Popen([str(AZURITE_BLOB), "--silent", "--skipApiVersionCheck",
                                 "--inMemoryPersistence", "--disableTelemetry", "--blobHost",
                                 "127.0.0.1", "--blobPort", str(port)],
                                cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    server = Azurite(port=port, container=container, workdir=workdir, proc=proc)
    try:
        wait_for_port(port, proc=proc)
        from azure.storage.blob import BlobServiceClient

        # DVC does not create containers on push.
        with BlobServiceClient.from_connection_string(server.connection_string) as client:
            client.create_container(container)
    except Exception:
        server.stop()
        raise
    return server


def remote_bytes(fs, root: str) -> dict[str, int]:
    """Every object under root on an fsspec filesystem: path -> size (what a remote holds)."""
    fs.invalidate_cache()  # fsspec caches listings; a push since the last call must show
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    return {path: int(info["size"]) for path, info in found.items()
            if info.get("type", "file") != "directory"}
