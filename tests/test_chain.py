"""Every pass on tiny Llama and Phi-3 models: quantize -> finetune -> auto-opt -> onnxruntime-genai."""
import json
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgewise import engine
from edgewise.models.checkpoint import load_model, load_tokenizer, read_tensors
from edgewise.models.onnx_lora import ADAPTER_FILE, adapter_tensors, peft_pieces, write_adapter
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


def test_export_keeps_the_exact_int4_values(tiny, cache, tiny_data):
    from edgewise.models.archs import projection_sizes, unpacked

    art = quantized(tiny, cache, tiny_data)
    out = engine.run_pass("export", art, ExportConfig(lm_head_bits=4), cache)
    graph = onnx.load(out.path / "model" / "model.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    tensors = read_tensors(art.path)
    config = load_model(art.path).config
    sizes = projection_sizes(config)
    canonical = {}  # (layer, canonical projection) -> int rows
    for key in [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]:
        parts = {s: tensors[f"{key}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx")}
        q, row = unpack_gptq(parts, 4).q.numpy(), 0
        layer, name = int(key.split(".")[2]), key.split(".")[-1]
        for piece in unpacked(name):
            canonical[(layer, piece)] = q[row:row + sizes[piece]]
            row += sizes[piece]
    checked = 0
    for node in graph.graph.node:
        m = re.match(r"/model/layers\.(\d+)/(attn|mlp)/(\w+)/MatMulNBits", node.name)
        if m:
            ours = np.concatenate([canonical[(int(m[1]), p)] for p in unpacked(m[3])])
            packed_ints = inits[node.input[1]]
            ints = np.stack([packed_ints & 15, packed_ints >> 4], -1).reshape(packed_ints.shape[0], -1)
            assert np.array_equal(ints, ours), node.name
            checked += 1
    assert checked >= 6
    mlp = {m[1] for n in graph.graph.node if (m := re.match(r"/model/layers\.\d+/mlp/(\w+_proj)/", n.name))}
    assert mlp == {"gate_up_proj", "down_proj"}  # the CPU export fuses a separate gate and up (Phi-3 ships them so)


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


def _greedy_torch(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(ids):].tolist()


def _greedy_ort(runtime, ids, adapter, n):
    from edgewise.runtime.sampling import Sampling

    return [t for t, _ in runtime.stream_tokens(ids, adapter, Sampling(max_new_tokens=n))]


def test_fp32_adapter_matches_pytorch_and_zero_adapter_is_the_base(tiny, cache, tiny_data, tmp_path):
    from peft import PeftModel

    ft = finetuned(engine.folder_artifact(tiny), cache, tiny_data)
    assert ft.manifest["metrics"]["train_loss_last"] < ft.manifest["metrics"]["train_loss_first"]
    adapter = ft.path / "adapter"
    out = engine.run_pass("export", engine.folder_artifact(ft.path / "model"),
                          ExportConfig(adapter_path=str(adapter), precision="fp32"), cache)
    model_dir = out.path / "model"
    layout = json.loads((model_dir / "lora_layout.json").read_text())
    cfg = load_model(tiny).config
    zero = {k: (np.zeros_like(v) if k.endswith("lora_B") else v) for k, v in
            adapter_tensors(adapter, layout, cfg).items()}
    write_adapter(zero, tmp_path / "zero.onnx_adapter")
    runtime = Runtime(model_dir, {"travel": model_dir / ADAPTER_FILE, "zero": tmp_path / "zero.onnx_adapter"})
    tok = load_tokenizer(tiny)
    ids = tok.apply_chat_template([{"role": "user", "content": "Where should I go in city 3?"}],
                                  add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    base_tokens = _greedy_ort(runtime, ids, None, 8)
    assert _greedy_ort(runtime, ids, "zero", 8) == base_tokens
    base = load_model(tiny)
    assert _greedy_torch(base, ids, 8) == base_tokens
    peft_model = PeftModel.from_pretrained(load_model(tiny), adapter).eval()
    lora_tokens = _greedy_torch(peft_model, ids, 8)
    assert _greedy_ort(runtime, ids, "travel", 8) == lora_tokens
    assert lora_tokens != base_tokens


def test_int4_chain_with_adapter_on_and_off(tiny, cache, tiny_data):
    q = quantized(tiny, cache, tiny_data)
    ft = finetuned(q, cache, tiny_data)
    assert (ft.path / "model" / "model.safetensors").stat().st_ino == (q.path / "model.safetensors").stat().st_ino
    out = engine.run_pass("export", engine.folder_artifact(ft.path / "model"),
                          ExportConfig(adapter_path=str(ft.path / "adapter")), cache)
    model_dir = out.path / "model"
    assert {"model.onnx", "model.onnx.data", "genai_config.json", ADAPTER_FILE} <= {p.name for p in model_dir.iterdir()}
    runtime = Runtime(model_dir, {"travel": model_dir / ADAPTER_FILE})
    ids = runtime.prompt_ids([{"role": "user", "content": "Where should I go in city 3?"}])
    assert _greedy_ort(runtime, ids, "travel", 6) != _greedy_ort(runtime, ids, None, 6)


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
