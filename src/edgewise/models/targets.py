"""Per-target facts, one table: for each device an exported model can be built for, the model builder's name for it,
the execution provider, the precisions that are built and run there, its key in genai_config.json and the package
that runs it. `--device` and `--provider` are both read through this table."""
from __future__ import annotations

from dataclasses import dataclass

from edgewise.core.errors import EdgewiseError


PRECISIONS = ("int4", "int8", "fp16", "bf16", "fp32")  # the model builder's -p values


@dataclass(frozen=True)
class Target:
    device: str  # the builder's -e value
    provider: str  # the ONNX Runtime execution provider
    precisions: tuple[str, ...]  # weight precisions built for it (the first is the default)
    runtime: str  # what runs such a model
    genai_key: str | None  # its entry in genai_config.json's provider_options (None: the CPU)
    builder: str | None = None  # the builder's -e value when it differs from `device` (the NPU starts from the CPU's)
    # its runtime takes zero-size tensors (the rank-0 LoRA defaults): WebGPU cannot bind them (measured, Dawn on
    # Vulkan); DirectML is given the same one-column defaults unverified
    empty_tensors: bool = True
    slot_engine: bool = False  # `serve` batches it in serve/decoder.py (else one request at a time through genai)
    fuse_gate_up: bool = False  # the export fuses a separate gate and up projection (measured faster on the CPU)
    cuda_graphs: bool = False  # a bounded-context export and the serve engine capture and replay CUDA graphs
    pipeline: bool = False  # built from the CPU model and cut into a decoder pipeline (models/npu.py)

    @property
    def builder_device(self) -> str:
        """The model builder's -e value."""
        return self.builder or self.device


TARGETS = {t.device: t for t in (
    Target("cpu", "CPUExecutionProvider", ("int4", "int8", "fp16", "fp32"), "onnxruntime-genai", None,
           slot_engine=True, fuse_gate_up=True),
    Target("cuda", "CUDAExecutionProvider", ("int4", "int8", "fp16", "bf16", "fp32"),
           "onnxruntime-genai-cuda (with onnxruntime-gpu)", "cuda", slot_engine=True, cuda_graphs=True),
    Target("dml", "DmlExecutionProvider", ("int4", "fp16"), "onnxruntime-genai-directml (Windows)", "dml",
           empty_tensors=False),
    Target("webgpu", "WebGpuExecutionProvider", ("int4", "fp16", "fp32"),
           "onnxruntime-genai with onnxruntime-webgpu (Vulkan on Linux, D3D12 on Windows, Metal on macOS)", "webgpu",
           empty_tensors=False),
    Target("npu", "QNNExecutionProvider", ("int4", "fp32"),
           "onnxruntime-genai with onnxruntime-qnn (Snapdragon HTP; its HTP simulator on x86 Linux)", "QNN", "cpu",
           pipeline=True),
)}
DEVICES = (*TARGETS, "gpu")  # gpu: the CUDA target
PROVIDERS = {t.provider: t for t in TARGETS.values()}
PRECISIONS_BY_TARGET = "; ".join(f"{t.device}: {' '.join(t.precisions)}" for t in TARGETS.values())


def target_for(device: str, provider: str | None = None) -> Target:
    """The target named by --provider, else by --device (gpu means CUDA)."""
    if provider:
        if provider not in PROVIDERS:
            raise EdgewiseError(f"unknown provider '{provider}': use one of {', '.join(PROVIDERS)}")
        return PROVIDERS[provider]
    device = "cuda" if device == "gpu" else device
    if device not in TARGETS:
        raise EdgewiseError(f"unknown device '{device}': use one of {', '.join(DEVICES)}")
    return TARGETS[device]


def check_precision(target: Target, precision: str) -> None:
    if precision not in target.precisions:
        raise EdgewiseError(f"precision {precision} is not built for {target.provider}: use "
                            f"{', '.join(target.precisions)}")


def target_of(genai_config: dict) -> Target:
    """The target an exported model was built for, from its genai_config.json."""
    options = genai_config["model"]["decoder"].get("session_options", {}).get("provider_options", [])
    keys = {key for entry in options for key in entry}
    return next((t for t in TARGETS.values() if t.genai_key in keys), TARGETS["cpu"])
