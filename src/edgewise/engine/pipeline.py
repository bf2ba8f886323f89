"""The one pipeline under every command and `edgewise run`: check everything that can be checked without the model
(every step's config, the evaluators, goals, objectives, the output path, the register name and registry), resolve
the source once, expand presets, run the candidates, publish the chosen one at the output path (with a report when
evaluators or a search ran), register it."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from edgewise.core import config as cfg
from edgewise.core.errors import EdgewiseError
from edgewise.core.fsutil import MANIFEST, atomic_dir, check_output_path, link_tree, stable_hash
from edgewise.core.log import log
from edgewise.engine import plugins, report
from edgewise.engine.cache import cache_root
from edgewise.engine.search import Candidate, Runner, probe_values, step_config
from edgewise.engine.selection import objectives_of
from edgewise.engine.steps import check_steps
from edgewise.engine.workflow import Step, Workflow
from edgewise.evaluators import EVALUATORS, direction
from edgewise.passes import PASSES
from edgewise.sources.model import open_source


@dataclass
class Result:
    output: Path
    runner: Runner
    winner: Candidate | None
    report: dict | None  # when evaluators or a search ran
    registered: str | None = None


def probe_configs(step: Step) -> list:
    """Configs enough to check every value a step may take: its first choices, then each searched value in turn."""
    first = {name: probe_values(spec)[0] for name, spec in step.space.items()}
    configs = [step_config(step, PASSES, first)]
    for name, spec in step.space.items():
        configs += [step_config(step, PASSES, {**first, name: value}) for value in probe_values(spec)[1:]]
    return list(dict.fromkeys(configs))


def check(workflow: Workflow) -> None:
    """Every user mistake that does not need the model, found before any work (each config's `check()` too)."""
    plugins.load_all()
    settings = workflow.settings
    configs = [c for step in workflow.passes for c in probe_configs(step)]
    configs += [step_config(step, EVALUATORS, {}) for step in workflow.evaluators]
    check_steps([(None, config) for config in dict.fromkeys(configs)])
    objectives = objectives_of(workflow)
    for metric in [o.metric for o in objectives] + [g.metric for g in settings.goals]:
        direction(metric)
    if any(step.space for step in workflow.passes) and not objectives:
        raise EdgewiseError("a search needs evaluators (and goals or objectives) to compare its candidates")
    check_output_path(Path(settings.output_dir))
    if settings.register:
        from edgewise.registry import check_name, open_registry

        check_name(settings.register)
        open_registry(settings.registry)


def expand_presets(workflow: Workflow, source) -> Workflow:
    """`finetune` with method qlora trains over a 4-bit AWQ base: a quantize step on the finetune's data goes before
    it unless one is there or the input model is already quantized."""
    from edgewise.models.hf_config import quantization_config

    passes, quantized = [], bool(quantization_config(source.path))
    for step in workflow.passes:
        if step.type == "finetune" and "method" in step.space:
            raise EdgewiseError("finetune.method cannot be searched: qlora adds a quantize step to the chain")
        if step.type == "finetune" and step.fixed.get("method") == "qlora" and not quantized:
            data = ("data_files", "data_name", "text_template", "device")
            passes.append(Step("quantize", {k: step.fixed[k] for k in data if k in step.fixed}))
            log.info("finetune: method qlora, so the chain quantizes the input model first (AWQ int4)")
        quantized = quantized or step.type == "quantize"
        passes.append(step)
    return replace(workflow, passes=passes)


def run(workflow: Workflow) -> Result:
    check(workflow)
    settings = workflow.settings
    cache = cache_root(settings.cache_dir)
    source = open_source(settings.input_model, cache)
    workflow = expand_presets(workflow, source)
    runner = Runner(workflow, source, cache)
    winner = runner.run()
    summary = report.build(runner, winner) if runner.keys or workflow.evaluators else None
    out = publish(Path(settings.output_dir), winner, summary)
    result = Result(out, runner, winner, summary)
    if not winner:
        counts = {s: sum(c.status == s for c in runner.candidates) for s in ("pruned", "failed")}
        raise EdgewiseError(f"no candidate met the goals ({counts['pruned']} pruned by a goal, {counts['failed']} "
                            f"failed); see {out / 'report.html'}")
    if settings.register:
        from edgewise.registry import open_registry

        pushed = open_registry(settings.registry).push(out, settings.register)
        result.registered = f"{pushed['name']}@{pushed['version']}"
        log.info("registered %s", result.registered)
    return result


def publish(out: Path, winner: Candidate | None, summary: dict | None) -> Path:
    """The chosen cache entry at the output path as hard links (no second copy on disk), and the report beside its
    files; without a winner, the report alone, marked as edgewise's folder to replace."""
    check_output_path(out)
    with atomic_dir(out) as tmp:
        if winner:
            link_tree(Path(winner.path), tmp)
        else:
            marker = {"id": stable_hash(summary["candidates"]), "pass": "run", "workflow": summary["workflow"]}
            (tmp / MANIFEST).write_text(json.dumps(marker, indent=2))
        if summary:
            report.write(tmp, summary)
    log.info("wrote %s%s", out, f" (report: {out / 'report.html'})" if summary else "")
    return out


def as_data(result: Result) -> dict:
    """What `--json` prints: the report when there is one, else the output and the last pass's metrics."""
    if result.report:
        data = dict(result.report)
    else:
        last = result.winner.lineage[-1] if result.winner and result.winner.lineage else {}
        data = {"pass": last.get("pass"), "metrics": last.get("metrics", {})}
    data = {"output_path": str(result.output), **data}
    if result.registered:
        data["registered"] = result.registered
    return cfg.plain(data)
