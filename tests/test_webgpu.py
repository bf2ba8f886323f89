"""The WebGPU target run for real: a tiny Llama quantized, finetuned and exported with `--device webgpu`, then
loaded and run by onnxruntime-genai on onnxruntime's WebGPU execution provider (Dawn on Vulkan). `make venv` puts
onnxruntime-webgpu in its own site folder (it is an onnxruntime build and cannot share one with the CPU package);
these tests run it in a subprocess and skip where this machine has no WebGPU adapter (a GPU's Vulkan driver, or
Mesa's software Vulkan device, lavapipe)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import start_server

from edgewise import engine
from edgewise.models.onnx_lora import ADAPTER_FILE
from edgewise.passes.export import ExportConfig
from edgewise.passes.finetune import FinetuneConfig
from edgewise.passes.quantize import QuantizeConfig
from edgewise.runtime.genai import Runtime

QUESTION = "Where should I go in city 3?"
SITE = Path(os.environ.get("EDGEWISE_WEBGPU_SITE", Path(sys.prefix) / "webgpu-site"))
PROBE = """
import onnxruntime as ort
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "probe", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
print(ort.InferenceSession(model.SerializeToString(), providers=["WebGpuExecutionProvider"]).get_providers()[0])
"""
RUN = """
import json, sys
import numpy as np
from edgewise.runtime.genai import Runtime
from edgewise.runtime.sampling import Sampling
model, ids = sys.argv[1], json.loads(sys.argv[2])
runtime = Runtime(model, {"travel": model + "/adapter_weights.onnx_adapter"})
out = {}
for adapter in (None, "travel"):
    generator, steps = runtime.generator(len(ids) + 1, adapter), []
    for token in ids:  # one token per run: the decode path
        generator.append_tokens([token])
        steps.append(np.asarray(generator.get_output("logits"))[0, -1].tolist())
    pairs = list(runtime.stream_tokens(ids, adapter, Sampling(max_new_tokens=6)))
    out[str(adapter)] = {"steps": steps, "prompt": runtime.all_logits(ids, adapter).tolist(),
                         "tokens": [t for t, _ in pairs], "text": "".join(p for _, p in pairs)}
print(json.dumps(out))
"""


def webgpu_env() -> dict:
    """This process's environment with onnxruntime-webgpu first on the path, in place of onnxruntime."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")])}


def on_webgpu(*args, script=None) -> subprocess.CompletedProcess:
    """python -c SCRIPT ARGS (or `python -m edgewise ARGS`) on onnxruntime-webgpu."""
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "edgewise", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=webgpu_env(), timeout=600)


@pytest.fixture(scope="module")
def webgpu():
    if not SITE.is_dir():
        pytest.skip(f"no onnxruntime-webgpu site folder at {SITE} (make venv installs it)")
    probe = on_webgpu(script=PROBE)
    # onnxruntime prints its fallback notice, which names the provider, on stdout: the answer is the last line
    if probe.returncode or probe.stdout.strip().splitlines()[-1:] != ["WebGpuExecutionProvider"]:
        pytest.skip("no WebGPU adapter on this machine (a Vulkan driver; on a machine without a GPU, Mesa's lavapipe "
                    "from mesa-vulkan-drivers >= 23)")


@pytest.fixture(scope="module")
def exports(webgpu, tiny_llama, tiny_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("webgpu-cache")
    q = engine.run_pass("quantize", engine.folder_artifact(tiny_llama),
                        QuantizeConfig(data_files=str(tiny_data), num_samples=2, seq_len=32), cache)
    ft = engine.run_pass("finetune", q, FinetuneConfig(data_files=str(tiny_data), max_steps=4, lora_r=4,
                                                       learning_rate=1e-2), cache)
    art, adapter = engine.folder_artifact(ft.path / "model"), str(ft.path / "adapter")
    return {device: engine.run_pass("export", art, ExportConfig(adapter_path=adapter, device=device), cache).path
            / "model" for device in ("webgpu", "cpu")}


@pytest.fixture(scope="module")
def ran(exports):
    """What the WebGPU model computes for one chat prompt, with and without the adapter (run on WebGPU)."""
    cpu = Runtime(exports["cpu"], {"travel": exports["cpu"] / ADAPTER_FILE})
    ids = [int(i) for i in cpu.prompt_ids([{"role": "user", "content": QUESTION}])]
    done = on_webgpu(str(exports["webgpu"]), json.dumps(ids), script=RUN)
    assert done.returncode == 0, done.stderr
    return cpu, ids, json.loads(done.stdout.splitlines()[-1])


def test_the_webgpu_export_runs_on_webgpu_close_to_the_cpu_model(ran):
    cpu, ids, ran = ran
    for adapter in (None, "travel"):  # the base runs on the LoRA inputs' defaults, which WebGPU must bind
        ref, got = cpu.all_logits(ids, adapter), ran[str(adapter)]
        # one token per run, fp16 activations against the CPU model's fp32: within 3% of the logits' range
        # (0.5-2% measured, as the same fp16 graph gives on the CPU execution provider)
        assert np.abs(np.array(got["steps"]) - ref).max() <= 0.03 * np.ptp(ref), adapter
        # a whole prompt in one run: onnxruntime-webgpu 1.27's multi-token attention drifts from the tenth position
        # on (up to 11% measured on lavapipe, where the CPU provider runs the same graph within 2%): bounded here
        # loosely, recorded in BENCHMARKS.md
        assert np.abs(np.array(got["prompt"]) - ref).max() <= 0.2 * np.ptp(ref), adapter
        assert got["tokens"][0] == [t for t, _ in cpu.stream_tokens(ids, adapter)][0], adapter
    assert ran["None"]["tokens"] != ran["travel"]["tokens"]


def test_generate_runs_a_webgpu_model(exports):
    done = on_webgpu("generate", "--model", str(exports["webgpu"]), "--adapter",
                     f"travel={exports['webgpu'] / ADAPTER_FILE}", "--prompt", "Where?",
                     "--max_new_tokens", "4", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert 1 <= len(answer["tokens"]) <= 4 and answer["adapter"] == "travel"


def test_serve_answers_on_webgpu_as_the_runtime_does(exports, ran):
    """`serve` runs a WebGPU model one request at a time through onnxruntime-genai (its batching engine is for the
    CPU and CUDA): the answers over HTTP equal the runtime's."""
    import openai

    model = exports["webgpu"]
    proc, url = start_server(model, {"travel": model / ADAPTER_FILE}, env=webgpu_env())
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        for name, adapter in (("base", "None"), ("travel", "travel")):
            reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": QUESTION}],
                                                   max_tokens=6, temperature=0)
            assert reply.choices[0].message.content == ran[2][adapter]["text"], name
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
