"""One serving engine over an exported model and its adapters, opened by one function for whatever front runs it
(the HTTP API today): the decoder the model's target runs on, the continuous batcher over it, the tokenizer, the chat
template's head (the prompt cache's first piece) and the metrics."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgewise.models.targets import target_of
from edgewise.runtime.genai import chat_prompt_ids
from edgewise.serve.batching import Batcher
from edgewise.serve.decoder import SlotDecoder
from edgewise.serve.metrics import Metrics
from edgewise.serve.one_slot import OneSlot


@dataclass
class Engine:
    batcher: Batcher
    tokenizer: object  # onnxruntime_genai.Tokenizer
    adapters: list[str]  # the served adapters' names
    context_length: int  # tokens per request, prompt and answer
    metrics: Metrics

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, messages)

    def close(self) -> None:
        self.batcher.close()


def open_engine(model_dir: str | Path, adapters: dict[str, str], max_batch: int = 16, max_queue: int = 64,
                max_context: int | None = None, prompt_cache: int = 256 * 2**20) -> Engine:
    """The engine for `model_dir`: CPU and CUDA models batch up to max_batch requests in the slot decoder; NPU
    pipelines (compiled for batch 1), DirectML and WebGPU models take one request at a time through genai."""
    import onnxruntime_genai as og

    if target_of(json.loads((Path(model_dir) / "genai_config.json").read_text())).slot_engine:
        decoder = SlotDecoder(model_dir, adapters, max_batch, max_context)
        tokenizer = og.Tokenizer(og.Config(str(model_dir)))
        prefix = template_prefix(tokenizer)
    else:
        decoder = OneSlot(model_dir, adapters, max_context)
        tokenizer, prefix = decoder.runtime.tokenizer, []
    metrics = Metrics()
    batcher = Batcher(decoder, decoder.eos, max_queue, metrics, prefix=prefix, cache_bytes=prompt_cache)
    metrics.watch(batcher)
    return Engine(batcher, tokenizer, list(adapters), decoder.context, metrics)


def template_prefix(tokenizer) -> list[int]:
    """The tokens every chat prompt starts with: the template's head (its default system turn, the user turn's
    opening), found as what two different one-message chats share."""
    try:
        one, two = (chat_prompt_ids(tokenizer, [{"role": "user", "content": text}]) for text in ("a", "b"))
    except Exception:  # noqa: BLE001 - a model without a chat template: no shared prefix
        return []
    n = next((i for i, (x, y) in enumerate(zip(one, two)) if x != y), min(len(one), len(two)))
    return one[:n]
