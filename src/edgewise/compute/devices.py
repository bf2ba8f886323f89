"""--device auto|cpu|cuda, resolved once."""
from __future__ import annotations

import contextlib

from edgewise.core.errors import EdgewiseError


def resolve(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgewiseError("--device cuda was asked for, but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise EdgewiseError(f"unknown device '{device}': use auto, cpu or cuda")
    return device


def compute_dtype(device: str):
    """bf16 on GPUs that support it (weights and activations; statistics stay fp32), fp32 on CPUs."""
    import torch

    return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def autocast(device: str):
    """Mixed precision for training on GPUs: weights stay fp32 (the exact dequantized values), matmuls run in bf16;
    a no-op on CPUs."""
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
