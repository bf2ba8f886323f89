"""Candidates: pass parameters drawn from the workflow's search spaces by Optuna (a grid for exhaustive search,
random, or TPE; seeded, within a trial budget), each run through the engine's cache and measured by the evaluators in
the order given. A candidate that misses a goal is pruned before the remaining evaluators run. A configuration is
built and measured once: a sampler's repeat is answered from the earlier trial and costs no trial of the budget."""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field

from edgewise.core import config as cfg
from edgewise.core.artifact import Artifact
from edgewise.core.errors import EdgewiseError
from edgewise.core.log import log
from edgewise.engine.evaluate import evaluate
from edgewise.engine.selection import mark_pareto, objectives_of, select
from edgewise.engine.steps import run_steps
from edgewise.engine.workflow import Goal, Search, Step, Workflow
from edgewise.evaluators import EVALUATORS, direction
from edgewise.passes import PASSES


@dataclass
class Candidate:
    trial: int
    params: dict
    status: str = "ok"  # ok | pruned (missed a goal) | failed (a pass or evaluator stopped with an error)
    reason: str = ""
    metrics: dict = field(default_factory=dict)
    path: str | None = None
    lineage: list = field(default_factory=list)
    pareto: bool = False


def param_keys(passes: list[Step]) -> dict[str, tuple[int, str]]:
    """Readable names for searched parameters: 'quantize.group_size' (with '#2' for a second pass of a type)."""
    keys, seen = {}, {}
    for index, step in enumerate(passes):
        seen[step.type] = seen.get(step.type, 0) + 1
        prefix = step.type if seen[step.type] == 1 else f"{step.type}#{seen[step.type]}"
        keys.update({f"{prefix}.{name}": (index, name) for name in step.space})
    return keys


def grid_values(key: str, spec) -> list:
    if isinstance(spec, list):
        return spec
    if spec["int"] or "step" in spec:
        step = spec.get("step", 1)
        count = int(round((spec["high"] - spec["low"]) / step)) + 1
        return [spec["low"] + i * step if spec["int"] else round(spec["low"] + i * step, 12) for i in range(count)]
    raise EdgewiseError(f"{key}: exhaustive search needs a step for a float range (or use random or tpe)")


def space_size(space: dict) -> float:
    """How many distinct configurations the space holds (infinite with a continuous range)."""
    sizes = [len({json.dumps(v) for v in spec}) if isinstance(spec, list) else
             len(grid_values(k, spec)) if (spec["int"] or "step" in spec) else math.inf for k, spec in space.items()]
    return math.prod(sizes)


def probe_values(spec) -> list:
    """Values enough to check a searched parameter before any work: every choice, or a range's two ends."""
    return spec if isinstance(spec, list) else [spec["low"], spec["high"]]


def suggest(trial, key: str, spec):
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    if spec["int"]:
        return trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1), log=spec["log"])
    return trial.suggest_float(key, spec["low"], spec["high"], step=spec.get("step"), log=spec["log"])


