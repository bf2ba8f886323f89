"""Passes: one file each, a frozen config dataclass plus one function `fn(artifact, config, out_dir, work_dir) ->
metrics`, registered here with `@register` and declared as an entry point (group `edgewise.passes`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgewise.core.plugin import Table


@dataclass(frozen=True)
class Pass:
    name: str
    config_cls: type
    fn: Callable[..., dict | None]


PASSES = Table("pass")


def register(name: str, config_cls: type):
    """Decorator: make `fn(artifact, config, out_dir, work_dir)` the pass called `name`."""
    return lambda fn: PASSES.register(Pass(name, config_cls, fn))
