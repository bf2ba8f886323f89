"""The Workflow value every command builds and `edgewise run --config workflow.yaml|json` reads: typed sections, each
a dataclass; pass and evaluator parameters are checked against their own config dataclasses, and a pass parameter may
be a search space (a list of choices, or {low, high[, step][, log]}). Unknown keys and wrong types are errors naming
the key and what is allowed; `key=value` overrides (dotted paths, values in YAML) beat the file."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgewise.core import config as cfg
from edgewise.core.errors import EdgewiseError
from edgewise.sources.model import InputModel


@dataclass(frozen=True)
class Dataset:
    data_files: str
    data_name: str = "json"
    text_template: str | None = None
    prompt_column: str = "prompt"
    response_column: str = "response"
    data_split: str | None = None


@dataclass(frozen=True)
class Goal:
    """A threshold every kept candidate meets: an absolute bound, or at most `max_degradation` (0.05 = 5%) worse than
    the input model in the metric's own direction. Candidates failing one are pruned before later evaluators run."""
    metric: str
    max: float | None = None
    min: float | None = None
    max_degradation: float | None = None


@dataclass(frozen=True)
class Objective:
    """A metric to optimise. Choosing the best, values within `tolerance` (relative: 0.01 = 1%) of the best value count
    as equal and the next objective decides; default: the evaluator's own tolerance for it (sizes 1%), else 0."""
    metric: str
    tolerance: float | None = None


@dataclass(frozen=True)
class Search:
    strategy: str = field(default="exhaustive", metadata={"choices": ("exhaustive", "random", "tpe")})
    max_trials: int | None = None  # default: every combination (exhaustive) or 10
    seed: int = 0
    mode: str = field(default="joint", metadata={"choices": ("joint", "pass_by_pass")})


@dataclass(frozen=True)
class Step:
    """A pass or an evaluator: its type, fixed parameters and searched ones."""
    type: str
    fixed: dict
    space: dict = field(default_factory=dict)  # parameter -> list of choices, or {"low", "high", "step", "log"}


@dataclass(frozen=True)
class Settings:
    """Every section of a workflow file but its steps."""
    input_model: InputModel = InputModel()
    data: dict[str, Dataset] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    objectives: list[Objective] = field(default_factory=list)  # default: the metrics of the goals
    search: Search = Search()
    output_dir: str = field(default="edgewise-out", metadata={
        "flag": "output_path", "short": "-o", "help": "folder to write"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "cache folder (default: $EDGEWISE_CACHE or ~/.cache/edgewise)"})
    register: str | None = field(default=None, metadata={
        "help": "push the output to the registry as this name's next version"})
    registry: str | None = field(default=None, metadata={
        "help": "a folder (embedded registry), mlflow:http://HOST:PORT or hf://ORG (default: $EDGEWISE_REGISTRY or "
                "~/.local/share/edgewise/registry)"})


@dataclass(frozen=True)
class Workflow:
    passes: list[Step]
    evaluators: list[Step]
    settings: Settings
    label: str = "command"  # where it came from (a file, or the command that built it), for the report


def build_step(raw, table, data: dict[str, Dataset], where: str, searchable: bool = True) -> Step:
    """A pass or evaluator entry: `type`, its config's fields (each fixed or a search space) and `data: NAME`."""
    if not isinstance(raw, dict) or "type" not in raw:
        raise EdgewiseError(f"{where}: expected a mapping with 'type' ({', '.join(sorted(table))})")
    config_cls = table.lookup(raw["type"], f"{where}.type").config_cls
    fields = cfg.field_types(config_cls)
    params = {k: v for k, v in raw.items() if k not in ("type", "data", "eval_data")}
    if "eval_data" in raw:  # a finetune's held-out records, scored during training
        if "eval_data_files" not in fields:
            raise EdgewiseError(f"{where}.eval_data: {raw['type']} takes no held-out data")
        held = _dataset(data, raw["eval_data"], f"{where}.eval_data")
        params = {"eval_data_files": held.data_files, "eval_data_split": held.data_split, **params}
    if "data" in raw:
        dataset = dataclasses.asdict(_dataset(data, raw["data"], f"{where}.data"))
        params = {**{k: v for k, v in dataset.items() if k in fields}, **params}
    cfg.check_keys(params, [*fields, "data", "eval_data"], where)
    fixed, space = {}, {}
    for name, value in params.items():
        if isinstance(value, (list, dict)) and not searchable:
            raise EdgewiseError(f"{where}.{name}: evaluator parameters take one value, not a search space")
        if isinstance(value, list):
            if not value:
                raise EdgewiseError(f"{where}.{name}: an empty list of choices")
            space[name] = [cfg.check_field(config_cls, name, v, f"{where}.{name}") for v in value]
        elif isinstance(value, dict):
            space[name] = _range(value, fields[name][1], f"{where}.{name}")
        else:
            fixed[name] = cfg.check_field(config_cls, name, value, f"{where}.{name}")
    return Step(raw["type"], cfg.resolve_paths(config_cls, fixed), space)


