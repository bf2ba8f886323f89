"""Evaluators: like passes, a frozen config dataclass plus one function `fn(model, config) -> metrics`, registered
with `@evaluator` and declared as an entry point (group `edgewise.evaluators`). `model` is what a pass wrote, loaded
as an ONNX Runtime GenAI model or a PyTorch one, with its adapter; results are cached per (model, evaluator, config)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgewise.fsutil import atomic_write_text


@dataclass(frozen=True)
class Evaluator:
    name: str
    config_cls: type
    fn: Callable[..., dict]
    better: dict[str, str]  # metric -> "lower" or "higher"


EVALUATORS: dict[str, Evaluator] = {}


def evaluator(name: str, config_cls: type, better: dict[str, str]):
    """Decorator: make `fn(model, config) -> metrics` the evaluator called `name`."""

    def wrap(fn):
        fn.edgewise_plugin = EVALUATORS[name] = Evaluator(name, config_cls, fn, better)
        return fn

    return wrap


def direction(metric: str) -> str:
    for ev in EVALUATORS.values():
        if metric in ev.better:
            return ev.better[metric]
    known = sorted(m for ev in EVALUATORS.values() for m in ev.better)
    from edgewise.errors import EdgewiseError

    raise EdgewiseError(f"unknown metric '{metric}'; evaluators measure: {', '.join(known)}")


def evaluate(artifact, name: str, config, cache: Path) -> dict:
    """The metrics of one evaluator on one artifact, computed once and then read from the cache."""
    from edgewise import engine
    from edgewise.evaluators.models import load_for_eval

    entry = cache / "evals" / f"{name}-{engine.cache_key(artifact, 'eval:' + name, config)[:20]}.json"
    if entry.is_file():
        return json.loads(entry.read_text())
    with load_for_eval(artifact.path, getattr(config, "adapter", True)) as model:
        metrics = EVALUATORS[name].fn(model, config)
    atomic_write_text(entry, json.dumps(metrics))
    return metrics
