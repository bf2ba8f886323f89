"""An encoder exported as one ONNX graph from token ids and mask to the finished sentence embedding (pooling, dense
layers and normalization inside), dynamic in batch and length, checked against PyTorch on the way out.

The TorchScript exporter (`torch.onnx.export(dynamo=False)`) is used on purpose: onnxruntime's transformer
optimizer fuses its graph (EmbedLayerNorm, Attention, SkipLayerNorm, BiasGelu), and finds nothing to fuse in the
dynamo exporter's (field notes, 2026-12-07). int8 is `quantize_dynamic`, per channel, on the fused graph."""
from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from edgewise.core.errors import EdgewiseError
from edgewise.core.log import log
from edgewise.models.encoders import SETTINGS_FILE, Head, read_head

CHECK_TEXTS = ["Where should I go in Lisbon in May?", "The old market opens at nine.",
               "A short one.", "Trains to Porto leave every hour from Santa Apolónia station, and the ride is scenic."]
MODEL_FILE = "model.onnx"
MIN_COSINE = {"fp32": 0.9999, "int8": 0.95}  # below this against PyTorch the export is broken, not just rounded


def export_encoder(folder: Path, out: Path, precision: str, work: Path) -> dict:
    """Write the embedding model for the CPU into `out`; its metrics (cosine to PyTorch on fixed texts)."""
    import torch
    from transformers import AutoTokenizer

    head = read_head(folder)
    model = sentence_model(folder, head)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(CHECK_TEXTS, padding=True, return_tensors="pt")
    traced = work / "traced.onnx"
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"]).numpy()
        torch.onnx.export(model, (batch["input_ids"], batch["attention_mask"]), str(traced), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"], opset_version=17,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}})
    out.mkdir(parents=True, exist_ok=True)
    fused = _optimize(traced, work / "fused.onnx", model.encoder.config)
    if precision == "int8":
        _quantize(fused, out / MODEL_FILE)
    else:
        shutil.copy2(fused, out / MODEL_FILE)
    cosine = _cosines(out / MODEL_FILE, batch, expected)
    if cosine.min() < MIN_COSINE[precision]:
        raise EdgewiseError(f"the exported encoder does not compute the model's embeddings (cosine to PyTorch "
                            f"{cosine.min():.4f}, expected >= {MIN_COSINE[precision]})")
    log.info("check embeddings against PyTorch (%d texts): mean cosine %.6f, min %.6f", len(CHECK_TEXTS),
             cosine.mean(), cosine.min())
    tokenizer.save_pretrained(out)
    settings = {"kind": "embedding", "precision": precision, "dimension": int(expected.shape[1]),
                "pad_id": int(tokenizer.pad_token_id or 0),
                "max_length": int(min(tokenizer.model_max_length, model.encoder.config.max_position_embeddings)),
                **head.to_dict()}
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    (out / "config.json").write_text(model.encoder.config.to_json_string())
    return {"cosine_mean": round(float(cosine.mean()), 6), "cosine_min": round(float(cosine.min()), 6),
            "dimension": settings["dimension"]}


def _optimize(src: Path, dst: Path, config) -> Path:
    """onnxruntime's transformer fusions (for the CPU); the traced graph where they do not apply."""
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        optimized = optimize_model(str(src), model_type="bert", num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size, opt_level=1)
        optimized.save_model_to_file(str(dst))
        counts = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        log.info("fused for the CPU: %s", ", ".join(f"{k} x{v}" for k, v in counts.items()) or "nothing")
        return dst
    except Exception as exc:  # noqa: BLE001 - an architecture the optimizer does not know runs unfused
        log.warning("no transformer fusions for this encoder: %s", str(exc).splitlines()[0])
        return src


def _quantize(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process is for static (calibrated) quantization
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.disable(logging.NOTSET)


def _cosines(model: Path, batch, expected: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"input_ids": batch["input_ids"].numpy(),
                                      "attention_mask": batch["attention_mask"].numpy()})[0]
    return (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))


def sentence_model(folder: Path, head: Head):
    """The encoder with its head as one torch module: (input_ids, attention_mask) -> embedding [batch, dim]."""
    import torch
    from transformers import AutoModel

    from edgewise.models.checkpoint import quiet_transformers

    quiet_transformers()
    # eager attention: onnxruntime's optimizer recognises (and fuses) the attention the TorchScript exporter traces
    encoder = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    dense = [_dense(folder / path) for path in head.dense]
    return _module()(encoder, head, dense).eval()


def _dense(path: Path):
    import torch
    from safetensors.torch import load_file

    config = json.loads((path / "config.json").read_text())
    activation = config.get("activation_function", "torch.nn.modules.linear.Identity").rsplit(".", 1)[-1]
    if activation not in ("Identity", "Tanh"):
        raise EdgewiseError(f"{path}: activation {activation} is not supported (Identity, Tanh)")
    linear = torch.nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
    weights = load_file(path / "model.safetensors") if (path / "model.safetensors").is_file() else \
        torch.load(path / "pytorch_model.bin", weights_only=True)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in weights.items()})
    return torch.nn.Sequential(linear, torch.nn.Tanh() if activation == "Tanh" else torch.nn.Identity())


@functools.cache
def _module():
    import torch

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, encoder, head: Head, dense: list):
            super().__init__()
            self.encoder, self.head, self.dense = encoder, head, torch.nn.ModuleList(dense)

        def forward(self, input_ids, attention_mask):
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            if self.head.pooling == "mean":
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            elif self.head.pooling == "max":
                pooled = states.masked_fill(mask == 0, -1e9).max(1).values
            elif self.head.pooling == "cls":
                pooled = states[:, 0]
            else:  # the last real token of each row (right padding)
                last = attention_mask.sum(1) - 1
                pooled = states[torch.arange(states.shape[0]), last]
            for layer in self.dense:
                pooled = layer(pooled)
            return torch.nn.functional.normalize(pooled, dim=-1) if self.head.normalize else pooled

    return SentenceEncoder
