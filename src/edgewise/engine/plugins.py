"""Passes and evaluators, built-in or third-party, are declared the same way: an entry point in the group
`edgewise.passes` or `edgewise.evaluators` naming a function decorated with `@register` or `@evaluator`:

    [project.entry-points."edgewise.passes"]
    my_pass = "my_package.my_pass:run"
"""
from __future__ import annotations

import functools
from importlib.metadata import entry_points

from edgewise.core.errors import EdgewiseError

GROUPS = ("edgewise.passes", "edgewise.evaluators")


@functools.cache
def load_all() -> None:
    for group in GROUPS:
        for point in entry_points(group=group):
            try:
                fn = point.load()
            except Exception as exc:  # a broken plugin is the plugin author's error, reported in one line
                raise EdgewiseError(f"{group} plugin '{point.name}' ({point.value}) failed to load: {exc}") from exc
            plugin = getattr(fn, "edgewise_plugin", None)
            if plugin is None or plugin.name != point.name:
                raise EdgewiseError(f"{group} entry point '{point.name}' = {point.value} is not a function decorated "
                                    f"with @{'register' if group.endswith('passes') else 'evaluator'}"
                                    f"('{point.name}', ...)")
    from edgewise.passes import PASSES

    if not PASSES:
        raise EdgewiseError("no passes are declared: edgewise is not installed (pip install -e .)")
