"""Which candidate is best, by a rule the workflow states and the report repeats: candidates that met every goal;
then, objective by objective in the order given, those within the objective's tolerance of the best value (sizes
within 1% count as equal by default); then the earliest trial. The Pareto front of the objectives is marked too."""
from __future__ import annotations

from edgewise.engine.workflow import Objective, Workflow
from edgewise.evaluators import EVALUATORS, default_tolerance, direction


def objectives_of(workflow: Workflow) -> list[Objective]:
    """The workflow's objectives, or the metrics of its goals, or (for a search) the first evaluator's first metric;
    every tolerance filled in."""
    settings = workflow.settings
    chosen = settings.objectives or [Objective(m) for m in dict.fromkeys(g.metric for g in settings.goals)]
    if not chosen and workflow.evaluators and any(step.space for step in workflow.passes):
        chosen = [Objective(next(iter(EVALUATORS[workflow.evaluators[0].type].better)))]
    return [Objective(o.metric, default_tolerance(o.metric) if o.tolerance is None else o.tolerance) for o in chosen]


def _key(candidate, metrics: list[str]) -> tuple:
    return tuple(candidate.metrics[m] if direction(m) == "lower" else -candidate.metrics[m] for m in metrics)


def _kept(candidates, metrics: list[str]) -> list:
    return [c for c in candidates if c.status == "ok" and all(m in c.metrics for m in metrics)]


def mark_pareto(candidates, metrics: list[str]) -> None:
    kept = _kept(candidates, metrics)
    for c in kept:
        mine = _key(c, metrics)
        c.pareto = not any(all(a <= b for a, b in zip(_key(o, metrics), mine)) and _key(o, metrics) != mine
                           for o in kept)


def rule(objectives: list[Objective]) -> str:
    steps = [f"lowest {o.metric}" if direction(o.metric) == "lower" else f"highest {o.metric}" for o in objectives]
    steps = [s + (f" (within {o.tolerance:.0%} counted equal)" if o.tolerance else "") for s, o in zip(steps, objectives)]
    return "goals first, then " + ", then ".join(steps + ["the earliest trial"])


def select(candidates, objectives: list[Objective]) -> tuple[object | None, list[str]]:
    """The best candidate and, step by step, how the rule narrowed the field to it."""
    metrics = [o.metric for o in objectives]
    pool = _kept(candidates, metrics)
    why = [f"{len(pool)} of {len(candidates)} candidates met every goal"]
    for objective in objectives:
        if not pool:
            break
        lower = direction(objective.metric) == "lower"
        values = [c.metrics[objective.metric] for c in pool]
        best = min(values) if lower else max(values)
        pool = [c for c, v in zip(pool, values) if abs(v - best) <= objective.tolerance * abs(best)]
        near = f" and within {objective.tolerance:.0%} of it" if objective.tolerance else ""
        who = f"trial {pool[0].trial}" if len(pool) == 1 else f"trials {', '.join(str(c.trial) for c in pool)}"
        why.append(f"{objective.metric}: best {best:.4g}; {who} at it{near}")
    winner = min(pool, key=lambda c: c.trial) if pool else None
    return winner, why
