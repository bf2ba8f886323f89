"""GPTQ (Frantar et al., arXiv 2210.17323): quantize columns one by one and spread each column's rounding error over
the columns not yet quantized, weighted by the inverse Hessian H = X^T X of the layer input. Group-wise scales and zero
points are fixed when the first column of each group is reached (static order, no act-order)."""
from __future__ import annotations

import torch

from edgewise.models.qtensor import QTensor
from edgewise.quant.int4 import QuantSpec, group_params


def gptq_quantize(w: torch.Tensor, gram: torch.Tensor, spec: QuantSpec, group_size: int,
                  damp: float = 0.01, block: int = 128) -> QTensor:
    W = w.clone().float()
    out, n = W.shape
    H = gram.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.diag(H).mean() * torch.eye(n, device=H.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    block = max(block // group_size, 1) * group_size
    Q = torch.zeros_like(W)
    scales, zeros = [], []
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1, err1, h1 = W[:, i1:i2].clone(), torch.zeros(out, i2 - i1, device=W.device), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if (i1 + i) % group_size == 0:
                scale, zero = group_params(W1[:, i:i + group_size], spec, group_size)
                scales.append(scale[:, 0])
                zeros.append(zero[:, 0])
            col = W1[:, i]
            q = (torch.round(col / scale[:, 0]) + zero[:, 0]).clamp(0, spec.maxq)
            Q[:, i1 + i] = q
            err = (col - (q - zero[:, 0]) * scale[:, 0]) / h1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ h1[i, i:].unsqueeze(0)
            err1[:, i] = err
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return QTensor(Q, torch.stack(scales, 1), torch.stack(zeros, 1), group_size)