def make_study(search: Search, space: dict, directions: list[str]):
    """Random and TPE sample; exhaustive search enqueues every grid point in order (budget permitting)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.TPESampler(seed=search.seed) if search.strategy == "tpe"
               else optuna.samplers.RandomSampler(seed=search.seed))
    study = optuna.create_study(directions=directions, sampler=sampler)
    if search.strategy == "exhaustive":
        keys = list(space)
        for values in itertools.product(*(grid_values(k, space[k]) for k in keys)):
            study.enqueue_trial(dict(zip(keys, values)))
    return study


def trial_budget(search: Search, space: dict) -> int:
    """New configurations to try: the grid (exhaustive) or max_trials (default 10), never more than the space has."""
    size = space_size(space)
    wanted = size if search.strategy == "exhaustive" else (search.max_trials or 10)
    return int(min(wanted, search.max_trials or wanted, size))


def goal_failure(goals: list[Goal], metrics: dict, reference: dict) -> str | None:
    """Why `metrics` miss a goal (only goals whose metric is measured yet), or None."""
    for goal in goals:
        if goal.metric not in metrics:
            continue
        value, lower = metrics[goal.metric], direction(goal.metric) == "lower"
        if goal.max is not None and value > goal.max:
            return f"{goal.metric} {value:.4g} > max {goal.max:g}"
        if goal.min is not None and value < goal.min:
            return f"{goal.metric} {value:.4g} < min {goal.min:g}"
        if goal.max_degradation is not None:
            limit = reference[goal.metric] * (1 + goal.max_degradation if lower else 1 - goal.max_degradation)
            if (value > limit) if lower else (value < limit):
                return (f"{goal.metric} {value:.4g} is more than {100 * goal.max_degradation:g}% worse than the "
                        f"input model's {reference[goal.metric]:.4g}")
    return None


def step_config(step: Step, table, values: dict):
    """The config of a pass or evaluator step with `values` (searched ones) over its fixed values."""
    return cfg.make(table[step.type].config_cls, {**step.fixed, **values}, step.type)


class Runner:
    """The candidates of one workflow on one source artifact; `strict` (no search): a failing pass is the run's error."""

    def __init__(self, workflow: Workflow, source: Artifact, cache):
        self.wf, self.settings, self.source, self.cache = workflow, workflow.settings, source, cache
        self.keys = param_keys(workflow.passes)
        self.objectives = objectives_of(workflow)
        self.metrics = [o.metric for o in self.objectives]
        self.strict = not self.keys
        self.candidates: list[Candidate] = []
        self.tried: dict[str, Candidate] = {}
        self.reference: dict = {}
        self.selection: list[str] = []
        self.evaluations = [(step.type, step_config(step, EVALUATORS, {})) for step in workflow.evaluators]

    def measure_reference(self) -> None:
        """The input model's metrics, where an evaluator applies to it (latency needs an exported model)."""
        for name, config in self.evaluations:
            try:
                self.reference.update(evaluate(self.source, name, config, self.cache))
            except Exception as exc:  # e.g. latency needs an exported model; a plugin may not apply to the input
                log.info("reference %s: not measured on the input model (%s)", name, _reason(exc))
        for goal in self.settings.goals:
            if goal.max_degradation is not None and goal.metric not in self.reference:
                raise EdgewiseError(f"goal on {goal.metric} is relative to the input model, which it cannot measure; "
                                    "use max or min")

    def steps_for(self, params: dict) -> list[tuple[str, object]]:
        per_pass = [{} for _ in self.wf.passes]
        for key, value in params.items():
            index, name = self.keys[key]
            per_pass[index][name] = value
        return [(step.type, step_config(step, PASSES, values)) for step, values in zip(self.wf.passes, per_pass)]

    def run_candidate(self, trial: int, params: dict) -> Candidate:
        candidate = Candidate(trial, params)
        try:
            artifact = run_steps(self.source, self.steps_for(params), self.cache, checked=True)
            candidate.path, candidate.lineage = str(artifact.path), artifact.manifest.get("lineage", [])
            for name, config in self.evaluations:
                candidate.metrics.update(evaluate(artifact, name, config, self.cache))
                reason = goal_failure(self.settings.goals, candidate.metrics, self.reference)
                if reason:
                    candidate.status, candidate.reason = "pruned", reason
                    break
        except Exception as exc:  # one candidate's failure (a user error, or a bug in a plugin) ends only that one
            if self.strict:
                raise
            log.debug("trial %d failed", trial, exc_info=True)
            candidate.status, candidate.reason = "failed", _reason(exc)
        shown = " ".join(f"{k}={v}" for k, v in params.items()) or "(no search)"
        outcome = candidate.reason or ", ".join(f"{m} {candidate.metrics[m]:.4g}" for m in self.metrics
                                                if m in candidate.metrics)
        if self.keys or self.wf.evaluators:
            log.info("trial %d: %s -> %s%s", trial, shown, candidate.status, f" ({outcome})" if outcome else "")
        return candidate

    def candidate(self, params: dict) -> tuple[Candidate, bool]:
        """The candidate of `params`, built now or (True) found among those already tried."""
        key = json.dumps(params, sort_keys=True, default=str)
        if key in self.tried:
            return self.tried[key], True
        found = self.tried[key] = self.run_candidate(len(self.candidates), params)
        self.candidates.append(found)
        return found, False

    def study(self, space: dict, fixed: dict) -> list[Candidate]:
        import optuna

        study = make_study(self.settings.search, space, ["minimize" if direction(m) == "lower" else "maximize"
                                                         for m in self.metrics])
        budget = trial_budget(self.settings.search, space)
        exhaustive = self.settings.search.strategy == "exhaustive"
        asks = int(space_size(space)) if exhaustive else 20 * budget + 20  # the grid, or enough draws to find news
        found, new = [], 0
        while new < budget and asks > 0:
            asks -= 1
            trial = study.ask()
            candidate, repeat = self.candidate({**fixed, **{key: suggest(trial, key, spec)
                                                            for key, spec in space.items()}})
            if repeat:
                log.info("trial %d drawn again: not run twice", candidate.trial)
            else:
                new += 1
            if candidate not in found:
                found.append(candidate)
            if candidate.status == "ok":
                study.tell(trial, [candidate.metrics[m] for m in self.metrics])
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED if candidate.status == "pruned"
                           else optuna.trial.TrialState.FAIL)
        return found

    def run(self):
        """Every candidate built and measured; returns the best (or None) and marks the Pareto front."""
        space = {key: self.wf.passes[i].space[name] for key, (i, name) in self.keys.items()}
        if self.wf.evaluators:
            self.measure_reference()
        if not space:
            self.candidate({})
        elif self.settings.search.mode == "joint":
            self.study(space, {})
        else:
            self.pass_by_pass(space)
        mark_pareto(self.candidates, self.metrics)
        winner, self.selection = select(self.candidates, self.objectives)
        return winner

    def pass_by_pass(self, space: dict) -> None:
        """Search one pass's parameters at a time, later passes at their first choice, keeping each stage's best."""
        fixed = {key: probe_values(spec)[0] for key, spec in space.items()}
        for index in sorted({i for i, _ in self.keys.values()}):
            stage = {k: s for k, s in space.items() if self.keys[k][0] == index}
            winner, _ = select(self.study(stage, {k: v for k, v in fixed.items() if k not in stage}), self.objectives)
            if winner:
                fixed.update({k: winner.params[k] for k in stage})


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, EdgewiseError) else f"{type(exc).__name__}: {text}"
