"""The DVC metrics are headline numbers: flat, numeric, one narrow row per file, so that `dvc
metrics show` is a table a person can read.

tests/test_dvc_yaml.py checks the same on the files a real `dvc repro` wrote, and runs
`dvc metrics show` on them."""

from __future__ import annotations

import json

import pytest

from dailyrec.core import metrics
from dailyrec.ops import pipeline
from dailyrec.quality.filtering.rules import RULES
from tests import metrics_examples as examples

DAY = "2026-11-21"


def test_the_summary_has_a_row_per_rule_in_the_rules_order():
    assert metrics.FILTER_RULES == RULES


def test_dvc_yaml_declares_exactly_the_summary_rows_as_metrics():
    found = pipeline.load()
    declared = {o.path: (stage.name, o) for stage in found.stages.values()
                for o in stage.outputs if o.kind == "metrics"}
    assert set(declared) == {str(p) for m in metrics.ALL for p in m.summary_paths()}
    for m in metrics.ALL:
        for p in m.summary_paths():
            stage, output = declared[str(p)]
            assert stage == m.stage, p
            assert not output.cache  # kept in git with dvc.lock
    # Each stage's full record is still an output (git-tracked), no longer a DVC metric.
    records = {o.path for o in found.outputs() if o.kind == "outs"}
    assert {str(m.path) for m in metrics.ALL} <= records


def test_writing_a_record_writes_its_summary_rows_numbers_only(tmp_path):
    examples.write(tmp_path, "filter", DAY, input={"rows": 100, "users": 10, "items": 5},
                   output={"rows": 90, "users": 9, "items": 5},
                   removed={"rows": 10, "share": 0.1, "bot_or_internal_users": 1},
                   rules={"crawler_ua": {"rows": 7, "users": 1, "top_users": [["h", 7]]},
                          "shared_ip": {"rows": 3, "users": 2, "top_ips": []}})
    rows = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "summary").glob("*.json")}
    assert rows["filter"] == {"events": 100, "kept": 90, "removed": 10, "users": 9, "items": 5}
    assert rows["rule_crawler_ua"] == {"removed": 7, "users": 1}
    assert rows["rule_shared_ip"] == {"removed": 3, "users": 2}
    assert rows["rule_behaviour"] == {"removed": 0, "users": 0}  # no entry: nothing removed
    assert set(rows) == {p.stem for p in metrics.FILTER.summary_paths()}


def test_eval_rows_compare_the_model_with_its_baselines_at_the_gate_k(tmp_path):
    examples.write(tmp_path, "eval", DAY, ndcg_at_20=0.123456789, recall_at_20=0.25,
                   precision_at_20=0.05, ndcg_at_10=0.9, lift_over_most_popular=0.5,
                   baselines={"most_popular": {"ndcg_at_20": 0.08, "recall_at_20": 0.2,
                                               "precision_at_20": 0.04},
                              "published": None})
    read = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "summary").glob("*.json")}
    assert read["eval"] == {"ndcg@20": 0.1235, "recall@20": 0.25, "precision@20": 0.05,
                            "lift": 0.5}
    assert read["popular"] == {"ndcg@20": 0.08, "recall@20": 0.2, "precision@20": 0.04}
    assert read["published"] == {}  # nothing served yet: DVC shows '-'
    assert read["session_fold_in"] == {}  # no session protocol in this record


@pytest.mark.parametrize("name", [m.name for m in metrics.ALL if m.summary is not None])
def test_every_summary_value_is_a_number_or_a_verdict(name):
    rows = metrics.BY_NAME[name].summary(examples.example(name, DAY))
    for row, values in rows.items():
        flat = metrics.summary_row(values)
        assert all(isinstance(v, (int, float, bool)) for v in flat.values()), (row, flat)


def test_a_text_value_is_refused_in_a_summary_row():
    with pytest.raises(metrics.ShapeError, match="status"):
        metrics.summary_row({"status": "passed"})
