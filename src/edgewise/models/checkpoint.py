"""Loading models as PyTorch modules and saving quantized checkpoints.

A quantized edgewise checkpoint is a plain Hugging Face folder in the GPTQ format (qweight/qzeros/scales/g_idx,
`quantization_config.quant_method = "gptq"`), which the ONNX Runtime GenAI builder and GPTQ loaders read. Loading one
here gives an ordinary float model whose linear weights are exactly the dequantized integers."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgewise.core.errors import EdgewiseError
from edgewise.models.archs import arch_for
from edgewise.models.hf_config import quantization_config
from edgewise.models.qtensor import QTensor, pack_gptq, unpack_gptq

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_SKIP = {"config.json", "model.safetensors.index.json", "edgewise.json"}


@functools.cache
def quiet_transformers() -> None:
    """edgewise shows its own progress bars: transformers' per-tensor ones ("Loading weights", "Writing model
    shards") would interleave with them. Called where transformers loads or saves weights (it is imported lazily)."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def read_config(folder: Path, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        hint = " (it ships its own code: pass --trust_remote_code if you trust it)" if "custom code" in str(exc) else ""
        raise EdgewiseError(f"cannot read the model config in {folder}: {str(exc).splitlines()[0]}{hint}") from exc
    arch_for(config)
    return config


def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise EdgewiseError(f"cannot load the tokenizer in {folder}: {str(exc).splitlines()[0]}") from exc


def load_model(folder: Path, dtype=torch.float32, device: str = "cpu", trust_remote_code: bool = False):
    """A float PyTorch model; quantized checkpoints come back with exactly their dequantized weights."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    folder = Path(folder)
    config = read_config(folder, trust_remote_code)
    qconfig = quantization_config(folder)
    if qconfig is None:
        if not any(folder.glob("*.safetensors")):
            pickled = sorted(p.name for p in folder.iterdir() if p.name.endswith((".bin", ".pt", ".pth", ".ckpt")))
            raise EdgewiseError(f"no .safetensors weights in {folder}" + (
                f" ({', '.join(pickled)} is a pickle, which can run code when loaded: edgewise reads safetensors "
                "only; convert it where you trust it, e.g. model.save_pretrained(DIR, safe_serialization=True))"
                if pickled else ""))
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code,
                                                         use_safetensors=True)
        except (OSError, SafetensorError) as exc:  # missing, truncated or garbled weight files
            raise EdgewiseError(f"cannot load model weights from {folder}: {str(exc).splitlines()[0]}") from exc
        return model.to(device).eval()
    if qconfig.get("quant_method") != "gptq" or qconfig.get("desc_act"):
        raise EdgewiseError(f"{folder}: only GPTQ-format checkpoints without act-order are supported as quantized input")
    del config.quantization_config
    from transformers.initialization import no_init_weights

    with no_init_weights(), torch.device(device):  # built, read and dequantized where it will run
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    state = dequantized_state(read_tensors(folder, device), qconfig["bits"])
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing:
        raise EdgewiseError(f"{folder}: checkpoint lacks {len(missing)} weights, e.g. {missing[0]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(device).eval()


def read_tensors(folder: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise EdgewiseError(f"no .safetensors weights in {folder}")
    tensors = {}
    for file in files:
        try:
            tensors.update(load_file(file, device=device))
        except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
            raise EdgewiseError(f"cannot read {file}: {exc}") from exc
    return tensors


def dequantized_state(tensors: dict[str, torch.Tensor], bits: int) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in tensors.items() if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
    for key in tensors:
        if key.endswith(".qweight"):
            prefix = key[: -len(".qweight")]
            parts = {s: tensors[f"{prefix}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx")}
            state[f"{prefix}.weight"] = unpack_gptq(parts, bits).dequantize()
    return state


def save_quantized(model, qtensors: dict[str, QTensor], qconfig: dict, source: Path, out: Path) -> None:
    """Write `model` with the linears in `qtensors` (module name -> QTensor) replaced by packed GPTQ tensors; the
    other weights (embeddings, norms, biases) in fp32 on the CPU, converted one tensor at a time, wherever the model
    lives."""
    dropped = {f"{name}.weight" for name in qtensors}
    if model.config.tie_word_embeddings:
        dropped.add("lm_head.weight")
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items() if k not in dropped}
    for name, qt in qtensors.items():
        for key, tensor in pack_gptq(qt, qconfig["bits"]).items():
            state[f"{name}.{key}"] = tensor
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = qconfig
    (out / "config.json").write_text(json.dumps(config, indent=2))
    copy_side_files(source, out)


def copy_side_files(source: Path, out: Path) -> None:
    """Tokenizer, chat template and generation config: everything but weights and the model config."""
    for path in Path(source).iterdir():
        if path.is_file() and path.name not in _SKIP and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(path, out / path.name)


def linear_modules(model) -> dict[str, torch.nn.Linear]:
    """Decoder linears named in the architecture table, by full module name."""
    arch = arch_for(model.config)
    layers = decoder_layers(model)
    return {f"{arch.layers}.{i}.{name}": layer.get_submodule(name) for i, layer in enumerate(layers)
            for name in arch.linears()}


def decoder_layers(model):
    """The decoder layers of a transformers causal LM, where the architecture table says they are."""
    return model.get_submodule(arch_for(model.config).layers)
