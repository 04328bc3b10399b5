"""The Spark engine (filter.engine: spark) gives the local engine's answer: in Spark local[2] mode,
each rule removes the same rows, the same events are kept in the same order, metrics/filter.json
has the same counters and top offenders, and the confidence matrix built by Spark is the one train
builds. On the crafted window of test_filter_noise (every rule fires, ties among offenders), with
default and with tight settings, and on the simulator's traffic through the real fetch_delta and
merge_history (late events in files of their own, so the window is re-sorted)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from dailyrec.quality.filtering import clean
from dailyrec.ingest import history
from dailyrec.core import paths, settings
from dailyrec.core import spark as SP
from dailyrec.core.errors import ConfigError
from dailyrec.model import confidence as C
from dailyrec.model import spark_confidence as SC
from dailyrec.model.training import read_events
from dailyrec.quality.filtering import rules as FN
from dailyrec.quality.filtering import window as FW, engine as FE
from dailyrec.quality.filtering import spark_engine as SE
from dailyrec.model import settings as model
from dailyrec.quality import settings as quality
from stages import filter_noise as stage
from tests import dq_factory as F
from tests import test_filter_noise as crafted
from tests.mini_source import fetch
from tests.params import of
from tools import simulate

pytestmark = pytest.mark.spark

SIM_FIRST = dt.date(2026, 11, 14)
SIM_DAYS = 4


def per_rule(window: FW.Window, result: FN.Result) -> dict[str, set[str]]:
    """The local engine's removed event ids, by rule."""
    ids = np.asarray(window.to_table().column("event_id").to_pylist(), dtype=object)
    return {rule: set(ids[mask]) for rule, mask in result.removed_by.items()}


def spark_per_rule(judged: SE.Judged) -> dict[str, set[str]]:
    table = judged.events.select("event_id", "removed_by").toArrow()
    ids = np.asarray(table.column("event_id").to_pylist(), dtype=object)
    by = table.column("removed_by").to_numpy()
    return {rule: set(ids[by == k]) for k, rule in enumerate(FN.RULES)}


def without_timings(counts: dict) -> dict:
    """The counts both engines write alike: not timings, nor the local engine's reuse of day
    verdicts (a cache of its own)."""
    return {k: v for k, v in counts.items()
            if k not in ("seconds", "events_per_second", "day_verdicts")}


def both_engines(spark, root, cfg: quality.FilterSettings, rejected=frozenset()):
    """Both engines on the same history: (local rows per rule, Spark's, local counts, Spark's,
    local data/clean, Spark's)."""
    selection = history.select_window(root / "history", cfg.run_date, cfg.window_days,
                                      set(rejected))
    window = FW.read_window(selection.files, selection.days)
    local_removed = per_rule(window, FN.apply_rules(window, cfg))
    local = FE.run(cfg, root / "history", set(rejected), root / "local" / "clean")
    judged = SE.judge(spark, selection.files, cfg)
    try:
        spark_removed = spark_per_rule(judged)
        counted = SE.count(judged, cfg)
        SE.write_clean(judged, root / "spark" / "clean")
    finally:
        judged.release()
    sparked = FE.record(cfg, selection, counted, {"rules": 1.0})
    return (local_removed, spark_removed, without_timings(local), without_timings(sparked),
            clean_files(root / "local" / "clean"), clean_files(root / "spark" / "clean"))


