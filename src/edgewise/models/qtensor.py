"""One quantized weight (integers, fp16-exact scales, integer zero points) and the GPTQ checkpoint packing that
ecosystem tools (and the ONNX Runtime GenAI builder) read: qweight/qzeros int32, scales fp16, g_idx; zeros stored
minus one. Weights are [out, in]; groups run along `in`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from edgewise.core.errors import EdgewiseError


@dataclass
class QTensor:
    """One quantized linear weight: q [out, in] ints, scale and zero [out, groups]."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    group_size: int

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.zero, self.group_size)


def expand(t: torch.Tensor, group_size: int) -> torch.Tensor:
    return t.repeat_interleave(group_size, dim=1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    return (q.float() - expand(zero.float(), group_size)) * expand(scale.float(), group_size)


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
