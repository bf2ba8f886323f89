"""The serving engine's `Decoder` (batching.py) over one onnxruntime-genai generator, for models the slot decoder cannot
run: an NPU decoder pipeline (its graphs are compiled for batch 1, its cache lives inside the runtime), and DirectML
and WebGPU models (the slot decoder binds its cache on the CPU or CUDA only). Requests take
turns in its one slot; sampling stays the engine's (each step's chosen token is handed to the generator as the only
candidate, so the runtime's greedy search appends exactly it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgewise.core.errors import EdgewiseError
from edgewise.runtime.genai import Runtime


class OneSlot:
    slots = 1

    def __init__(self, model_dir: str | Path, adapters: dict[str, str | Path], context: int | None = None):
        self.runtime = Runtime(model_dir, adapters)
        self.adapters = set(self.runtime.names)
        self.context = min(context or self.runtime.context_length, self.runtime.context_length)
        self.prefill_chunk = self.context  # a pipeline pads each append to whole windows: one append per prompt
        self.eos = self.runtime.eos
        self.adapter: str | None = None
        self.generator = None

    @property
    def cache_bytes(self) -> int:
        return 0  # the runtime allocates it per request

    def assign(self, slot: int, adapter: str | None) -> None:
        self.adapter, self.generator = adapter, None

    def prefill(self, slot: int, ids: list[int], start: int = 0) -> np.ndarray:
        self.runtime.check_room(start + len(ids), 1)
        if start == 0:
            self.generator = self.runtime.generator(self.context, self.adapter)
        self.generator.append_tokens(ids)
        return np.array(self.generator.get_logits(), np.float32).reshape(-1)

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        chosen = np.full((1, self.runtime.vocab_size), -1e30, np.float32)
        chosen[0, int(tokens[0])] = 0.0
        self.generator.set_logits(chosen)
        self.generator.generate_next_token()
        return np.array(self.generator.get_logits(), np.float32).reshape(1, -1)

    can_save = False  # the generator's cache is onnxruntime-genai's: no prompt cache

    def save(self, slot: int, start: int, end: int) -> list:
        raise EdgewiseError("the one-slot decoder's cache lives inside onnxruntime-genai: it cannot be copied")

    def load(self, slot: int, start: int, saved: list) -> None:
        raise EdgewiseError("the one-slot decoder's cache lives inside onnxruntime-genai: it cannot be copied")
