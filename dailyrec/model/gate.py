"""The publish gate: with at least eval.min_test_users users to score (the user protocol), the
model's eval.gate_metric must beat most-popular by eval.min_lift (relative), and must not fall more
than eval.max_drop (relative) below the published model. With fewer users but at least
eval.min_test_users session cases, fold_in's eval.gate_metric must beat the session most-popular
by eval.min_lift (no published comparison). Otherwise too little data fails the gate with that
reason. gate.json's `protocol` says which protocol decided.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dailyrec.model.settings import EvalConfig


def _lift(value: float, base: float) -> float:
    return (value / base - 1.0) if base > 0 else (float("inf") if value > 0 else 0.0)


def _lift_sentence(metric: str, value: float, base: float, lift: float, config: EvalConfig,
                   model: str = "") -> tuple[bool, str]:
    name = f"{model} {metric}" if model else metric
    if lift >= config.min_lift:
        return True, (f"{name} {value:.4f} beats most-popular {base:.4f} by {_pct(lift)} "
                      f"(needs {_pct(config.min_lift)})")
    return False, (f"{name} {value:.4f} vs most-popular {base:.4f}: lift {_pct(lift)} is "
                   f"below the required {_pct(config.min_lift)}")


def gate_record(config: EvalConfig, protocol: str | None, value=None, base=None, lift=None
          ) -> dict[str, Any]:
    return {"metric": config.gate_metric, "value": value, "most_popular": base,
            "lift": lift if lift is None or np.isfinite(lift) else None,
            "min_lift": config.min_lift, "published": None, "published_version": None,
            "drop": None, "max_drop": config.max_drop, "protocol": protocol}


def decide(model: dict[str, float], popular: dict[str, float],
           published: dict[str, Any] | None, config: EvalConfig) -> dict[str, Any]:
    """The user protocol's verdict: the lift over most-popular, and the drop below the published
    model when there is one."""
    metric = config.gate_metric
    value, base = model[metric], popular[metric]
    lift = _lift(value, base)
    gate = gate_record(config, "users", value, base, lift)
    passed, sentence = _lift_sentence(metric, value, base, lift, config)
    reasons = [sentence]
    if published is not None:
        ref = published[metric]
        drop = (1.0 - value / ref) if ref > 0 else 0.0
        gate.update(published=ref, published_version=published.get("model_version"), drop=drop)
        label = f"published v{published.get('model_version')} ({published.get('mode')})"
        if drop <= config.max_drop:
            reasons.append(f"{_pct(0.0 - drop + 0.0)} vs {label} {ref:.4f} (max drop {_pct(config.max_drop)})")
        else:
            passed = False
            reasons.append(f"falls {_pct(drop)} below {label} {ref:.4f}; at most "
                           f"{_pct(config.max_drop)} allowed")
    else:
        reasons.append("no published model to compare with")
    gate["passed"] = passed
    gate["reason"] = ("passed: " if passed else "failed: ") + "; ".join(reasons)
    return gate


def decide_sessions(fold_in: dict[str, float], popular: dict[str, float], users: int, cases: int,
                    config: EvalConfig) -> dict[str, Any]:
    """The session protocol's verdict, when too few returning users can be scored: fold-in must
    beat most-popular on the same cases by eval.min_lift. The published model is not compared."""
    metric = config.gate_metric
    value, base = fold_in[metric], popular[metric]
    lift = _lift(value, base)
    gate = gate_record(config, "sessions", value, base, lift)
    passed, sentence = _lift_sentence(metric, value, base, lift, config, "fold-in")
    gate["passed"] = passed
    gate["reason"] = (("passed: " if passed else "failed: ")
                      + f"session protocol ({users} returning users with new items, fewer than "
                        f"eval.min_test_users={config.min_test_users}; {cases} visitor sessions): "
                      + sentence + "; the published model is not compared in the session protocol")
    return gate


def _pct(x: float) -> str:
    return "inf" if not np.isfinite(x) else f"{x * 100:+.1f}%"
