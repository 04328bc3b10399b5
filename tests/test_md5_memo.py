"""file_md5 remembers a file's MD5 against its stat, under the state directory: a file no one
rewrote is read once (validate's sixty window files, data/clean for train and evaluate), and any
change to a file, or a memo that cannot be used, costs only a read, never a wrong hash."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time

from dailyrec.core import env, files


def _true_md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _memo_rows(state) -> list[tuple]:
    with sqlite3.connect(state / files.MD5_MEMO) as db:
        return db.execute("SELECT path, md5 FROM md5").fetchall()


def test_a_settled_file_is_read_once_and_any_change_is_seen(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv(env.STATE_DIR, str(state))
    monkeypatch.setattr(files, "MD5_SETTLED_S", 3600)
    path = tmp_path / "day.parquet"
    path.write_bytes(b"a" * 5000)
    assert files.file_md5(path) == _true_md5(path)
    assert _memo_rows(state) == []  # changed within MD5_SETTLED_S: not remembered ("racy")
    monkeypatch.setattr(files, "MD5_SETTLED_S", 0)
    time.sleep(0.05)  # longer than a tick of the file system's clock
    assert files.file_md5(path) == _true_md5(path)
    assert _memo_rows(state) == [(str(path.resolve()), _true_md5(path))]
    # The memo is what answers now: a forged entry for the same stat comes back as is.
    with sqlite3.connect(state / files.MD5_MEMO) as db:
        db.execute("UPDATE md5 SET md5 = 'remembered'")
    assert files.file_md5(path) == "remembered"
    # Rewritten in place with the same size and its old mtime put back: the ctime moved.
    before = path.stat()
    with path.open("r+b") as fh:
        fh.write(b"b")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size
    assert files.file_md5(path) == _true_md5(path) != "remembered"
    # Replaced by another file (a rename over it, as every writer here does).
    other = tmp_path / "new.parquet"
    other.write_bytes(b"c" * 5000)
    other.replace(path)
    assert files.file_md5(path) == _true_md5(path)
    assert files.dvc_md5(path) == _true_md5(path)


def test_an_unusable_memo_only_costs_a_read(tmp_path, monkeypatch):
    path = tmp_path / "day.parquet"
    path.write_bytes(b"x" * 100)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    monkeypatch.setenv(env.STATE_DIR, str(blocker))
    assert files.file_md5(path) == _true_md5(path)
    state = tmp_path / "state"
    state.mkdir()
    (state / files.MD5_MEMO).write_text("not a database")
    monkeypatch.setenv(env.STATE_DIR, str(state))
    assert files.file_md5(path) == _true_md5(path)
