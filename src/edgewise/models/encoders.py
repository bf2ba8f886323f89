"""Encoders: the per-architecture table of the sentence-embedding models edgewise exports, and what a
sentence-transformers folder says about its head (modules.json: pooling, dense layers, normalization); the model
with its head as one torch module is in encoder_export.py.

A plain Hugging Face encoder folder (no modules.json) gets mean pooling and L2 normalization, the head of most
embedding models (all-MiniLM, BGE's and E5's card examples aside, which sentence-transformers folders then state)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgewise.core.errors import EdgewiseError

POOLINGS = ("mean", "cls", "max", "lasttoken")
SETTINGS_FILE = "encoder.json"  # an exported encoder's head, dimension and length, beside its model.onnx


@dataclass(frozen=True)
class Encoder:
    model_type: str
    models: str  # for README's table
    lora: tuple[str, ...]  # LoRA's default targets: the attention's query and value projections


ENCODERS = {e.model_type: e for e in (
    Encoder("bert", "BERT, all-MiniLM, BGE, E5, GTE", ("query", "value")),
    Encoder("roberta", "RoBERTa, all-distilroberta", ("query", "value")),
    Encoder("xlm-roberta", "XLM-R, multilingual E5, BGE-M3", ("query", "value")),
    Encoder("mpnet", "MPNet, all-mpnet-base", ("q", "v")),
)}


def is_encoder(model_type: str | None) -> bool:
    return model_type in ENCODERS


@dataclass(frozen=True)
class Head:
    """What turns the encoder's token states into the sentence embedding."""
    pooling: str = "mean"
    dense: tuple[str, ...] = ()  # folders of sentence-transformers Dense modules, in order
    normalize: bool = True

    def to_dict(self) -> dict:
        return {"pooling": self.pooling, "dense": list(self.dense), "normalize": self.normalize}


def read_head(folder: Path) -> Head:
    """The head a sentence-transformers folder declares (modules.json), or mean pooling + normalization."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return Head()
    pooling, dense, normalize = "mean", [], False
    for module in json.loads(modules_file.read_text()):
        kind = module.get("type", "").rsplit(".", 1)[-1]
        path = folder / module.get("path", "")
        if kind == "Pooling":
            pooling = _pooling_mode(json.loads((path / "config.json").read_text()), path)
        elif kind == "Dense":
            dense.append(module["path"])
        elif kind == "Normalize":
            normalize = True
        elif kind != "Transformer":
            raise EdgewiseError(f"{modules_file}: module '{kind}' is not supported (Transformer, Pooling, Dense and "
                                "Normalize are)")
    return Head(pooling, tuple(dense), normalize)


def _pooling_mode(config: dict, path: Path) -> str:
    modes = [m for m in POOLINGS if config.get(f"pooling_mode_{m}_tokens" if m in ("mean", "max") else
                                               "pooling_mode_cls_token" if m == "cls" else f"pooling_mode_{m}")]
    if config.get("pooling_mode_mean_sqrt_len_tokens") or config.get("pooling_mode_weightedmean_tokens"):
        raise EdgewiseError(f"{path}: sqrt-length and weighted mean pooling are not supported (mean, cls, max and "
                            "last token are)")
    if len(modes) != 1:
        raise EdgewiseError(f"{path}: exactly one pooling mode must be on (found {', '.join(modes) or 'none'})")
    return modes[0]
