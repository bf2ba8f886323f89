"""Running exported models with onnxruntime-genai: chat template, adapters chosen per generator, streamed tokens."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from edgewise.core.errors import EdgewiseError
from edgewise.models import npu
from edgewise.models.checks import check_adapter, lora_graph, lora_inputs
from edgewise.models.targets import target_of
from edgewise.runtime.sampling import Sampling

# How onnxruntime-genai says it lacks the execution provider a model was built for.
_MISSING = ("interface not available", "not supported in this build", "has not been built with")


class RuntimeMissing(EdgewiseError):
    """The model is built for an execution provider this machine's onnxruntime-genai does not have."""


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """A conversation through the model's chat template (with the assistant's opening), as token ids. A base model
    without a chat template (Gemma 3 270M's pretrained weights) continues the conversation's text as it is."""
    try:
        text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    except RuntimeError as exc:  # onnxruntime-genai: "Empty chat template."
        if "chat template" not in str(exc).lower():
            raise
        text = "\n".join(str(m.get("content", "")) for m in messages)
    return list(tokenizer.encode(text))


def eos_ids(genai_config: dict) -> set[int]:
    """The end-of-sequence ids of a genai_config.json (one id or a list)."""
    eos = genai_config["model"]["eos_token_id"]
    return set(eos if isinstance(eos, list) else [eos])


def _register_qnn(model_dir: Path, target):
    """The QNN plugin registered with onnxruntime-genai; the context in which its libraries load."""
    from edgewise.runtime import qnn

    if not qnn.available():
        raise RuntimeMissing(f"{model_dir} is built for {target.provider}, which this machine's onnxruntime-genai "
                             f"cannot run; it runs with {target.runtime}")
    qnn.register_genai()
    return qnn.quiet_stdout()


def adapter_arrays(path: Path) -> dict[str, np.ndarray]:
    """An .onnx_adapter's tensors as numpy arrays (copies: the runtime keeps pointers to what it is given)."""
    import onnxruntime as ort

    adapter = ort.AdapterFormat.read_adapter(str(path))  # its parameters alias its memory: copy while it lives
    return {name: np.array(value.numpy(), copy=True) for name, value in adapter.get_parameters().items()}


