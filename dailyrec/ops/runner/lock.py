"""One daily run at a time: an exclusive, non-blocking flock on .dvc/tmp/daily-run.lock. A second
run exits with status 75 and says who holds it; the kernel drops the lock when its holder dies, so
a crashed run never blocks the next one."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from dailyrec.core import errors, paths
from dailyrec.ops.runner import commands


class RunLock:
    """An exclusive, non-blocking flock; the file holds who took it, for the refusal message."""

    def __init__(self, path: Path = paths.RUN_LOCK):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, holder: dict) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise errors.Busy(busy_message(self.path, info)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd = fd
        commands.inherit((fd,))
        return self

    def release(self) -> None:
        commands.inherit(())
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def busy_message(path: Path, info: str) -> str:
    try:
        holder = json.loads(info)
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
               f", for {holder.get('dates')}")
    except ValueError:
        who = "holder unknown"
    return (f"another daily run is in progress ({who}); not starting a second one. "
            f"Lock: {path.resolve()}")
