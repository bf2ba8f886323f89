"""A Hugging Face folder's config.json read as plain JSON: what the command line needs to know about a model (its
architecture, whether it is quantized) without importing torch or transformers."""
from __future__ import annotations

import json
from pathlib import Path


def config_json(folder: Path) -> dict:
    """config.json as a dict; {} when it is missing or unreadable (the full loader names the problem)."""
    try:
        raw = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def model_type(folder: Path) -> str | None:
    return config_json(folder).get("model_type")


def quantization_config(folder: Path) -> dict | None:
    return config_json(folder).get("quantization_config")
