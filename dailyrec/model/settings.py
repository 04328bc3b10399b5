"""Settings of the model: params.yaml `train` (the confidence matrix and ALS: implicit, or Spark
MLlib with train.engine: spark) and `eval` (the evaluation and the publish gate)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dailyrec.core import schema as S
from dailyrec.model.ranking import METRICS
from dailyrec.core.settings import ConfigError, Params, of

TRANSFORMS = ("linear", "log")
QUANTITY_TRANSFORMS = ("linear", "log")
DEVICES = ("auto", "cpu", "gpu")
# train.engine: who fits ALS: local (implicit, train.device) or spark (Spark MLlib ALS with
# implicitPrefs, dailyrec.model.spark_als; docs/scaling.md). The two give different models.
ENGINES = ("local", "spark")
TRAIN_KEYS = ("event_weights", "decay_half_life_days", "confidence", "alpha", "eps", "factors",
              "regularization", "iterations", "random_state", "engine", "spark_blocks", "device",
              "track_loss", "quantity_transform", "quantity_cap")


@dataclass(frozen=True)
class ConfidenceConfig:
    """r_ui -> c_ui (dailyrec.model.confidence explains the formulas)."""

    event_weights: dict[str, float]
    decay_half_life_days: float  # 0: no decay
    transform: str  # one of TRANSFORMS
    alpha: float
    eps: float
    quantity_transform: str  # one of QUANTITY_TRANSFORMS
    quantity_cap: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    confidence: ConfidenceConfig
    factors: int
    regularization: float
    iterations: int
    random_state: int
    engine: str  # one of ENGINES
    spark_blocks: int  # MLlib's numUserBlocks = numItemBlocks (engine spark; shapes its result)
    device: str
    track_loss: bool

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some settings changed (tune's trials); confidence keys are accepted too."""
        conf = {k: changes.pop(k) for k in list(changes) if k in ConfidenceConfig.__annotations__}
        confidence = ConfidenceConfig(**{**self.confidence.as_dict(), **conf})
        return TrainConfig(**{**self.__dict__, "confidence": confidence, **changes})

    def as_dict(self) -> dict[str, Any]:
        """Flat and JSON-ready, in the shape of params.yaml's train section."""
        out = {k: v for k, v in self.__dict__.items() if k != "confidence"}
        conf = self.confidence.as_dict()
        conf["confidence"] = conf.pop("transform")
        return {**out, **conf}


def train(params: Params) -> TrainConfig:
    params.known("train", TRAIN_KEYS)
    weights = params.mapping("train.event_weights")
    unknown = sorted(set(map(str, weights)) - set(S.EVENT_TYPES))
    missing = [t for t in S.EVENT_TYPES if t not in weights]
    if unknown or missing:
        raise ConfigError(f"{params.source}: train.event_weights must list exactly the event types "
                          f"{list(S.EVENT_TYPES)}; unknown {unknown}, missing {missing}")
    clean = {t: params.number(f"train.event_weights.{t}", low=0) for t in S.EVENT_TYPES}
    if not any(clean.values()):
        raise ConfigError(f"{params.source}: train.event_weights are all 0: nothing would be "
                          "learnt")
    confidence = ConfidenceConfig(
        event_weights=clean,
        decay_half_life_days=params.number("train.decay_half_life_days", low=0),
        transform=params.choice("train.confidence", TRANSFORMS),
        alpha=params.number("train.alpha", low=0, strict=True),
        eps=params.number("train.eps", low=0, strict=True),
        quantity_transform=params.choice("train.quantity_transform", QUANTITY_TRANSFORMS),
        quantity_cap=params.number("train.quantity_cap", low=0, strict=True))
    return TrainConfig(
        confidence=confidence,
        factors=params.integer("train.factors", low=1),
        regularization=params.number("train.regularization", low=0),
        iterations=params.integer("train.iterations", low=1),
        random_state=params.integer("train.random_state"),
        engine=params.choice("train.engine", ENGINES),
        spark_blocks=params.integer("train.spark_blocks", low=1),
        device=params.choice("train.device", DEVICES),
        track_loss=params.flag("train.track_loss"))


def train_from_dict(section: dict[str, Any], fallback: dict[str, Any] | None = None
                    ) -> TrainConfig:
    """A train section kept elsewhere (a model's meta.json), checked like params.yaml's. Keys a
    model saved before they existed take their values from `fallback` (today's section)."""
    return train(of({"train": {**(fallback or {}), **section}}, source="models/meta.json",
                    traced=False))

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
