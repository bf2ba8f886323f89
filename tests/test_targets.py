"""Exports for every GPU target, built and checked on this CPU machine: each family's tiny model with an adapter is
exported for CUDA, DirectML and WebGPU; the LoRA inputs and the adapter take the target's activation type (fp16),
the structural checks pass, a mismatched adapter is refused with one line, an unsupported precision is refused
before any work, and a model for a provider this machine lacks names the package that runs it."""
import json

import numpy as np
import onnx
import pytest
from conftest import TINY, tiny_model
from helpers import assert_user_error, edgewise

from edgewise import engine
from edgewise.core.errors import EdgewiseError
from edgewise.models import onnx_lora
from edgewise.models.checks import check_adapter, check_export, lora_inputs
from edgewise.passes.export import ExportConfig
from edgewise.passes.finetune import FinetuneConfig


@pytest.fixture(scope="module")
def finetuned(tiny, tiny_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("targets-cache")
    config = FinetuneConfig(data_files=str(tiny_data), max_steps=2, lora_r=2, learning_rate=1e-2)
    return engine.run_pass("finetune", engine.folder_artifact(tiny), config, cache), cache


GPU = ("cuda", "dml", "webgpu")
# Every family is built for a GPU target (the builder's fp16 graphs), the targets taking turns; Llama for all three
PAIRS = [(family, device) for i, family in enumerate(TINY) for device in GPU
         if family == "llama" or device == GPU[i % len(GPU)]]


@pytest.fixture(scope="module")
def finetunes(tiny_data, tmp_path_factory):
    """family -> its tiny model finetuned (2 steps), made once per family."""
    made = {}

    def get(family):
        if family not in made:
            cache = tmp_path_factory.mktemp(f"gpu-{family}")
            folder = tiny_model(family, cache / "model")
            config = FinetuneConfig(data_files=str(tiny_data), max_steps=2, lora_r=2, learning_rate=1e-2)
            made[family] = engine.run_pass("finetune", engine.folder_artifact(folder), config, cache), cache
        return made[family]

    return get


@pytest.mark.parametrize("family, device", PAIRS)
def test_gpu_exports_with_an_adapter_pass_the_structural_checks(finetunes, family, device):
    """Every family, built for a GPU target with its adapter."""
    art, cache = finetunes(family)
    out = engine.run_pass("export", art, ExportConfig(device=device), cache)
    model = out.path / "model"
    graph = onnx.load(model / "model.onnx", load_external_data=False).graph
    inputs = lora_inputs(graph)
    assert inputs and {dtype for dtype, _ in inputs.values()} == {"float16"}
    assert {e["dtype"] for e in json.loads((model / onnx_lora.LAYOUT).read_text()).values()} == {"float16"}
    assert len(check_export(model)) == 3
    defaults = [i for i in graph.initializer if i.name.endswith((".lora_A", ".lora_B"))]
    ranks = {d.dims[1] if d.name.endswith(".lora_A") else d.dims[0] for d in defaults}
    assert ranks == ({0} if device == "cuda" else {1})  # WebGPU binds no empty tensor: one column of zeros there
    assert not any(onnx.numpy_helper.to_array(d).any() for d in defaults)
    provider = json.loads((model / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert device in provider["provider_options"][0]


def test_a_mismatched_adapter_is_refused(finetuned, tmp_path):
    art, cache = finetuned
    model = engine.run_pass("export", art, ExportConfig(device="cuda"), cache).path / "model"
    inputs = lora_inputs(onnx.load(model / "model.onnx", load_external_data=False).graph)
    name, (_, dims) = next(iter(inputs.items()))
    shape = [4 if d is None else d for d in dims]
    onnx_lora.write_adapter({name: np.zeros(shape, np.float32)}, tmp_path / "fp32.onnx_adapter", "float")
    with pytest.raises(EdgewiseError, match=rf"tensor {name} is float \[.*\], the model's input is float16"):
        check_adapter(tmp_path / "fp32.onnx_adapter", inputs)
    wrong = [d + 1 if d is not None else 4 for d in dims]
    onnx_lora.write_adapter({name: np.zeros(wrong, np.float32)}, tmp_path / "wide.onnx_adapter", "float16")
    with pytest.raises(EdgewiseError, match="the model's input is float16"):
        check_adapter(tmp_path / "wide.onnx_adapter", inputs)
    done = edgewise("generate", "--model", str(model), "--prompt", "hi")
    assert_user_error(done, "is built for CUDAExecutionProvider, which this machine's onnxruntime-genai cannot run; "
                            "it runs with onnxruntime-genai-cuda", tmp_path / "none")


def test_a_precision_the_target_lacks_is_refused_before_any_work(tmp_path):
    done = edgewise("auto-opt", "-m", "nobody/no-such-model", "--device", "dml", "--precision", "bf16",
                    "-o", str(tmp_path / "out"))
    assert_user_error(done, "precision bf16 is not built for DmlExecutionProvider: use int4, fp16", tmp_path / "out")
    done = edgewise("auto-opt", "-m", "nobody/no-such-model", "--provider", "WebGpuExecutionProvider", "--precision",
                    "int8", "-o", str(tmp_path / "out"))
    assert_user_error(done, "not built for WebGpuExecutionProvider: use int4, fp16, fp32", tmp_path / "out")


def test_lora_inputs_of_another_type_than_the_graph_fail_the_checks(finetuned, tmp_path):
    """The bug the CUDA runtime met: fp32 LoRA inputs inside an fp16 graph ('bound to different types')."""
    art, cache = finetuned
    model = engine.run_pass("export", art, ExportConfig(device="cuda"), cache).path / "model"
    proto = onnx.load(model / "model.onnx")
    for value in proto.graph.input:
        if value.name.endswith((".lora_A", ".lora_B")):
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for init in proto.graph.initializer:
        if init.name.endswith((".lora_A", ".lora_B")):
            init.data_type = onnx.TensorProto.FLOAT
    broken = tmp_path / "broken"
    broken.mkdir()
    onnx.save_model(proto, broken / "model.onnx", save_as_external_data=True, location="model.onnx.data")
    with pytest.raises(EdgewiseError, match="the exported graph does not check|LoRA input .* is float, but"):
        check_export(broken)


def test_a_bounded_context_drops_longrope_control_flow_and_turns_on_cuda_graphs(tmp_path):
    """--context_length within a LongRoPE model's original length: the If that picks long or short factors goes,
    genai_config says the context, and a CUDA export turns on graph capture; past the original, one line."""
    import transformers
    from conftest import tiny_model

    folder = tiny_model("phi3", tmp_path / "phi3")
    config = json.loads((folder / "config.json").read_text())
    key = "rope_parameters" if int(transformers.__version__.split(".")[0]) >= 5 else "rope_scaling"
    config[key] = {**(config.get(key) or {}), "rope_type": "longrope", "type": "longrope",
                   "long_factor": [1.0 + i / 8 for i in range(8)], "short_factor": [1.0] * 8}
    config["original_max_position_embeddings"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    art = engine.folder_artifact(folder)
    full = engine.run_pass("export", art, ExportConfig(device="cuda"), tmp_path / "cache").path / "model"
    assert "If" in {n.op_type for n in onnx.load(full / "model.onnx", load_external_data=False).graph.node}
    model = engine.run_pass("export", art, ExportConfig(device="cuda", context_length=100), tmp_path / "cache")
    model = model.path / "model"
    assert "If" not in {n.op_type for n in onnx.load(model / "model.onnx", load_external_data=False).graph.node}
    genai = json.loads((model / "genai_config.json").read_text())
    assert genai["model"]["context_length"] == genai["search"]["max_length"] == 100
    assert genai["model"]["decoder"]["session_options"]["provider_options"][0]["cuda"]["enable_cuda_graph"] == "1"
    with pytest.raises(EdgewiseError, match="switches to its long factors within --context_length 200"):
        engine.run_pass("export", art, ExportConfig(device="cuda", context_length=200), tmp_path / "cache")


@pytest.mark.parametrize("device", ["dml", "webgpu"])
def test_serving_a_model_for_a_runtime_this_machine_lacks_is_one_line(finetuned, device, tmp_path):
    art, cache = finetuned
    model = engine.run_pass("export", art, ExportConfig(device=device), cache).path / "model"
    done = edgewise("serve", str(model), "--port", "0")  # never batched on the CPU: genai, which lacks the provider
    provider = {"dml": "DmlExecutionProvider", "webgpu": "WebGpuExecutionProvider"}[device]
    assert_user_error(done, f"is built for {provider}, which this machine's onnxruntime-genai cannot run",
                      tmp_path / "none")
