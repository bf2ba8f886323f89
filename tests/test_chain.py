"""The passes' own properties on tiny models: every algorithm's checkpoint loads as exactly its dequantized ints (six
families, packed Phi-3 included), the CPU export's fused gate/up changes no logit, packed and split adapters map to
the same inputs. The chain itself runs once per family in test_families.py."""
import json

import numpy as np
import pytest
import torch

from edgewise import engine
from edgewise.models.checkpoint import load_model, read_tensors
from edgewise.models.onnx_lora import ADAPTER_FILE, adapter_tensors, peft_pieces
from edgewise.models.qtensor import unpack_gptq
from edgewise.passes.export import ExportConfig
from edgewise.passes.finetune import FinetuneConfig
from edgewise.passes.quantize import QuantizeConfig
from edgewise.runtime.genai import Runtime


def quantized(tiny, cache, data, algorithm="awq"):
    art = engine.folder_artifact(tiny)
    cfg = QuantizeConfig(algorithm=algorithm, data_files=str(data), num_samples=2, seq_len=32)
    return engine.run_pass("quantize", art, cfg, cache)


def finetuned(art, cache, data, steps=4, **kw):
    cfg = FinetuneConfig(data_files=str(data), max_steps=steps, learning_rate=1e-2, lora_r=4, **kw)
    return engine.run_pass("finetune", art, cfg, cache)


@pytest.mark.parametrize("algorithm", ["awq", "gptq", "rtn"])
def test_quantize_loads_as_exactly_dequantized_ints(tiny, cache, tiny_data, algorithm):
    art = quantized(tiny, cache, tiny_data, algorithm)
    qconfig = json.loads((art.path / "config.json").read_text())["quantization_config"]
    assert qconfig["quant_method"] == "gptq" and qconfig["bits"] == 4 and qconfig["quantizer"] == [f"edgewise:{algorithm}"]
    tensors = read_tensors(art.path)
    model = load_model(art.path)
    qkeys = [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]
    assert len(qkeys) == 2 * (4 if "phi3" in str(tiny) else 7)
    for prefix in qkeys:
        parts = {s: tensors[f"{prefix}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx")}
        assert torch.equal(model.get_submodule(prefix).weight, unpack_gptq(parts, 4).dequantize())
    assert art.manifest["pass"] == "quantize"
    again = quantized(tiny, cache, tiny_data, algorithm)
    assert again.path == art.path  # cached


def test_fused_gate_up_gives_the_same_logits_with_and_without_its_adapter(tiny_llama, tmp_path, tiny_data,
                                                                          monkeypatch):
    from edgewise.models import fusion

    cache = tmp_path / "cache"
    ft = finetuned(quantized(tiny_llama, cache, tiny_data), cache, tiny_data, target_modules="gate_proj,up_proj,q_proj")
    art = engine.folder_artifact(ft.path / "model")
    config = ExportConfig(adapter_path=str(ft.path / "adapter"))
    fused = engine.run_pass("export", art, config, cache).path / "model"
    monkeypatch.setattr(fusion, "fuse_gate_up", lambda model: 0)
    plain = engine.run_pass("export", art, config, tmp_path / "plain").path / "model"
    names = {json.dumps(sorted(json.loads((d / "lora_layout.json").read_text()))) for d in (fused, plain)}
    assert len(names) == 2 and "gate_up_proj" in next(n for n in names if "gate_up" in n)
    ids = list(range(3, 40))
    for adapter in (None, "travel"):
        logits = [Runtime(d, {"travel": d / ADAPTER_FILE}).all_logits(ids, adapter) for d in (fused, plain)]
        assert np.array_equal(*logits), adapter
    tuned = Runtime(fused, {"travel": fused / ADAPTER_FILE})
    assert not np.array_equal(tuned.all_logits(ids, "travel"), tuned.all_logits(ids, None))


def test_packed_and_split_adapters_map_to_the_same_inputs(tmp_path):
    """A PEFT qkv_proj adapter (Phi-3) splits by rows onto q/k/v with one shared A."""
    from safetensors.numpy import save_file
    from transformers import Phi3Config

    cfg = Phi3Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                     num_hidden_layers=1)
    a, b = np.random.rand(4, 64).astype(np.float32), np.random.rand(192, 4).astype(np.float32)
    folder = tmp_path / "ad"
    folder.mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight": a,
               "base_model.model.model.layers.0.self_attn.qkv_proj.lora_B.weight": b}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"lora_alpha": 8, "r": 4, "target_modules": ["qkv_proj"]}))
    pieces = peft_pieces(folder, cfg)
    assert set(pieces) == {(0, "q_proj"), (0, "k_proj"), (0, "v_proj")}
    layout = {"model.layers.0.attn.qkv_proj": {"layer": 0, "in": 64, "out": 192,
                                               "covers": {"q_proj": [0, 64], "k_proj": [64, 64], "v_proj": [128, 64]}}}
    t = adapter_tensors(folder, layout, cfg)
    big_a, big_b = t["model.layers.0.attn.qkv_proj.lora_A"], t["model.layers.0.attn.qkv_proj.lora_B"]
    assert big_a.shape == (64, 4)  # the shared A is not repeated
    np.testing.assert_allclose(big_a @ big_b, (a.T @ b.T) * 2, rtol=1e-5)