def clean_files(path) -> dict[str, bytes]:
    """data/clean's day files by name."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def assert_same_answer(outcome) -> None:
    local_removed, spark_removed, local, sparked, local_clean, spark_clean = outcome
    for rule in FN.RULES:
        assert spark_removed[rule] == local_removed[rule], rule
    assert sparked == local
    assert spark_clean == local_clean  # the same day files, byte for byte


@pytest.fixture(scope="module")
def crafted_history(tmp_path_factory):
    root = tmp_path_factory.mktemp("crafted")
    frame = pd.concat(crafted.crafted_window().values(), ignore_index=True)
    F.write_history(root / "history", frame)
    return root


TIGHT = {"behaviour.max_events_per_minute": 20, "behaviour.bot_days": 1,
         "shared_ip.max_users_per_day": 2, "repeated.dedupe_seconds": 600,
         "min_support.min_user_events": 3, "min_support.min_item_events": 2}


def crafted_settings(top_offenders: int = 10, **overrides) -> quality.FilterSettings:
    params = F.default_params(crafted.RUN)
    params["filter"]["internal"]["user_ids"] = ["qa-robot"]
    params["filter"]["top_offenders"] = top_offenders
    for path, value in overrides.items():
        section, key = path.split(".")
        params["filter"][section][key] = value
    return quality.filter_rules(of(params))


def test_crafted_window_same_rows_per_rule_kept_events_and_counters(spark, crafted_history):
    """Tight settings: more of every rule, min_support on, and three offenders a list, so that
    ties sit at the cut (the rotator's 300 ids, 10 rows each; the household on one address).
    The default settings on this window: the stage test below."""
    outcome = both_engines(spark, crafted_history, crafted_settings(3, **TIGHT))
    assert_same_answer(outcome)
    local_removed, _, local, _, _, _ = outcome
    assert all(local_removed[rule] for rule in FN.RULES)
    assert local["rules"]["shared_ip"]["users"] > 300


def test_odd_ip_texts_same_answer_and_counters(spark, tmp_path):
    """IP texts of every odd kind (test_filter_noise.odd_ip_window: texts that are no address,
    tied in rows; an address behind zone ids, brackets, ports, IPv4-mapped; a rotator and an
    exempt one behind four spellings of one address): the same rows per rule, the same kept
    events and the same ip_texts counters and top texts on both engines."""
    frame = pd.concat(crafted.odd_ip_window().values(), ignore_index=True)
    F.write_history(tmp_path / "history", frame)
    outcome = both_engines(spark, tmp_path, crafted_settings(3, **crafted.ODD_IP_SETTINGS))
    assert_same_answer(outcome)
    local = outcome[2]
    assert local["ip_texts"]["rows_not_an_address"] == 2 * len(crafted.NOT_ADDRESSES) + 1
    assert len(local["ip_texts"]["top_not_an_address"]) == 3
    assert local["rules"]["internal"]["rows"] == 4 and local["rules"]["shared_ip"]["rows"] == 80


@pytest.fixture(scope="module")
def simulated_history(tmp_path_factory):
    """Four simulated days through the real fetch_delta and merge_history, as in
    test_filter_quality: bots of every kind, late events in arrived-*.parquet files."""
    root = tmp_path_factory.mktemp("simulated")
    url = f"sqlite:///{root / 'source.db'}"
    simulate.write(url, SIM_FIRST, SIM_DAYS, seed=11, users=6000, items=2000,
                   events_per_day=25_000)
    for offset in range(1, SIM_DAYS + 1):  # the scheduler's days
        run = SIM_FIRST + dt.timedelta(days=offset)
        params = F.default_params(run.isoformat())
        fetch(params, url, root / paths.DELTA_DIR)
        history.merge(root / paths.DELTA_EVENTS, root / paths.HISTORY_DIR, run,
                      params["history"]["days"], params["fetch"]["max_late_days"])
    return root / "data", params


def test_simulated_traffic_same_answer_and_same_confidence_matrix(spark, simulated_history):
    root, params = simulated_history
    cfg = quality.filter_rules(of(params))
    files = history.select_window(root / "history", cfg.run_date, cfg.window_days, set()).files
    assert any(p.name.startswith(history.ARRIVED_PREFIX) for p in files)  # late events' files
    outcome = both_engines(spark, root, cfg)
    assert_same_answer(outcome)
    local_removed = outcome[0]
    assert len(local_removed["behaviour"]) > 1000 and len(local_removed["shared_ip"]) > 1000

    # The confidence matrix: Spark's triplets from the kept events == train's build.
    config = model.train(of(params)).confidence
    now = settings.window_end(of(params))
    local = C.aggregate(read_events(root / "local" / "clean"), config, now)
    kept = SP.read_events(spark, clean.day_files(root / "spark" / "clean"))
    sparked = SC.interactions(SC.triplets(kept, config, now, spark))
    assert (sparked.user_ids == local.user_ids).all() and (sparked.item_ids == local.item_ids).all()
    assert (sparked.events, sparked.events_ignored) == (local.events, local.events_ignored)
    for name in ("indptr", "indices", "data"):  # bit for bit
        assert np.array_equal(getattr(sparked.strength, name), getattr(local.strength, name))
    assert (C.confidence(sparked, config) != C.confidence(local, config)).nnz == 0
    assert local.strength.nnz > 10_000


def test_stage_with_the_spark_engine_writes_what_the_local_engine_writes(spark, tmp_path,
                                                                         monkeypatch):
    """python -m stages.filter_noise with filter.engine: spark and the history given as a URL,
    at the default settings on the crafted window: the same data/clean, metrics/filter.json
    (less timings) and offenders report."""
    crafted._stage_dir(tmp_path, monkeypatch)
    outputs = {}
    for engine in ("local", "spark"):
        params = json.loads((tmp_path / "params.yaml").read_text())
        params["filter"]["engine"] = engine
        (tmp_path / "params.yaml").write_text(json.dumps(params))
        # The Spark engine reads the history through a URL (file://: gs:// and abfss:// are
        # listed the same way, by fsspec).
        url = ["--history", (tmp_path / paths.HISTORY_DIR).as_uri()] if engine == "spark" else []
        assert stage.main(url) == 0
        written = json.loads((tmp_path / paths.FILTER_METRICS).read_text())
        outputs[engine] = (clean_files(tmp_path / paths.CLEAN_DIR),
                           without_timings(written),
                           json.loads((tmp_path / paths.FILTER_OFFENDERS).read_text()))
    (local_clean, local, local_offenders), (spark_clean, sparked, spark_offenders) = \
        outputs["local"], outputs["spark"]
    assert spark_clean == local_clean and local_clean
    assert sparked == local and all(local["rules"][rule]["rows"] for rule in FN.RULES[:-1])
    assert spark_offenders == local_offenders


def test_an_empty_window_is_empty_on_both_engines(spark, tmp_path):
    """No day in the window: nothing to read, every rule idle, an empty data/clean."""
    (tmp_path / "history").mkdir()
    assert_same_answer(both_engines(spark, tmp_path, crafted_settings()))


def test_the_engine_setting_is_checked():
    params = F.default_params("2026-11-21")
    assert quality.filter_rules(of(params)).engine == "local"
    params["filter"]["engine"] = "dask"
    with pytest.raises(ConfigError, match="filter.engine"):
        quality.filter_rules(of(params))


def test_a_history_url_needs_the_spark_engine(tmp_path, monkeypatch, capsys):
    crafted._stage_dir(tmp_path, monkeypatch)
    assert stage.main(["--history", "gs://bucket/history"]) == 2
    assert "a URL needs filter.engine: spark" in capsys.readouterr().err