class Runtime:
    """One loaded base model and its named adapters; each generation picks an adapter (or none)."""

    def __init__(self, model_dir: str | Path, adapters: dict[str, str | Path] | None = None):
        import onnxruntime_genai as og

        self.og = og
        self.model_dir = model_dir = Path(model_dir)
        if not (model_dir / "genai_config.json").is_file():
            raise EdgewiseError(f"{model_dir} is not an ONNX Runtime GenAI model folder (no genai_config.json)")
        target = None  # known once genai_config.json is read: the provider the model was built for
        try:
            genai_config = json.loads((model_dir / "genai_config.json").read_text())
            self.context_length = int(genai_config["model"]["context_length"])
            self.vocab_size, self.eos = int(genai_config["model"]["vocab_size"]), eos_ids(genai_config)
            target = target_of(genai_config)
            self.pipeline, self.window = npu.is_pipeline(genai_config), npu.window_of(genai_config)
            if self.pipeline:
                with _register_qnn(model_dir, target):
                    self.model = og.Model(str(model_dir))
            else:
                self.model = og.Model(str(model_dir))
            self.tokenizer = og.Tokenizer(self.model)
        except RuntimeMissing:
            raise
        except Exception as exc:  # the runtime's RuntimeError text names the damaged file
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if target and target.genai_key and any(m in text for m in _MISSING):
                raise RuntimeMissing(f"{model_dir} is built for {target.provider}, which this machine's "
                                     f"onnxruntime-genai cannot run; it runs with {target.runtime}") from exc
            raise EdgewiseError(f"cannot load the model in {model_dir}: {text}") from exc
        self.adapters = og.Adapters(self.model)
        self.tensors: dict[str, dict] = {}  # a pipeline's adapters, fed as inputs (its stages do not get og.Adapters)
        self.names: list[str] = []
        for name, path in (adapters or {}).items():
            self.load_adapter(name, path)

    def load_adapter(self, name: str, path: str | Path) -> None:
        if not Path(path).is_file():
            raise EdgewiseError(f"adapter file not found: {path}")
        check_adapter(Path(path), self.lora_inputs)  # a wrong name, type or shape is one line, before the runtime
        try:
            if self.pipeline:
                self.tensors[name] = adapter_arrays(path)
            else:
                self.adapters.load(str(path), name)
        except Exception as exc:  # onnxruntime-genai raises RuntimeError/OrtException with the runtime's text
            raise EdgewiseError(f"cannot load adapter {path}: {str(exc).splitlines()[0]}") from exc
        self.names.append(name)

    @functools.cached_property
    def lora_inputs(self) -> dict:
        return lora_inputs(lora_graph(self.model_dir))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, messages)

    def stream(self, ids: list[int], adapter: str | None = None, sampling: Sampling = Sampling()) -> Iterator[str]:
        """Decoded text pieces, one per generated token."""
        for _, piece in self.stream_tokens(ids, adapter, sampling):
            yield piece

    def generator(self, max_length: int, adapter: str | None = None, **search):
        """A generator with its search options set and the adapter active; activation must precede append_tokens,
        or the prompt is processed without the adapter."""
        if adapter is not None and adapter not in self.names:
            raise EdgewiseError(f"unknown adapter '{adapter}' (loaded: {', '.join(self.names) or 'none'})")
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.context_length if self.pipeline else max_length, **search)
        generator = self.og.Generator(self.model, params)
        if self.pipeline:
            for name, value in self._pipeline_lora(adapter).items():
                generator.set_model_input(name, value)
        elif adapter is not None:
            generator.set_active_adapter(self.adapters, adapter)
        return generator

    def _pipeline_lora(self, adapter: str | None) -> dict:
        """A compiled pipeline has fixed LoRA inputs: the adapter's tensors, or zeros (the base) without one."""
        return self.tensors[adapter] if adapter is not None else self._zero_lora

    @functools.cached_property
    def _zero_lora(self) -> dict:
        types = {"float": np.float32, "float16": np.float16}
        return {name: np.zeros(dims, types[dtype]) for name, (dtype, dims) in self.lora_inputs.items()}

    def all_logits(self, ids: list[int], adapter: str | None = None) -> np.ndarray:
        """The logits at every position of `ids` ([len(ids), vocab]). A pipeline's head sees only the last window
        of an append, so its prompt goes in one window per append (full windows have no padding)."""
        self.check_room(len(ids), 0)
        generator = self.generator(len(ids) + 1, adapter)
        step = self.window if self.pipeline else len(ids)
        rows = []
        for start in range(0, len(ids), step):
            chunk = ids[start:start + step]
            generator.append_tokens(chunk)
            rows.append(np.asarray(generator.get_output("logits"))[0, :len(chunk)])
        return np.concatenate(rows)

    def prompt_span(self, prompt: int) -> int:
        """Positions a prompt of `prompt` tokens takes in the sequence: a pipeline pads it to whole windows."""
        return npu.padded_length(prompt, self.window) if self.pipeline else prompt

    def check_room(self, prompt: int, new_tokens: int) -> None:
        """The prompt's span and the answer fit the context."""
        used = self.prompt_span(prompt)
        if used + new_tokens > self.context_length:
            raise EdgewiseError(f"the prompt ({prompt} tokens{', padded to ' + str(used) if used != prompt else ''}) "
                                f"and {new_tokens} new tokens exceed the model's context of {self.context_length}")

    def stream_tokens(self, ids, adapter=None, sampling: Sampling = Sampling()):
        options = {"do_sample": sampling.temperature > 0}
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
            if sampling.seed is not None:
                options["random_seed"] = sampling.seed
        if self.pipeline:
            self.check_room(len(ids), sampling.max_new_tokens)
        generator = self.generator(len(ids) + sampling.max_new_tokens, adapter, **options)
        generator.append_tokens(ids)
        decoder = self.tokenizer.create_stream()
        for _ in range(sampling.max_new_tokens):  # a pipeline's max_length is its whole context
            if generator.is_done():
                break
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            yield token, decoder.decode(token)

    def generate(self, prompt: str, adapter: str | None = None, sampling: Sampling = Sampling()) -> str:
        ids = self.prompt_ids([{"role": "user", "content": prompt}])
        return "".join(self.stream(ids, adapter, sampling))
