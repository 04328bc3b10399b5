"""Files written atomically, the hashes DVC records for them, and YAML read fast."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, TextIO

import yaml

from dailyrec.core import env

# A file's MD5 is remembered against its stat (as DVC's own state does), and only for a file last
# changed this long before: a file rewritten within the clock's granularity of the moment its MD5
# was noted could otherwise keep the noted times ("racy" files, as git calls them).
MD5_SETTLED_S = 2.0
MD5_MEMO = "md5.sqlite"


# libyaml's parser under PyYAML's safe constructor and resolver: the documents yaml.safe_load
# gives, about 7x faster (the runner reads dvc.lock twice per stage: 0.1 s each in Python).
# PyYAML's wheels bundle libyaml; without it, the Python parser.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(source: str | bytes | TextIO) -> Any:
    """yaml.safe_load, with libyaml's parser where PyYAML has it."""
    return yaml.load(source, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader


def tmp_path(path: Path) -> Path:
    """A temporary sibling of path (same directory, so the rename is atomic), unique per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def replace_dir(new: Path, target: Path) -> None:
    """Put the folder `new` in place of `target` with two renames (the old one goes last): a
    reader sees the old folder or the new one, never half of each."""
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path | str, text: str) -> None:
    """Write text atomically (temp file + rename), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    tmp.write_text(text)
    tmp.replace(path)


def write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    tmp.write_bytes(data)
    tmp.replace(path)


def write_json(path: Path | str, payload: Any) -> None:
    """JSON, sorted and indented (stable bytes for the same content), written atomically."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def file_md5(path: Path | str) -> str:
    """MD5 of a file's bytes, read in blocks: the hash DVC records for a file output. Remembered
    under the state directory against the file's device, inode, size, mtime and ctime (a write,
    a rename over it, a touch all change one of them), so a file no stage rewrote is read once."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns,
           stat.st_ctime_ns)
    memo = _md5_memo()
    if memo is None:
        return file_md5_uncached(path)
    # A memo that cannot be read or written only costs a read of the file, never a second one.
    with closing(memo):
        try:
            found = memo.execute("SELECT md5 FROM md5 WHERE path = ? AND dev = ? AND ino = ? AND "
                                 "size = ? AND mtime_ns = ? AND ctime_ns = ?", key).fetchone()
        except sqlite3.Error:
            found = None
        if found:
            return found[0]
        md5 = file_md5_uncached(path)
        if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > MD5_SETTLED_S * 1e9:
            try:
                with memo:
                    memo.execute("INSERT OR REPLACE INTO md5 VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (*key, md5))
            except sqlite3.Error:
                pass
        return md5


def file_md5_uncached(path: Path | str) -> str:
    """MD5 of a file's bytes, read in blocks."""
    digest = hashlib.md5()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _md5_memo() -> sqlite3.Connection | None:
    """The memo of file MD5s (one row per path), or None where the state directory is unusable:
    the hash is then computed, never refused."""
    try:
        folder = env.state_dir()
        folder.mkdir(parents=True, exist_ok=True)
        memo = sqlite3.connect(folder / MD5_MEMO, timeout=5)
        memo.execute("CREATE TABLE IF NOT EXISTS md5 (path TEXT PRIMARY KEY, dev INTEGER, "
                     "ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, md5 TEXT)")
        return memo
    except (OSError, sqlite3.Error):
        return None


def dvc_md5(path: Path | str) -> str | None:
    """The md5 DVC 3 records in dvc.lock for a file or a directory (directories end in ".dir").

    A directory's hash is the md5 of the JSON list of its files' {"md5", "relpath"}, sorted by path,
    as dvc_data's Tree.digest computes it. None when the path does not exist.
    """
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        return None
    entries = sorted(({"md5": file_md5(f), "relpath": f.relative_to(path).as_posix()}
                      for f in path.rglob("*") if f.is_file()), key=lambda e: e["relpath"])
    blob = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(blob).hexdigest() + ".dir"
