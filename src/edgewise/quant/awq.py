"""AWQ (Lin et al., arXiv 2306.00978): activation-aware per-channel scaling, then weight clipping.

For a group of linears reading the same input X, search s = x_mean^a / w_mean^(1-a) over a grid of a, scale the
weights' input channels by s (folding 1/s into the module that produces X) and keep the s whose quantized weights
minimise the error of the block they feed: the MLP's output for gate/up (as in the paper), the linears' own outputs
||X (Q(W s)/s - W)^T||^2 elsewhere, computed exactly from the Gram matrix of X. Then, per output row and weight group,
shrink the quantization range by the ratio that minimises the linear's output error."""
from __future__ import annotations

from typing import Callable

import torch

from edgewise.models.qtensor import QTensor, dequantize
from edgewise.quant.int4 import QuantSpec, effective_group_size, group_params, quantize_with, rtn


def output_error(delta: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """trace(delta H delta^T): the summed squared output error of a weight error `delta` [out, in]."""
    return ((delta @ gram) * delta).sum()


def search_scale(weights: list[torch.Tensor], x_mean: torch.Tensor, error: Callable[[torch.Tensor], torch.Tensor],
                 group_size: int, n_grid: int = 20) -> torch.Tensor:
    """The per-input-channel scale s of least `error(s)` for linears sharing one input; ones when no scaling helps."""
    w = torch.cat([t.float() for t in weights], 0)
    wg = w.abs().reshape(w.shape[0], -1, group_size)
    w_mean = (wg / (wg.amax(-1, keepdim=True) + 1e-6)).reshape(w.shape).mean(0)
    best_s = torch.ones_like(x_mean)
    best_err = error(best_s)
    for i in range(n_grid):
        ratio = i / n_grid
        s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        err = error(s)
        if err < best_err:
            best_s, best_err = s, err
    return best_s


def scaled(w: torch.Tensor, s: torch.Tensor, spec: QuantSpec, group_size: int) -> torch.Tensor:
    """The weight the model computes with after scaling by s, round-to-nearest quantization and unscaling."""
    return rtn(w.float() * s, spec, group_size).dequantize() / s


def linear_error(weights: list[torch.Tensor], gram: torch.Tensor, spec: QuantSpec, group_size: int):
    """error(s): the summed output error of the linears, exactly, from the Gram matrix of their input."""
    w = torch.cat([t.float() for t in weights], 0)
    return lambda s: output_error(scaled(w, s, spec, group_size) - w, gram)


def block_error(block: torch.nn.Module, linears: list[torch.nn.Linear], x: torch.Tensor, spec: QuantSpec,
                group_size: int):
    """error(s): the squared error of `block(x)` with the linears' weights scaled and quantized."""
    originals = [linear.weight.data for linear in linears]
    reference = block(x)

    def error(s: torch.Tensor) -> torch.Tensor:
        try:
            for linear, w in zip(linears, originals):
                linear.weight.data = scaled(w, s, spec, group_size).to(w.dtype)
            return (block(x) - reference).float().pow(2).sum()
        finally:
            for linear, w in zip(linears, originals):
                linear.weight.data = w

    return error


def clip_quantize(w: torch.Tensor, gram: torch.Tensor, spec: QuantSpec, group_size: int,
                  n_grid: int = 20, max_shrink: float = 0.5) -> QTensor:
    """Quantize `w` with the per-(row, group) range shrink ratio of least output error."""
    out, inp = w.shape
    ng = inp // group_size
    idx = torch.arange(ng, device=w.device)
    blocks = gram.reshape(ng, group_size, ng, group_size)[idx, :, idx, :]  # [ng, gs, gs] diagonal blocks
    best_err = torch.full((out, ng), float("inf"), device=w.device)
    best_ratio = torch.ones(out, ng, device=w.device)
    for i in range(int(max_shrink * n_grid) + 1):
        ratio = 1 - i / n_grid
        scale, zero = group_params(w, spec, group_size, ratio)
        delta = (dequantize(quantize_with(w, scale, zero, group_size, spec.maxq), scale, zero, group_size) - w)
        d = delta.reshape(out, ng, group_size)
        err = torch.einsum("ogi,gij,ogj->og", d, blocks, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return rtn(w, spec, group_size, clip=best_ratio)


def group_scale(layer, group, stats, block_input, spec: QuantSpec, n_grid: int) -> torch.Tensor:
    """The scale of one input group of a decoder layer: scored on its block's output where the table names a block
    (the MLP for gate/up), else on the linears' own outputs."""
    linears = [layer.get_submodule(n) for n in group.linears]
    weights = [linear.weight for linear in linears]
    group_size = effective_group_size(weights[0].shape[1], spec.group_size)
    if group.block:
        error = block_error(layer.get_submodule(group.block), linears, block_input, spec, group_size)
    else:
        error = linear_error(weights, stats.gram, spec, group_size)
    return search_scale(weights, stats.abs_mean, error, group_size, n_grid)


def awq_linear(w, gram, spec: QuantSpec, group_size: int, clip: bool, n_grid: int) -> QTensor:
    """A linear after scaling: clipped where the table allows it (not where softmax follows), else round-to-nearest."""
    return clip_quantize(w, gram, spec, group_size, n_grid) if clip else rtn(w, spec, group_size)
