"""filter_noise against the simulator's truth: precision and recall of the removed users.

The simulator records which accounts are crawlers, scrapers, admins, a rotating-id scraper, slow
crawlers and headless browsers (table sim_truth). Its
days go through the real fetch_delta and merge_history into a history; validate must pass those
ordinary days at the default settings, and filter_noise, also at the default settings, must find
the bots and admins: recall >= 0.95 and precision >= 0.99 of the users it removes as bots or
internal traffic.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from dailyrec.ingest import history
from dailyrec.core import paths
from dailyrec.quality.validation import verdict as VD
from dailyrec.quality.filtering import rules as FN
from dailyrec.quality.filtering import window as FW
from dailyrec.quality import settings as quality
from tests import dq_factory as F
from tests.mini_source import fetch
from tests.params import of
from tools import simulate

FIRST = dt.date(2026, 11, 14)
DAYS = 4


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    url = f"sqlite:///{root / 'source.db'}"
    simulate.write(url, FIRST, DAYS, seed=11, users=6000, items=2000, events_per_day=25_000)
    truth = pd.read_sql("SELECT user_id, kind FROM sim_truth", sa.create_engine(url))
    return root, url, truth


def test_default_settings_find_the_bots_and_keep_the_humans(simulated, monkeypatch):
    root, url, truth = simulated
    monkeypatch.chdir(root)
    for offset in range(1, DAYS + 1):  # the scheduler's days, through the real stages
        run = FIRST + dt.timedelta(days=offset)
        params = F.default_params(run.isoformat())
        fetch(params, url, paths.DELTA_DIR)
        history.merge(paths.DELTA_EVENTS, paths.HISTORY_DIR, run, params["history"]["days"],
                      params["fetch"]["max_late_days"])
    # An ordinary simulated day passes validation at the default thresholds, volume band included.
    verdict = VD.validate(quality.validate(of(params)), paths.DELTA_EVENTS, paths.DELTA_QUARANTINE,
                         paths.HISTORY_DIR, paths.REJECTIONS, "report.html")
    assert verdict.status == "passed", [o.line() for o in verdict.outcomes if not o.success]
    band = next(o for o in verdict.outcomes if o.name == "delta_day.volume")
    assert not band.note  # enough history: the band was applied

    cfg = quality.filter_rules(of(params))
    window = FW.read_window(history.select_window(paths.HISTORY_DIR, cfg.run_date,
                                                  cfg.window_days, set()).files)
    result = FN.apply_rules(window, cfg)
    removed = result.removed_users(window)
    present = set(window.user.values.to_pylist())
    bots = set(truth["user_id"]) & present
    hits = removed & bots
    precision = len(hits) / len(removed)
    recall = len(hits) / len(bots)
    by_kind = {k: f"{len(hits & set(g['user_id']))}/{len(set(g['user_id']) & present)}"
               for k, g in truth.groupby("kind")}
    print(f"\nfilter quality at default settings: precision {precision:.3f}, recall {recall:.3f} "
          f"({len(hits)} of {len(bots)} bots and admins found, {len(removed - bots)} humans "
          f"removed; by kind {by_kind})")
    assert len(bots) >= 8
    assert recall >= 0.95
    assert precision >= 0.99
    # Every kind of bot is found, the new ones included: a scraper rotating 300 user ids behind
    # one IP, a slow crawler under every rate limit, a headless browser no crawler list knows.
    for kind, group in truth.groupby("kind"):
        present_ids = set(group["user_id"]) & present
        assert present_ids, kind
        assert len(removed & present_ids) >= 0.95 * len(present_ids), (kind, by_kind)

    # The heaviest humans stay (only their repeats go).
    users = window.user.values.to_numpy(zero_copy_only=False)[window.user.codes]
    human = ~np.isin(users, list(bots))
    counts = pd.Series(users[human]).value_counts()
    heavy = counts.index[:5]
    kept = pd.Series(users[result.keep]).value_counts()
    assert counts.iloc[0] > 500  # a heavy user indeed
    assert (kept.reindex(heavy).fillna(0) >= 0.5 * counts[heavy]).all()
