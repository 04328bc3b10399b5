"""A history that dvc.lock does not record is data, not debris (found by bench/daily.py).

A team adopting dailyrec brings its history in before the first run, or a machine loses its
dvc.lock: data/history then differs from what dvc.lock records (nothing). The runner's recovery
must not take that for a stage killed mid-write and force a checkout of "nothing" over it, which
deletes the history. It keeps it, and merge_history adds the new day to it."""

from __future__ import annotations

import datetime as dt
import json
import sys

import pytest


pytestmark = pytest.mark.slow
from tests import workspace

FIRST = dt.date(2026, 11, 14)


def test_a_history_dvc_lock_does_not_record_survives_the_next_run(tmp_path, redis_server):
    ws = workspace.create(tmp_path / "repo", {"REDIS_URL": redis_server.url,
                                              "REDIS_KEY_PREFIX": "unrecorded"})
    ws.python("-m", "tools.simulate", "--start", FIRST.isoformat(), "--days", "2",
              "--users", "200", "--items", "60", "--events-per-day", "800", "--seed", "4")
    ws.set_params(**{"train.iterations": 2})
    ws.commit("settings")
    first = ws.run(sys.executable, "-m", "stages.daily", "--date",
                   (FIRST + dt.timedelta(days=1)).isoformat(), check=False)
    assert first.returncode in (0, 3), first.stdout + first.stderr  # 3: the gate, no history yet
    day_one = sorted(p.name for p in (ws.path / "data/history").iterdir())
    assert day_one == [f"day={FIRST}"]
    (ws.path / "dvc.lock").unlink()  # lost (or never there: a history brought in by hand)

    second = ws.run(sys.executable, "-m", "stages.daily", "--date",
                    (FIRST + dt.timedelta(days=2)).isoformat(), check=False)
    assert second.returncode in (0, 3), second.stdout + second.stderr
    assert "differed from dvc.lock" not in second.stdout
    days = sorted(p.name for p in (ws.path / "data/history").iterdir())
    assert days == [f"day={FIRST}", f"day={FIRST + dt.timedelta(days=1)}"], second.stdout
    history = json.loads((ws.path / "metrics/history.json").read_text())
    assert history["days"] == 2 and history["rows"] > history["added"] > 0
