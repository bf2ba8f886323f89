"""Running an evaluator on an artifact through the cache: each (artifact, evaluator, config) is measured once."""
from __future__ import annotations

import json
from pathlib import Path

from edgewise.core.fsutil import atomic_write_text
from edgewise.engine.steps import cache_key
from edgewise.evaluators import EVALUATORS
from edgewise.evaluators.models import load_for_eval


def evaluate(artifact, name: str, config, cache: Path) -> dict:
    """The metrics of one evaluator on one artifact, computed once and then read from the cache."""
    entry = cache / "evals" / f"{name}-{cache_key(artifact, 'eval:' + name, config)[:20]}.json"
    if entry.is_file():
        return json.loads(entry.read_text())
    with load_for_eval(artifact.path, getattr(config, "adapter", True)) as model:
        metrics = EVALUATORS[name].fn(model, config)
    atomic_write_text(entry, json.dumps(metrics))
    return metrics
