"""Every family of the architecture table on a tiny random model of its own (conftest.TINY): AWQ's scale folding
keeps the function (the table names each group's real producer: norms with offsets and biases, packed rows); then
the chain quantize (AWQ) -> finetune (LoRA on the int4 model) -> auto-opt: the int4 export holds exactly the ints
that quantize chose and its adapter changes the answer; the fp32 export gives PyTorch's logits, with the adapter
PyTorch + PEFT's, and with a zero adapter exactly the base. test_targets.py builds every family for each GPU target,
test_npu.py for the NPU. test_chain.py has the per-algorithm quantize tests."""
import json
import re

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY, tiny_model
from onnx import numpy_helper

from edgewise import engine
from edgewise.models.archs import ARCHS, arch_for, projection_sizes, unpacked
from edgewise.models.checkpoint import load_model, read_tensors
from edgewise.models.onnx_lora import ADAPTER_FILE, adapter_tensors, write_adapter
from edgewise.models.qtensor import unpack_gptq
from edgewise.passes.export import ExportConfig
from edgewise.passes.finetune import FinetuneConfig
from edgewise.passes.quantize import QuantizeConfig
from edgewise.runtime.genai import Runtime


@pytest.fixture(scope="module", params=list(TINY))
def family(request, tmp_path_factory):
    return request.param, tiny_model(request.param, tmp_path_factory.mktemp(request.param))


def test_every_architecture_of_the_table_has_a_tiny_model():
    import transformers

    assert {getattr(transformers, name).model_type for name, _ in TINY.values()} == set(ARCHS)


@pytest.mark.parametrize("kind", list(TINY))
def test_awq_scale_folding_preserves_the_function(kind, tmp_path):
    """Folding any positive per-channel scale into each group (and 1/s into its producer) leaves the model's outputs
    unchanged."""
    from edgewise.quant.layerwise import _fold_scale

    model = load_model(tiny_model(kind, tmp_path / kind))
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    arch = arch_for(model.config)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        gen = torch.Generator().manual_seed(1)
        for layer in model.get_submodule(arch.layers):
            for group in arch.groups:
                if group.prev:
                    width = layer.get_submodule(group.linears[0]).in_features
                    _fold_scale(layer, group, torch.rand(width, generator=gen) * 3 + 0.25, arch)
        after = model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4), (before - after).abs().max()


