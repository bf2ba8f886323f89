"""Quantize a model one decoder layer at a time: collect input statistics, (AWQ) fold scales, quantize each linear,
then feed the quantized layer's outputs to the next layer. Returns the chosen integers per linear."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from edgewise.archs import Arch, InputGroup, arch_for
from edgewise.quant.awq import block_error, clip_quantize, linear_error, search_scale
from edgewise.quant.calib import first_layer_inputs, layer_stats, run_layer
from edgewise.quant.gptq import gptq_quantize
from edgewise.quant.int4 import QTensor, QuantSpec, effective_group_size, rtn

ALGORITHMS = ("awq", "gptq", "rtn")


@torch.no_grad()
def quantize_model(model, windows: torch.Tensor | None, spec: QuantSpec, algorithm: str,
                   batch_size: int = 4, n_grid: int = 20) -> dict[str, QTensor]:
    arch = arch_for(model.config)
    layers = model.model.layers
    if algorithm != "rtn":
        hidden, kwargs = first_layer_inputs(model, windows, batch_size)
    result: dict[str, QTensor] = {}
    for i, layer in enumerate(tqdm(layers, desc=f"{algorithm} int{spec.bits}", unit="layer", leave=False)):
        grams = {}
        if algorithm != "rtn":
            blocks = tuple(g.block for g in arch.groups if g.block) if algorithm == "awq" else ()
            stats, block_inputs = layer_stats(layer, [g.linears[0] for g in arch.groups], hidden, kwargs, blocks)
            grams = {g: stats[g.linears[0]].gram for g in arch.groups}
        if algorithm == "awq":
            for group in arch.groups:
                if group.prev:
                    s = _awq_scale(layer, group, stats[group.linears[0]], block_inputs.get(group.block), spec, n_grid)
                    _fold_scale(layer, group, s, arch)
                    grams[group] = grams[group] / torch.outer(s, s)
        for group in arch.groups:
            for name in group.linears:
                linear = layer.get_submodule(name)
                qt = _quantize_linear(linear.weight.float(), grams.get(group), spec, algorithm, name, arch, n_grid)
                linear.weight.copy_(qt.dequantize().to(linear.weight.dtype))
                result[f"model.layers.{i}.{name}"] = qt
        if algorithm != "rtn":
            hidden = run_layer(layer, hidden, kwargs)
    return result


def _quantize_linear(w, gram, spec, algorithm, name, arch: Arch, n_grid) -> QTensor:
    group_size = effective_group_size(w.shape[1], spec.group_size)
    if algorithm == "gptq":
        return gptq_quantize(w, gram, spec, group_size)
    if algorithm == "awq" and name.split(".")[-1] not in arch.no_clip:
        return clip_quantize(w, gram, spec, group_size, n_grid)
    return rtn(w, spec, group_size)


def _awq_scale(layer, group: InputGroup, stats, block_input, spec: QuantSpec, n_grid: int) -> torch.Tensor:
    linears = [layer.get_submodule(n) for n in group.linears]
    weights = [linear.weight for linear in linears]
    group_size = effective_group_size(weights[0].shape[1], spec.group_size)
    if group.block:
        error = block_error(layer.get_submodule(group.block), linears, block_input, spec, group_size)
    else:
        error = linear_error(weights, stats.gram, spec, group_size)
    return search_scale(weights, stats.abs_mean, error, group_size, n_grid)


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
    for name in group.linears:
        linear = layer.get_submodule(name)
        linear.weight.mul_(s.view(1, -1).to(linear.weight.dtype))
