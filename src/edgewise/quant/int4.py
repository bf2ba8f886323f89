"""Group-wise integer weight quantization: round-to-nearest with min/max or clipped ranges. Weights are [out, in];
groups run along `in`. Scales are rounded to fp16 *before* the integers are chosen, so the stored (int, fp16 scale, int zero) triple is exactly what PyTorch training and ONNX Runtime use."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from edgewise.core.errors import EdgewiseError
from edgewise.models.qtensor import QTensor, expand


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int = 32
    zero_point: bool = True  # asymmetric with an integer zero point; False: symmetric (zero fixed at 2**(bits-1))

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1


def effective_group_size(in_features: int, group_size: int) -> int:
    """The requested group size, halved until it divides the layer's width (576 with 128 -> 64)."""
    size = group_size
    while size >= 16 and in_features % size:
        size //= 2
    if size < 16:
        raise EdgewiseError(f"a linear layer of width {in_features} cannot be split into groups of 16 or more")
    return size


def _groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    out, inp = w.shape
    return w.reshape(out, inp // group_size, group_size)


def group_params(w: torch.Tensor, spec: QuantSpec, group_size: int, clip: torch.Tensor | float | None = None):
    """Scale and zero point per (row, group) from the range of `w`, optionally shrunk by a clip ratio."""
    wg = _groups(w.float(), group_size)
    if spec.zero_point:
        lo, hi = wg.amin(-1), wg.amax(-1)
        if clip is not None:
            lo, hi = lo * clip, hi * clip
        scale = _fp16_scale((hi - lo) / spec.maxq)
        zero = torch.round(-lo / scale).clamp(0, spec.maxq)
    else:
        amax = wg.abs().amax(-1)
        if clip is not None:
            amax = amax * clip
        scale = _fp16_scale(2 * amax / spec.maxq)
        zero = torch.full_like(scale, (spec.maxq + 1) // 2)
    return scale, zero


def _fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    return scale.clamp(min=1e-7).half().float().clamp(min=2**-24)


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int, maxq: int):
    q = torch.round(w.float() / expand(scale, group_size)) + expand(zero, group_size)
    return q.clamp(0, maxq)


def rtn(w: torch.Tensor, spec: QuantSpec, group_size: int, clip=None) -> QTensor:
    """Round-to-nearest with min/max (or clipped) ranges."""
    scale, zero = group_params(w, spec, group_size, clip)
    return QTensor(quantize_with(w, scale, zero, group_size, spec.maxq), scale, zero, group_size)