def _dataset(data: dict[str, Dataset], name, where: str) -> Dataset:
    if name not in data:
        raise EdgewiseError(f"{where}: no dataset '{name}' in the data section (defined: {', '.join(data) or 'none'})")
    return data[name]


def _range(raw: dict, kind, where: str) -> dict:
    cfg.check_keys(raw, ("low", "high", "step", "log"), where)
    base = cfg.base_type(kind)
    if base not in (int, float) or "low" not in raw or "high" not in raw:
        raise EdgewiseError(f"{where}: a range needs a numeric parameter and both low and high")
    out = {k: cfg.check_value(raw[k], base, f"{where}.{k}") for k in ("low", "high", "step") if k in raw}
    if out["low"] > out["high"]:
        raise EdgewiseError(f"{where}: low {out['low']} is above high {out['high']}")
    return {**out, "log": cfg.check_value(raw.get("log", False), bool, f"{where}.log"), "int": base is int}


def apply_override(raw: dict, assignment: str) -> None:
    """`a.b.0.c=value` sets raw["a"]["b"][0]["c"]; the value is read as YAML (3, 0.5, [32, 64], tpe)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise EdgewiseError(f"override '{assignment}': use KEY=VALUE, e.g. search.strategy=tpe")
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) and part.isdigit() else node.setdefault(part, {})
    value = yaml.safe_load(text)
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def read(path: str | Path, overrides: list[str] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgewiseError(f"workflow file not found: {path}")
    try:
        raw = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise EdgewiseError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                            f"{str(exc).splitlines()[0]}") from exc
    raw = raw if raw is not None else {}
    for assignment in overrides:
        apply_override(raw, assignment)
    if not isinstance(raw, dict):
        raise EdgewiseError(f"{path.name}: expected a mapping of sections (passes, evaluators, goals, search, ...)")
    return raw


def from_dict(raw: dict, where: str, label: str | None = None) -> Workflow:
    from edgewise.evaluators import EVALUATORS
    from edgewise.passes import PASSES

    top = {k: v for k, v in raw.items() if k not in ("passes", "evaluators")}
    if isinstance(top.get("objectives"), list):  # a bare metric name is an objective with the default tolerance
        top["objectives"] = [{"metric": o} if isinstance(o, str) else o for o in top["objectives"]]
    settings = cfg.from_mapping(Settings, top, where)
    if not isinstance(raw.get("passes"), list) or not raw["passes"]:
        raise EdgewiseError(f"{where}: 'passes' must be a non-empty list of steps ({', '.join(sorted(PASSES))})")
    passes = [build_step(p, PASSES, settings.data, f"{where}.passes[{i}]") for i, p in enumerate(raw["passes"])]
    evaluators = [build_step(e, EVALUATORS, settings.data, f"{where}.evaluators[{i}]", searchable=False)
                  for i, e in enumerate(raw.get("evaluators") or [])]
    return Workflow(passes, evaluators, settings, label or where)


def load(path: str | Path, overrides: list[str] = ()) -> Workflow:
    from edgewise.engine import plugins

    plugins.load_all()
    return from_dict(read(path, overrides), Path(path).name, str(path))


def to_dict(workflow: Workflow) -> dict:
    """The workflow as a file would say it: each step's type, fixed values and spaces; settings that differ from the
    defaults (a command's input model and output folder always)."""
    settings = cfg.non_defaults(workflow.settings)
    settings["input_model"] = cfg.non_defaults(workflow.settings.input_model)
    settings["output_dir"] = workflow.settings.output_dir
    out = {"input_model": settings.pop("input_model"),
           "passes": [{"type": s.type, **s.fixed, **_spaces(s.space)} for s in workflow.passes]}
    if workflow.evaluators:
        out["evaluators"] = [{"type": s.type, **s.fixed} for s in workflow.evaluators]
    return {**out, **settings}


def _spaces(space: dict) -> dict:
    return {k: v if isinstance(v, list) else {key: v[key] for key in ("low", "high", "step", "log") if key in v}
            for k, v in space.items()}
