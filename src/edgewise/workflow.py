"""Workflow files for `edgewise run --config workflow.yaml|json`: typed sections, each a dataclass; pass and
evaluator parameters are checked against their own config dataclasses, and any of them may be a search space (a list
of choices, or {low, high[, step][, log]}). Unknown keys and wrong types are errors naming the key and what is
allowed; `key=value` overrides (dotted paths, values in YAML) beat the file."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgewise.errors import EdgewiseError


@dataclass(frozen=True)
class InputModel:
    model_name_or_path: str | None = None  # default: the embedded SmolLM2-135M-Instruct
    trust_remote_code: bool = False


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
    space: dict  # parameter -> list of choices, or {"low", "high", "step", "log"}


@dataclass(frozen=True)
class Settings:
    """Every section of a workflow file but its steps."""
    input_model: InputModel = InputModel()
    data: dict[str, Dataset] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    objectives: list[str] = field(default_factory=list)  # metrics to optimise (default: those of the goals)
    search: Search = Search()
    output_dir: str = "edgewise-out"
    cache_dir: str | None = None
    register: str | None = None
    registry: str | None = None


@dataclass(frozen=True)
class Workflow:
    passes: list[Step]
    evaluators: list[Step]
    settings: Settings


def _type_name(kind) -> str:
    return getattr(kind, "__name__", str(kind).replace("typing.", ""))


def check_value(value, kind, where: str):
    """`value` as type `kind` (a plain type, Optional, list[...] or dict[str, ...]), or an error naming `where`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        return check_value(value, next(a for a in args if a is not type(None)), where)
    if origin is list:
        if not isinstance(value, list):
            raise EdgewiseError(f"{where}: expected a list, got {value!r}")
        return [check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise EdgewiseError(f"{where}: expected a mapping, got {value!r}")
        return {k: check_value(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return build(kind, value, where)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EdgewiseError(f"{where}: expected {_type_name(kind)}, got {type(value).__name__} {value!r}")
    return value


def _fields(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _check_keys(given: dict, allowed, where: str) -> None:
    for key in given:
        if key not in allowed:
            raise EdgewiseError(f"{where}: unknown key '{key}'; allowed: {', '.join(sorted(allowed))}")


def build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise EdgewiseError(f"{where}: expected a mapping of {', '.join(_fields(cls))}, got {raw!r}")
    fields = _fields(cls)
    _check_keys(raw, fields, where)
    values = {}
    for name, (f, kind) in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise EdgewiseError(f"{where}: '{name}' is required")
            continue
        values[name] = _choice(f, check_value(raw[name], kind, f"{where}.{name}"), f"{where}.{name}")
    return cls(**values)


def _choice(f, value, where: str):
    choices = f.metadata.get("choices")
    if choices and value is not None and value not in choices:
        raise EdgewiseError(f"{where}: '{value}' is not one of {', '.join(map(str, choices))}")
    return value


def build_step(raw, registry: dict, data: dict[str, Dataset], where: str) -> Step:
    """A pass or evaluator entry: `type`, its config's fields (each fixed or a search space) and `data: NAME`."""
    if not isinstance(raw, dict) or "type" not in raw:
        raise EdgewiseError(f"{where}: expected a mapping with 'type' ({', '.join(sorted(registry))})")
    kind = raw["type"]
    if kind not in registry:
        raise EdgewiseError(f"{where}.type: unknown '{kind}'; available: {', '.join(sorted(registry))}")
    fields = _fields(registry[kind].config_cls)
    params = {k: v for k, v in raw.items() if k not in ("type", "data")}
    if "data" in raw:
        if raw["data"] not in data:
            raise EdgewiseError(f"{where}.data: no dataset '{raw['data']}' in the data section "
                                f"(defined: {', '.join(data) or 'none'})")
        dataset = dataclasses.asdict(data[raw["data"]])
        params = {**{k: v for k, v in dataset.items() if k in fields}, **params}
    _check_keys(params, [*fields, "data"], where)
    fixed, space = {}, {}
    for name, value in params.items():
        f, kind_ = fields[name]
        if isinstance(value, list):
            space[name] = [_choice(f, check_value(v, kind_, f"{where}.{name}[{i}]"), f"{where}.{name}")
                           for i, v in enumerate(value)]
            if not space[name]:
                raise EdgewiseError(f"{where}.{name}: an empty list of choices")
        elif isinstance(value, dict):
            space[name] = _range(value, kind_, f"{where}.{name}")
        else:
            fixed[name] = _choice(f, check_value(value, kind_, f"{where}.{name}"), f"{where}.{name}")
    return Step(kind, fixed, space)


def _range(raw: dict, kind, where: str) -> dict:
    _check_keys(raw, ("low", "high", "step", "log"), where)
    base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
    if base not in (int, float) or "low" not in raw or "high" not in raw:
        raise EdgewiseError(f"{where}: a range needs a numeric parameter and both low and high")
    out = {k: check_value(raw[k], base, f"{where}.{k}") for k in ("low", "high", "step") if k in raw}
    if out["low"] > out["high"]:
        raise EdgewiseError(f"{where}: low {out['low']} is above high {out['high']}")
    return {**out, "log": check_value(raw.get("log", False), bool, f"{where}.log"), "int": base is int}


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


def load(path: str | Path, overrides: list[str] = ()) -> Workflow:
    from edgewise import plugins
    from edgewise.engine import PASSES
    from edgewise.evaluators import EVALUATORS

    plugins.load_all()
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
    where = path.name
    if not isinstance(raw, dict):
        raise EdgewiseError(f"{path.name}: expected a mapping of sections (passes, evaluators, goals, search, ...)")
    top = {k: v for k, v in raw.items() if k not in ("passes", "evaluators")}
    settings = build(Settings, top, where)
    if not isinstance(raw.get("passes"), list) or not raw["passes"]:
        raise EdgewiseError(f"{where}: 'passes' must be a non-empty list of steps ({', '.join(sorted(PASSES))})")
    passes = [build_step(p, PASSES, settings.data, f"{where}.passes[{i}]") for i, p in enumerate(raw["passes"])]
    evaluators = [build_step(e, EVALUATORS, settings.data, f"{where}.evaluators[{i}]")
                  for i, e in enumerate(raw.get("evaluators") or [])]
    return Workflow(passes, evaluators, settings)


def to_dict(steps: list[tuple[str, object]], input_model: str | None, output_dir: str) -> dict:
    """The workflow equivalent of a command: its pass steps with their non-default parameters."""
    passes = []
    for name, config in steps:
        defaults = type(config)()
        changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                   if getattr(config, f.name) != getattr(defaults, f.name)}
        passes.append({"type": name, **changed})
    model = {"model_name_or_path": input_model} if input_model else {}
    return {"input_model": model, "passes": passes, "output_dir": output_dir}