def exact_ints(quantized, model_dir) -> int:
    """Assert that every MatMulNBits of the export holds the ints of the quantized checkpoint; how many it checked."""
    graph = onnx.load(model_dir / "model.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    tensors = read_tensors(quantized)
    sizes = projection_sizes(load_model(quantized).config)
    canonical = {}  # (layer, graph projection) -> int rows
    for key in [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]:
        parts = {s: tensors[f"{key}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx")}
        q, row = unpack_gptq(parts, 4).q.numpy(), 0
        layer, name = int(key.split(".")[2]), key.split(".")[-1]
        for piece in unpacked(name):
            canonical[(int(layer), piece)] = q[row:row + sizes[piece]]
            row += sizes[piece]
    checked = 0
    for node in graph.graph.node:
        m = re.match(r"/model/layers\.(\d+)/(attn|mlp)/(\w+)/MatMul", node.name)
        if m and node.op_type == "MatMulNBits":
            ours = np.concatenate([canonical[(int(m[1]), p)] for p in unpacked(m[3])])
            packed = inits[node.input[1]]
            ints = np.stack([packed & 15, packed >> 4], -1).reshape(packed.shape[0], -1)[:, :ours.shape[1]]
            assert np.array_equal(ints, ours), node.name
            checked += 1
    return checked


def torch_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


def test_the_chain_on_every_family(family, tiny_data, tmp_path):
    kind, folder = family
    cache = tmp_path / "cache"
    q = engine.run_pass("quantize", engine.folder_artifact(folder),
                        QuantizeConfig(algorithm="awq", data_files=str(tiny_data), num_samples=2, seq_len=32), cache)
    arch = arch_for(load_model(folder).config)
    assert len([k for k in read_tensors(q.path) if k.endswith(".qweight")]) == 2 * len(arch.linears())
    ft = engine.run_pass("finetune", q, FinetuneConfig(data_files=str(tiny_data), max_steps=4, learning_rate=1e-2,
                                                       lora_r=4), cache)
    assert ft.manifest["metrics"]["train_loss_last"] < ft.manifest["metrics"]["train_loss_first"]
    adapter, base = ft.path / "adapter", ft.path / "model"
    ids = list(range(3, 40))

    int4 = engine.run_pass("export", engine.folder_artifact(base), ExportConfig(adapter_path=str(adapter)),
                           cache).path / "model"
    assert exact_ints(q.path, int4) >= 2 * 2  # qkv and o at least, in both layers
    graph = onnx.load(int4 / "model.onnx", load_external_data=False).graph
    mlp = {m[1] for n in graph.node if (m := re.match(r"/model/layers\.\d+/mlp/(\w+)/MatMul", n.name))}
    if {"mlp.gate_proj", "mlp.gate_up_proj"} & set(arch.linears()):
        assert mlp == {"gate_up_proj", "down_proj"}  # the CPU export fuses a separate gate and up (Phi-3 ships them so)
    decoder = json.loads((int4 / "genai_config.json").read_text())["model"]["decoder"]
    assert "sliding_window" not in decoder  # full-length caches: any max_length loads, one layout for serve
    runtime = Runtime(int4, {"travel": int4 / ADAPTER_FILE})
    assert not np.array_equal(runtime.all_logits(ids, "travel"), runtime.all_logits(ids, None))

    fp32 = engine.run_pass("export", engine.folder_artifact(base),
                           ExportConfig(adapter_path=str(adapter), precision="fp32"), cache).path / "model"
    layout = json.loads((fp32 / "lora_layout.json").read_text())
    config = load_model(base).config
    zero = {k: (np.zeros_like(v) if k.endswith("lora_B") else v) for k, v in
            adapter_tensors(adapter, layout, config).items()}
    write_adapter(zero, tmp_path / "zero.onnx_adapter")
    runtime = Runtime(fp32, {"travel": fp32 / ADAPTER_FILE, "zero": tmp_path / "zero.onnx_adapter"})
    ours = {a: runtime.all_logits(ids, a) for a in (None, "zero", "travel")}
    assert np.array_equal(ours["zero"], ours[None])
    from peft import PeftModel

    expected = {None: torch_logits(load_model(base), ids),
                "travel": torch_logits(PeftModel.from_pretrained(load_model(base), adapter).eval(), ids)}
    for a, logits in expected.items():
        scale = np.abs(logits).max()
        assert np.abs(ours[a] - logits).max() <= 1e-4 * max(scale, 1.0), (a, np.abs(ours[a] - logits).max())
    assert np.abs(expected["travel"] - expected[None]).max() > 1e-2  # the adapter really changes the model


def test_the_readme_lists_the_table():
    from pathlib import Path

    from edgewise.models.archs import families_markdown

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- families: generated -->\n")[1].split("<!-- /families -->")[0]
    assert block == families_markdown(), "regenerate README's family table from models/archs.py"


@pytest.mark.parametrize("model_type", ["gpt_oss", "lfm2", "internlm2", "qwen2_5_vl"])
def test_a_refused_family_is_one_line_that_says_why(model_type, tmp_path):
    from helpers import assert_user_error, edgewise

    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    done = edgewise("quantize", "-m", str(folder), "--algorithm", "rtn", "-o", str(tmp_path / "out"))
    assert_user_error(done, f"architecture '{model_type}' is not supported: ", tmp_path / "out")


def test_a_base_model_without_a_chat_template_exports_and_continues_text(tmp_path):
    """Pretrained checkpoints often ship no chat template: the export's load check, generate and the server's prompt
    continue the prompt's text instead of failing on the template."""
    folder = tiny_model("llama", tmp_path / "base")
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    model = engine.run_pass("export", engine.folder_artifact(folder), ExportConfig(precision="fp32"),
                            tmp_path / "cache").path / "model"
    runtime = Runtime(model)
    text = "Visit the old market"
    assert runtime.prompt_ids([{"role": "user", "content": text}]) == list(runtime.tokenizer.encode(text))
    from edgewise.runtime.sampling import Sampling

    assert runtime.generate(text, None, Sampling(max_new_tokens=4))
