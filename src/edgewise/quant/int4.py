"""Group-wise integer weight quantization and the GPTQ checkpoint packing that ecosystem tools (and the ONNX Runtime
GenAI builder) read. Weights are [out, in]; groups run along `in`. Scales are rounded to fp16 *before* the integers are
chosen, so the stored (int, fp16 scale, int zero) triple is exactly what PyTorch training and ONNX Runtime use."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from edgewise.errors import EdgewiseError


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int = 32
    zero_point: bool = True  # asymmetric with an integer zero point; False: symmetric (zero fixed at 2**(bits-1))

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1


@dataclass
class QTensor:
    """One quantized linear weight: q [out, in] ints, scale and zero [out, groups]."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    group_size: int

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.zero, self.group_size)


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


def _expand(t: torch.Tensor, group_size: int) -> torch.Tensor:
    return t.repeat_interleave(group_size, dim=1)


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
    q = torch.round(w.float() / _expand(scale, group_size)) + _expand(zero, group_size)
    return q.clamp(0, maxq)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    return (q.float() - _expand(zero.float(), group_size)) * _expand(scale.float(), group_size)


def rtn(w: torch.Tensor, spec: QuantSpec, group_size: int, clip=None) -> QTensor:
    """Round-to-nearest with min/max (or clipped) ranges."""
    scale, zero = group_params(w, spec, group_size, clip)
    return QTensor(quantize_with(w, scale, zero, group_size, spec.maxq), scale, zero, group_size)


# --- GPTQ checkpoint format (qweight/qzeros int32, scales fp16, g_idx; zeros stored minus one) ---------------------

def _pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack [n, m] small ints along dim 0 into [n * bits / 32, m] int32."""
    per = 32 // bits
    v = values.to(torch.int64).reshape(-1, per, values.shape[1])
    shifts = (torch.arange(per, dtype=torch.int64, device=values.device) * bits).view(1, per, 1)
    packed = (v << shifts).sum(1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)  # the same 32 bits, signed


def _unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per = 32 // bits
    p = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = (torch.arange(per, dtype=torch.int64, device=packed.device) * bits).view(1, per, 1)
    return ((p.unsqueeze(1) >> shifts) & (2**bits - 1)).reshape(-1, packed.shape[1])


def pack_gptq(qt: QTensor, bits: int) -> dict[str, torch.Tensor]:
    """Packed on the tensors' own device (a GPU packs a 3.8B model in seconds), returned on the CPU."""
    out, inp = qt.q.shape
    if out % (32 // bits):
        raise EdgewiseError(f"a linear layer with {out} outputs cannot be packed at {bits} bits")
    zeros_minus_one = (qt.zero.to(torch.int64) - 1) & (2**bits - 1)
    packed = {
        "qweight": _pack_rows(qt.q.t(), bits),
        "qzeros": _pack_rows(zeros_minus_one, bits).t(),
        "scales": qt.scale.t().half(),
        "g_idx": (torch.arange(inp, device=qt.q.device) // qt.group_size).to(torch.int32),
    }
    return {k: v.cpu().contiguous() for k, v in packed.items()}


def unpack_gptq(tensors: dict[str, torch.Tensor], bits: int) -> QTensor:
    q = _unpack_rows(tensors["qweight"], bits).t()
    zero = (_unpack_rows(tensors["qzeros"].t().contiguous(), bits) + 1) & (2**bits - 1)
    scale = tensors["scales"].float().t()
    group_size = int((tensors["g_idx"] == 0).sum())
    return QTensor(q.contiguous(), scale.contiguous(), zero.contiguous(), group_size)
