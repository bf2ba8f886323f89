"""What an evaluator measures: a pass's output loaded as a model. An exported folder runs in onnxruntime-genai (with
its .onnx_adapter active); a Hugging Face folder runs in PyTorch (with its PEFT adapter applied). Both offer the same
three things: the tokenizer, log-probabilities of given tokens, and greedy answers."""
from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgewise.core.artifact import MODEL, model_and_adapter
from edgewise.core.errors import EdgewiseError
from edgewise.models.onnx_lora import ADAPTER_FILE


class _Lazy:
    """Files known at once; the tokenizer and weights load on first use (the size evaluator needs neither)."""

    def __init__(self, folder: Path, adapter_path: Path | None):
        self.folder, self.adapter_path = folder, adapter_path

    @functools.cached_property
    def tokenizer(self):
        from edgewise.models.checkpoint import load_tokenizer

        return load_tokenizer(self.folder)


class OnnxModel(_Lazy):
    kind = "onnx"

    @functools.cached_property
    def runtime(self):
        from edgewise.runtime.genai import Runtime

        return Runtime(self.folder, {"eval": self.adapter_path} if self.adapter_path else {})

    @property
    def adapter(self) -> str | None:
        return "eval" if self.adapter_path else None

    def logprobs(self, ids: list[int]) -> np.ndarray:
        """log p(ids[i+1] | ids[:i+1]) for every position, from one forward pass over the whole sequence."""
        logits = self.runtime.all_logits(ids, self.adapter)[:-1].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        log_z = np.log(np.exp(logits).sum(-1))
        return logits[np.arange(len(ids) - 1), ids[1:]] - log_z

    def answer(self, ids: list[int], max_new_tokens: int) -> str:
        from edgewise.runtime.sampling import Sampling

        return "".join(self.runtime.stream(ids, self.adapter, Sampling(max_new_tokens)))


class TorchModel(_Lazy):
    kind = "torch"

    @functools.cached_property
    def model(self):
        from edgewise.models.checkpoint import load_model

        model = load_model(self.folder)
        if self.adapter_path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(self.adapter_path))
        return model.eval()

    def logprobs(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
        return torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()

    def answer(self, ids: list[int], max_new_tokens: int) -> str:
        import torch

        with torch.no_grad():
            out = self.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def locate(path: Path) -> tuple[str, Path, Path | None]:
    """(kind, model folder, adapter or None) of a pass output: export, finetune, quantize or a plain HF folder."""
    path = Path(path)
    for folder in (path / MODEL, path):
        if (folder / "genai_config.json").is_file():
            return "onnx", folder, folder / ADAPTER_FILE if (folder / ADAPTER_FILE).is_file() else None
    folder, adapter = model_and_adapter(path)
    if (folder / "config.json").is_file():
        return "torch", folder, adapter
    raise EdgewiseError(f"{path} holds no model to evaluate (neither genai_config.json nor config.json)")


@contextmanager
def load_for_eval(path: Path, use_adapter: bool = True):
    kind, folder, adapter = locate(path)
    yield (OnnxModel if kind == "onnx" else TorchModel)(folder, adapter if use_adapter else None)
