"""`edgewise run`: candidates are pass parameters drawn from the workflow's search spaces by Optuna (a grid for
exhaustive search, random, or TPE; seeded, within a trial budget), each run through the engine's cache and measured by
the evaluators in the order given. A candidate that misses a goal is pruned before the remaining evaluators run. The
candidates on the Pareto front of the objectives are marked; the best is published with a JSON and HTML report."""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from edgewise import engine, sources
from edgewise.errors import EdgewiseError
from edgewise.evaluators import EVALUATORS, direction, evaluate
from edgewise.log import log
from edgewise.workflow import Goal, Search, Step, Workflow


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
    if search.strategy == "exhaustive":
        total = 1
        for key, spec in space.items():
            total *= len(grid_values(key, spec))
        return min(total, search.max_trials or total)
    return search.max_trials or 10


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


class Runner:
    def __init__(self, workflow: Workflow):
        self.wf, self.settings = workflow, workflow.settings
        self.cache = engine.cache_root(self.settings.cache_dir)
        self.keys = param_keys(workflow.passes)
        self.objectives = self.settings.objectives or list(dict.fromkeys(g.metric for g in self.settings.goals))
        if self.keys and not self.objectives:
            self.objectives = [next(iter(EVALUATORS[e.type].better)) for e in workflow.evaluators[:1]]
        if self.keys and not self.objectives:
            raise EdgewiseError("a search needs evaluators (and goals or objectives) to compare its candidates")
        for metric in self.objectives + [g.metric for g in self.settings.goals]:
            direction(metric)
        self.candidates: list[Candidate] = []
        self.reference: dict = {}

    def source(self) -> engine.Artifact:
        model = self.settings.input_model
        folder = sources.resolve(model.model_name_or_path, self.cache, model.trust_remote_code)
        from edgewise.modeling import read_config

        read_config(folder, model.trust_remote_code)
        return engine.folder_artifact(folder, model.model_name_or_path or sources.DEFAULT_MODEL)

    def measure_reference(self, base: engine.Artifact) -> None:
        """The input model's metrics, where an evaluator applies to it (latency needs an exported model)."""
        for step in self.wf.evaluators:
            try:
                self.reference.update(evaluate(base, step.type, self.eval_config(step), self.cache))
            except Exception as exc:  # e.g. latency needs an exported model; a plugin may not apply to the input
                log.info("reference %s: not measured on the input model (%s)", step.type, _reason(exc))
        for goal in self.settings.goals:
            if goal.max_degradation is not None and goal.metric not in self.reference:
                raise EdgewiseError(f"goal on {goal.metric} is relative to the input model, which it cannot measure; "
                                    "use max or min")

    def eval_config(self, step: Step):
        return _config(EVALUATORS[step.type].config_cls, step.fixed, step.type)

    def steps_for(self, params: dict) -> list[tuple[str, object]]:
        per_pass = [dict(step.fixed) for step in self.wf.passes]
        for key, value in params.items():
            index, name = self.keys[key]
            per_pass[index][name] = value
        return [(step.type, _config(engine.PASSES[step.type].config_cls, values, step.type))
                for step, values in zip(self.wf.passes, per_pass)]

    def run_candidate(self, base: engine.Artifact, trial: int, params: dict) -> Candidate:
        candidate = Candidate(trial, params)
        try:
            artifact = engine.run_steps(base, self.steps_for(params), self.cache)
            candidate.path, candidate.lineage = str(artifact.path), artifact.manifest.get("lineage", [])
            for step in self.wf.evaluators:
                candidate.metrics.update(evaluate(artifact, step.type, self.eval_config(step), self.cache))
                reason = goal_failure(self.settings.goals, candidate.metrics, self.reference)
                if reason:
                    candidate.status, candidate.reason = "pruned", reason
                    break
        except Exception as exc:  # one candidate's failure (a user error, or a bug in a plugin) ends only that one
            log.debug("trial %d failed", trial, exc_info=True)
            candidate.status, candidate.reason = "failed", _reason(exc)
        shown = " ".join(f"{k}={v}" for k, v in params.items()) or "(no search)"
        outcome = candidate.reason or ", ".join(f"{m} {candidate.metrics[m]:.4g}" for m in self.objectives
                                                if m in candidate.metrics)
        log.info("trial %d: %s -> %s%s", trial, shown, candidate.status, f" ({outcome})" if outcome else "")
        return candidate

    def study(self, base, space: dict, fixed: dict) -> list[Candidate]:
        import optuna

        study = make_study(self.settings.search, space, ["minimize" if direction(m) == "lower" else "maximize"
                                                         for m in self.objectives])
        found = []
        for _ in range(trial_budget(self.settings.search, space)):
            trial = study.ask()
            params = {**fixed, **{key: suggest(trial, key, spec) for key, spec in space.items()}}
            candidate = self.run_candidate(base, len(self.candidates) + len(found), params)
            found.append(candidate)
            if candidate.status == "ok":
                study.tell(trial, [candidate.metrics[m] for m in self.objectives])
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED if candidate.status == "pruned"
                           else optuna.trial.TrialState.FAIL)
        return found

    def run(self) -> list[Candidate]:
        base = self.source()
        space = {key: self.wf.passes[i].space[name] for key, (i, name) in self.keys.items()}
        if self.wf.evaluators:
            self.measure_reference(base)
        if not space:
            self.candidates = [self.run_candidate(base, 0, {})]
        elif self.settings.search.mode == "joint":
            self.candidates = self.study(base, space, {})
        else:
            self.candidates = self.pass_by_pass(base, space)
        mark_pareto(self.candidates, self.objectives)
        return self.candidates

    def pass_by_pass(self, base, space: dict) -> list[Candidate]:
        """Search one pass's parameters at a time, later passes at their first choice, keeping each stage's best."""
        fixed = {key: grid_values(key, spec)[0] if isinstance(spec, list) else spec["low"] for key, spec in space.items()}
        for index in sorted({i for i, _ in self.keys.values()}):
            stage = {k: s for k, s in space.items() if self.keys[k][0] == index}
            found = self.study(base, stage, {k: v for k, v in fixed.items() if k not in stage})
            self.candidates += found
            winner = best(found, self.objectives)
            if winner:
                fixed.update({k: winner.params[k] for k in stage})
        return self.candidates


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, EdgewiseError) else f"{type(exc).__name__}: {text}"


def _config(config_cls, values: dict, name: str):
    values = dict(values)
    for f in dataclasses.fields(config_cls):
        if f.metadata.get("path") and values.get(f.name):
            values[f.name] = str(Path(values[f.name]).expanduser().resolve())
    try:
        return config_cls(**values)
    except TypeError as exc:
        raise EdgewiseError(f"{name}: {exc}") from exc


def _key(candidate: Candidate, objectives: list[str]) -> tuple:
    return tuple(candidate.metrics[m] if direction(m) == "lower" else -candidate.metrics[m] for m in objectives)


def mark_pareto(candidates: list[Candidate], objectives: list[str]) -> None:
    kept = [c for c in candidates if c.status == "ok" and all(m in c.metrics for m in objectives)]
    for c in kept:
        mine = _key(c, objectives)
        c.pareto = not any(all(a <= b for a, b in zip(_key(o, objectives), mine)) and _key(o, objectives) != mine
                           for o in kept)


def best(candidates: list[Candidate], objectives: list[str]) -> Candidate | None:
    """The kept candidate ranked first by the objectives in order (the first objective decides, then the next)."""
    kept = [c for c in candidates if c.status == "ok" and all(m in c.metrics for m in objectives)]
    return min(kept, key=lambda c: (_key(c, objectives), c.trial)) if kept else None


