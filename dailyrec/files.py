"""Files written atomically, and the hashes DVC records for them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def tmp_path(path: Path) -> Path:
    """A temporary sibling of path (same directory, so the rename is atomic), unique per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


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
    """MD5 of a file's bytes, read in blocks: the hash DVC records for a file output."""
    digest = hashlib.md5()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
