"""The quantization algorithms, one table: how each quantizes a linear, and what it needs from calibration.
`layerwise.quantize_model` runs any entry; adding an algorithm is adding a row. The implementations (torch) are
imported at their first call, so that the names can be listed without importing torch."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from edgewise.core.plugin import Table


def _late(module: str, name: str) -> Callable:
    def call(*args):
        return getattr(importlib.import_module(f"edgewise.quant.{module}"), name)(*args)

    call.__qualname__ = f"{module}.{name}"
    return call


awq_linear, group_scale = _late("awq", "awq_linear"), _late("awq", "group_scale")
gptq_quantize, rtn = _late("gptq", "gptq_quantize"), _late("int4", "rtn")


@dataclass(frozen=True)
class Algorithm:
    name: str
    quantize: Callable  # (w [out, in], gram [in, in] or None, spec, group_size, clip: bool, n_grid) -> QTensor
    calibrated: bool = True  # reads each linear's input statistics (the calibration windows run through the layers)
    scale: Callable | None = None  # (layer, group, stats, block_input, spec, n_grid) -> per-input-channel scale


ALGORITHMS = Table("quantization algorithm")
ALGORITHMS.register(Algorithm("awq", awq_linear, scale=group_scale))
ALGORITHMS.register(Algorithm("gptq", lambda w, gram, spec, group_size, clip, n_grid: gptq_quantize(
    w, gram, spec, group_size)))
ALGORITHMS.register(Algorithm("rtn", lambda w, gram, spec, group_size, clip, n_grid: rtn(w, spec, group_size),
                              calibrated=False))
