"""Several days of `dvc repro merge_history` in a throwaway copy of the repository, as the scheduler
runs it: the simulator fills a SQLite source, then each day sets run.date and reproduces."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyarrow.parquet as pq

from dailyrec.core import env as E
from dailyrec.core import settings

pytestmark = pytest.mark.slow
from tests.workspace import project_files

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def copy_repo(dest: Path) -> None:
    """The project's files (as they are in the working tree) in a new git repository."""
    for rel in project_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_dvc_repro_day_by_day_builds_the_history_and_a_rerun_changes_nothing(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", E.SOURCE_URL: f"sqlite:///{repo / 'source.db'}"}
    env.pop("DAILYREC_PARAMS", None)
    run([str(VENV_BIN / "python"), "-m", "tools.simulate", "--start", "2026-11-14", "--days", "3",
         "--users", "200", "--items", "80", "--events-per-day", "300", "--seed", "11"], repo, env)

    history = repo / "data" / "history"
    rows_seen = []
    for n, day in enumerate((dt.date(2026, 11, 15), dt.date(2026, 11, 16),
                             dt.date(2026, 11, 17)), start=1):
        settings.set_run_date(day, repo / "params.yaml")
        run([str(VENV_BIN / "dvc"), "repro", "merge_history"], repo, env)
        fetched = json.loads((repo / "metrics" / "fetch.json").read_text())
        merged = json.loads((repo / "metrics" / "history.json").read_text())
        assert fetched["run_date"] == merged["run_date"] == day.isoformat()
        assert fetched["kept"] > 0 and fetched["quarantined"] > 0
        # The simulated days so far, one partition each (late events went to earlier days).
        assert merged["days"] == n
        assert merged["last_day"] == (day - dt.timedelta(days=1)).isoformat()
        partitions = sorted(p.parent.name for p in history.glob("day=*/events.parquet"))
        assert partitions == [f"day={dt.date(2026, 11, 14) + dt.timedelta(days=i)}"
                              for i in range(n)]
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in history.glob("day=*/*.parquet"))
        assert rows == merged["rows"]
        rows_seen.append(rows)
        assert (repo / "data" / "quarantine" / f"date={day}.parquet").exists()
    assert rows_seen[0] < rows_seen[1] < rows_seen[2]
    assert "merge_history" in (repo / "dvc.lock").read_text()

    # The last day again, forced (fetch and merge both run): nothing changes, byte for byte.
    before = tree_hashes(history), tree_hashes(repo / "data" / "quarantine")
    run([str(VENV_BIN / "dvc"), "repro", "--force", "merge_history"], repo, env)
    assert (tree_hashes(history), tree_hashes(repo / "data" / "quarantine")) == before
    again = json.loads((repo / "metrics" / "history.json").read_text())
    # the run replaced its own files with the same rows (a re-run never adds to itself)
    assert again["added"] == again["replaced"] and again["rows"] == rows_seen[-1]
