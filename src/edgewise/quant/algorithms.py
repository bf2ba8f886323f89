"""The quantization algorithms, one table: how each quantizes a linear, and what it needs from calibration.
`layerwise.quantize_model` runs any entry; adding an algorithm is adding a row."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgewise.core.plugin import Table
from edgewise.quant.awq import awq_linear, group_scale
from edgewise.quant.gptq import gptq_quantize
from edgewise.quant.int4 import rtn


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
