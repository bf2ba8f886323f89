"""Sentence embeddings from an exported encoder (models/encoder_export.py): its tokenizer (Hugging Face
`tokenizers`, truncating to the model's length, padding each batch to its longest text) and one onnxruntime session
of the graph, which returns the finished embedding."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgewise.core.errors import EdgewiseError
from edgewise.models.encoders import SETTINGS_FILE


class Embedder:
    def __init__(self, model_dir: str | Path, threads: int = 0):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / SETTINGS_FILE).is_file():
            raise EdgewiseError(f"{self.model_dir} is not an encoder exported by edgewise auto-opt "
                                f"(no {SETTINGS_FILE})")
        self.settings = json.loads((self.model_dir / SETTINGS_FILE).read_text())
        self.dimension, self.max_length = self.settings["dimension"], self.settings["max_length"]
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()  # batches are padded here, by length
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.model_dir / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts)]

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """One row per text, in order; texts are batched by length so that little padding is computed."""
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        encoded = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
        out = np.zeros((len(texts), self.dimension), np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encoded[i].ids) for i in rows)
            ids = np.full((len(rows), width), self.settings.get("pad_id", 0), np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for r, i in enumerate(rows):
                ids[r, :len(encoded[i].ids)] = encoded[i].ids
                mask[r, :len(encoded[i].ids)] = 1
            out[rows] = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return out
