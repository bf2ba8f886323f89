"""Evaluators: like passes, a frozen config dataclass plus one function `fn(model, config) -> metrics`, registered
with `@evaluator` and declared as an entry point (group `edgewise.evaluators`). `model` is what a pass wrote, loaded
as an ONNX Runtime GenAI model or a PyTorch one, with its adapter (`evaluators.models`); the engine caches results."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from edgewise.core.errors import EdgewiseError
from edgewise.core.plugin import Table


@dataclass(frozen=True)
class Evaluator:
    name: str
    config_cls: type
    fn: Callable[..., dict]
    better: dict[str, str]  # metric -> "lower" or "higher"
    tolerance: dict[str, float] = field(default_factory=dict)  # metric -> relative difference that counts as equal


EVALUATORS = Table("evaluator")


def evaluator(name: str, config_cls: type, better: dict[str, str], tolerance: dict[str, float] | None = None):
    """Decorator: make `fn(model, config) -> metrics` the evaluator called `name`; `better` says which way each
    metric improves, `tolerance` how close two values must be (relative) to count as equal when choosing the best."""
    return lambda fn: EVALUATORS.register(Evaluator(name, config_cls, fn, better, tolerance or {}))


def direction(metric: str) -> str:
    for ev in EVALUATORS.values():
        if metric in ev.better:
            return ev.better[metric]
    known = sorted(m for ev in EVALUATORS.values() for m in ev.better)
    raise EdgewiseError(f"unknown metric '{metric}'; evaluators measure: {', '.join(known)}")


def default_tolerance(metric: str) -> float:
    direction(metric)  # an unknown metric is an error
    return next((ev.tolerance[metric] for ev in EVALUATORS.values() if metric in ev.tolerance), 0.0)
