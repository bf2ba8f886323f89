"""size: bytes on disk of the model's weights and graph files, and of its adapter, in MB."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgewise.evaluators import evaluator

WEIGHTS = (".onnx", ".data", ".safetensors", ".bin", ".onnx_adapter")


@dataclass(frozen=True)
class SizeConfig:
    adapter: bool = field(default=True, metadata={"help": "count the adapter too"})


def _mb(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


@evaluator("size", SizeConfig, better={"size_mb": "lower", "adapter_mb": "lower"},
           tolerance={"size_mb": 0.01, "adapter_mb": 0.01})  # a 1% smaller file is no reason to take a worse model
def run(model, config: SizeConfig) -> dict:
    adapter = model.adapter_path
    base = [p for p in Path(model.folder).iterdir() if p.suffix in WEIGHTS and p.suffix != ".onnx_adapter"]
    adapter_files = ([adapter] if adapter and adapter.is_file() else sorted(adapter.rglob("*")) if adapter else [])
    adapter_mb = _mb([p for p in adapter_files if p.is_file()]) if config.adapter else 0.0
    return {"size_mb": _mb(base) + adapter_mb, "adapter_mb": adapter_mb}
