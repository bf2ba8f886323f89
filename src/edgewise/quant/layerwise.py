"""Quantize a model one decoder layer at a time: collect input statistics, fold scales (for algorithms that search
them), quantize each linear, then feed the quantized layer's outputs to the next layer. Returns the chosen integers
per linear."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from edgewise.models.archs import Arch, InputGroup, arch_for
from edgewise.models.checkpoint import decoder_layers
from edgewise.models.qtensor import QTensor
from edgewise.quant.algorithms import ALGORITHMS, Algorithm
from edgewise.quant.calib import first_layer_inputs, layer_stats, run_layer
from edgewise.quant.int4 import QuantSpec, effective_group_size


@torch.no_grad()
def quantize_model(model, windows: torch.Tensor | None, spec: QuantSpec, algorithm: str,
                   batch_size: int = 4, n_grid: int = 20) -> dict[str, QTensor]:
    algo, arch = ALGORITHMS.lookup(algorithm), arch_for(model.config)
    if algo.calibrated:
        hidden, kwargs = first_layer_inputs(model, windows, batch_size)
    result: dict[str, QTensor] = {}
    for i, layer in enumerate(tqdm(decoder_layers(model), desc=f"{algorithm} int{spec.bits}", unit="layer",
                                   leave=False)):
        grams = _scaled_grams(layer, arch, algo, hidden, kwargs[i], spec, n_grid) if algo.calibrated else {}
        for group in arch.groups:
            for name in group.linears:
                linear = layer.get_submodule(name)
                w = linear.weight.float()
                clip = name.split(".")[-1] not in arch.no_clip
                qt = algo.quantize(w, grams.get(group), spec, effective_group_size(w.shape[1], spec.group_size),
                                   clip, n_grid)
                linear.weight.copy_(qt.dequantize().to(linear.weight.dtype))
                result[f"{arch.layers}.{i}.{name}"] = qt
        if algo.calibrated:
            hidden = run_layer(layer, hidden, kwargs[i])
    return result


def _scaled_grams(layer, arch: Arch, algo: Algorithm, hidden, kwargs, spec: QuantSpec, n_grid: int) -> dict:
    """Each input group's Gram matrix, after the algorithm's scales (if it searches them) are folded in."""
    blocks = tuple(g.block for g in arch.groups if g.block) if algo.scale else ()
    stats, block_inputs = layer_stats(layer, [g.linears[0] for g in arch.groups], hidden, kwargs, blocks)
    grams = {g: stats[g.linears[0]].gram for g in arch.groups}
    for group in arch.groups if algo.scale else ():
        if group.prev:
            s = algo.scale(layer, group, stats[group.linears[0]], block_inputs.get(group.block), spec, n_grid)
            _fold_scale(layer, group, s, arch)
            grams[group] = grams[group] / torch.outer(s, s)
    return grams


def _fold_scale(layer, group: InputGroup, s: torch.Tensor, arch: Arch) -> None:
    """W <- W diag(s) for the group's linears, and 1/s folded into the module producing their input."""
    prev = layer.get_submodule(group.prev)
    if isinstance(prev, torch.nn.Linear):
        rows = slice(prev.out_features // 2, None) if group.prev_rows == "second_half" else slice(None)
        prev.weight[rows] /= s.view(-1, 1).to(prev.weight.dtype)
        if prev.bias is not None:
            prev.bias[rows] /= s.to(prev.bias.dtype)
    else:
        w = prev.weight.float()
        prev.weight.copy_(((w + arch.norm_offset) / s - arch.norm_offset).to(prev.weight.dtype))
        if getattr(prev, "bias", None) is not None:  # a LayerNorm's shift scales with it
            prev.bias /= s.to(prev.bias.dtype)
    for name in group.linears:
        linear = layer.get_submodule(name)
        linear.weight.mul_(s.view(1, -1).to(linear.weight.dtype))
