"""Settings of the evaluation and the publish gate: params.yaml `eval`."""

from __future__ import annotations

from dataclasses import dataclass

from dailyrec import schema as S
from dailyrec.model.ranking import METRICS
from dailyrec.settings import ConfigError, Params

REPORT_K = 20  # metrics are always reported at 20, and at eval.k
EVAL_KEYS = ("holdout_days", "k", "relevant_event_types", "min_test_users", "gate_metric",
             "min_lift", "max_drop", "compare_published", "session_max_context")


@dataclass(frozen=True)
class EvalConfig:
    holdout_days: int
    k: int
    relevant_event_types: tuple[str, ...]
    min_test_users: int
    gate_metric: str
    min_lift: float
    max_drop: float
    compare_published: bool
    session_max_context: int  # the session protocol's context: at most this many first items

    @property
    def cutoffs(self) -> list[int]:
        return sorted({REPORT_K, self.k})


def evaluation(params: Params) -> EvalConfig:
    params.known("eval", EVAL_KEYS)
    k = params.integer("eval.k", low=1)
    relevant = params.items("eval.relevant_event_types")
    if not relevant or any(t not in S.EVENT_TYPES for t in relevant):
        raise params.fail("eval.relevant_event_types", f"a non-empty list of {list(S.EVENT_TYPES)}",
                          relevant)
    allowed = [f"{m}_at_{c}" for m in METRICS for c in sorted({REPORT_K, k})]
    return EvalConfig(
        holdout_days=params.integer("eval.holdout_days", low=1), k=k,
        relevant_event_types=tuple(relevant),
        min_test_users=params.integer("eval.min_test_users", low=1),
        gate_metric=params.choice("eval.gate_metric", allowed),
        min_lift=params.number("eval.min_lift", low=-1),
        max_drop=params.number("eval.max_drop", low=0),
        compare_published=params.flag("eval.compare_published"),
        session_max_context=params.integer("eval.session_max_context", low=1))


__all__ = ["ConfigError", "EvalConfig", "evaluation", "REPORT_K"]
