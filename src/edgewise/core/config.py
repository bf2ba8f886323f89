"""Config dataclasses are the single source of truth for every setting: this module turns one into command-line
flags, reads it back from parsed flags or from a YAML/JSON mapping (checked: unknown keys, types, choices), resolves
its path fields once, and writes the values that differ from the defaults.

Field metadata understood here: `help`, `choices`, `path` (a file or folder, resolved to an absolute path), `flag`
(the command-line name when it differs from the field's) and `short` (e.g. "-m")."""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

from edgewise.core.errors import EdgewiseError


def field_types(cls) -> dict[str, tuple[dataclasses.Field, object]]:
    """name -> (field, type hint) of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def base_type(kind):
    """`int` for `int | None`; the type itself otherwise."""
    return next((a for a in typing.get_args(kind) if a is not type(None)), kind) if _is_union(kind) else kind


def _is_union(kind) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", f.name)


# --- flags -----------------------------------------------------------------------------------------------------------

def add_flags(parser, cls, only=None, defaults=None, required=(), title: str | None = None) -> None:
    """One flag per field (those in `only`, or all), with its type, choices and help; `defaults` and
    `required` adjust a command's view of the dataclass."""
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    for name, (f, kind) in field_types(cls).items():
        if only is not None and name not in only:
            continue
        default = (defaults or {}).get(name, f.default if f.default is not dataclasses.MISSING else None)
        meta, base = f.metadata, base_type(kind)
        kwargs = {"dest": name, "default": default,
                  "help": meta.get("help", "") + ("" if name in required or "(default" in meta.get("help", "")
                                                    else f" (default: {default})")}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = base
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        if name in required:
            kwargs["required"] = True
        group.add_argument(*(s for s in (f"--{flag_name(f)}", meta.get("short")) if s), **kwargs)


def from_args(args, cls, **overrides):
    """An instance from parsed flags (fields without a flag keep their defaults)."""
    values = {name: getattr(args, name) for name in field_types(cls) if hasattr(args, name)}
    return make(cls, {**values, **overrides}, cls.__name__)


# --- instances -------------------------------------------------------------------------------------------------------

def resolve_paths(cls, values: dict) -> dict:
    """Path fields made absolute (against the current folder), once, wherever the values came from."""
    values = dict(values)
    for name, (f, _) in field_types(cls).items():
        if f.metadata.get("path") and values.get(name):
            values[name] = str(Path(values[name]).expanduser().resolve())
    return values


def make(cls, values: dict, where: str):
    """An instance from already-checked values, path fields resolved."""
    try:
        return cls(**resolve_paths(cls, values))
    except TypeError as exc:
        raise EdgewiseError(f"{where}: {exc}") from exc


def non_defaults(config) -> dict:
    """The fields of an instance that differ from its class's defaults (what a saved workflow needs to say)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if value != default:
            out[f.name] = plain(value)
    return out


def plain(value):
    """Dataclasses (also inside lists and dicts) as plain mappings, for YAML and JSON."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


# --- mappings (YAML / JSON) ------------------------------------------------------------------------------------------

def check_keys(given, allowed, where: str) -> None:
    for key in given:
        if key not in allowed:
            raise EdgewiseError(f"{where}: unknown key '{key}'; allowed: {', '.join(sorted(allowed))}")


def _type_name(kind) -> str:
    return getattr(kind, "__name__", str(kind).replace("typing.", ""))


def check_value(value, kind, where: str):
    """`value` as type `kind` (a plain type, Optional, list[...], dict[str, ...] or a dataclass), or an error
    naming `where`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if _is_union(kind):
        if value is None and type(None) in args:
            return None
        return check_value(value, base_type(kind), where)
    if origin is list:
        if not isinstance(value, list):
            raise EdgewiseError(f"{where}: expected a list, got {value!r}")
        return [check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise EdgewiseError(f"{where}: expected a mapping, got {value!r}")
        return {k: check_value(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, where)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EdgewiseError(f"{where}: expected {_type_name(kind)}, got {type(value).__name__} {value!r}")
    return value


def check_field(cls, name: str, value, where: str):
    """One field's value, checked for type and choices."""
    f, kind = field_types(cls)[name]
    value = check_value(value, kind, where)
    choices = f.metadata.get("choices")
    if choices and value is not None and value not in choices:
        raise EdgewiseError(f"{where}: '{value}' is not one of {', '.join(map(str, choices))}")
    return value


def from_mapping(cls, raw, where: str):
    """An instance from a mapping: unknown keys, missing required keys, types and choices are errors naming the key."""
    fields = field_types(cls)
    if not isinstance(raw, dict):
        raise EdgewiseError(f"{where}: expected a mapping of {', '.join(fields)}, got {raw!r}")
    check_keys(raw, fields, where)
    for name, (f, _) in fields.items():
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise EdgewiseError(f"{where}: '{name}' is required")
    return make(cls, {name: check_field(cls, name, value, f"{where}.{name}") for name, value in raw.items()}, where)
