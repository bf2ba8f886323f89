"""The NPU target (Qualcomm HTP through the QNN execution provider), built and run here in the wheel's HTP
simulator: a tiny quantized Llama with an adapter goes through quantize -> finetune -> auto-opt --device npu ->
onnxruntime-genai with QNN. Every body node is compiled for HTP with CPU fallback disabled; the logits agree with
the CPU int4 model of the same checkpoint within fp16 tolerance (HTP computes float tensors in fp16), with and
without the adapter; the other families pass the same check; what the NPU path cannot do is refused in one line.

Tolerance: max |logit difference| <= 8% of the CPU logits' max |value| (measured 2.3-4.7% on these random models,
whose weights are drawn 7x larger than an init's so that logits are not near-ties), and the greedy token agrees
wherever the CPU model's top two logits are further apart than that."""
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import TINY, tiny_model
from helpers import assert_user_error, edgewise, reg

from edgewise import engine
from edgewise.core.errors import EdgewiseError
from edgewise.models import npu, onnx_lora
from edgewise.passes.export import ExportConfig
from edgewise.passes.finetune import FinetuneConfig
from edgewise.passes.quantize import QuantizeConfig
from edgewise.runtime.sampling import Sampling

pytest.importorskip("onnxruntime_qnn")
TOLERANCE = 0.08
NPU = dict(device="npu", context_length=64, prompt_window=8)
PROMPT = "<|im_start|>user\nWhere should I go in city 3?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def chain(tiny_llama, tiny_data, tmp_path_factory):
    """quantize (RTN int4) -> finetune (LoRA r=4 on q/v) -> the NPU export and the CPU export of the same model."""
    cache = tmp_path_factory.mktemp("npu-cache")
    quant = engine.run_pass("quantize", engine.folder_artifact(tiny_llama), QuantizeConfig(algorithm="rtn"), cache)
    ft = engine.run_pass("finetune", quant, FinetuneConfig(data_files=str(tiny_data), max_steps=4, lora_r=4,
                                                           learning_rate=2e-2), cache)
    npu_out = engine.run_pass("export", ft, ExportConfig(**NPU), cache)
    cpu_out = engine.run_pass("export", ft, ExportConfig(), cache)
    return npu_out.path / "model", cpu_out.path / "model", ft, cache


def runtime(model, adapters=None):
    from edgewise.runtime.genai import Runtime

    return Runtime(model, adapters or {})


def greedy_logits(rt, ids, adapter=None, n=6):
    """The logits before each of n greedy tokens, and the tokens."""
    generator = rt.generator(len(ids) + n, adapter)
    generator.append_tokens(ids)
    logits, tokens = [], []
    for _ in range(n):
        logits.append(np.array(generator.get_logits()).reshape(-1).copy())
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
        if generator.is_done():  # end of sequence
            break
    return np.array(logits), tokens


def forced_logits(rt, ids, tokens, adapter=None):
    """The CPU model's logits along the given tokens."""
    generator = rt.generator(len(ids) + len(tokens) + 1, adapter)
    generator.append_tokens(ids)
    out = []
    for token in tokens:
        out.append(np.array(generator.get_logits()).reshape(-1).copy())
        generator.append_tokens([token])
    return np.array(out)


def assert_close(cpu: np.ndarray, npu_logits: np.ndarray) -> None:
    for a, b in zip(cpu, npu_logits):
        tol = TOLERANCE * np.abs(a).max()
        assert np.abs(a - b).max() <= tol
        top = np.sort(a)[-2:]
        if top[1] - top[0] > tol:
            assert a.argmax() == b.argmax()


def test_the_npu_export_is_a_decoder_pipeline_compiled_for_htp(chain):
    model, _, _, _ = chain
    genai = json.loads((model / "genai_config.json").read_text())
    assert genai["model"]["type"] == "decoder-pipeline" and genai["model"]["context_length"] == 64
    assert genai["search"]["max_length"] == 64 and genai["model"]["pad_token_id"] == genai["model"]["vocab_size"]
    decoder = genai["model"]["decoder"]
    assert decoder["sliding_window"]["window_size"] == 8 and decoder["sliding_window"]["alignment"] == "left"
    stages = decoder["pipeline"][0]
    assert list(stages) == ["embeddings", "context", "iterator", "lm_head"]
    for name in npu.ON_HTP:
        options = stages[name]["session_options"]["provider_options"][0]["QNN"]
        assert options["soc_model"] == "60" and options["htp_arch"] == "73"
        graph = onnx.load(model / stages[name]["filename"], load_external_data=False).graph
        assert {n.op_type for n in graph.node} == {"EPContext"}  # the whole body is one HTP graph
        assert list(model.glob(f"{name}_ctx*.bin"))
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
        assert shapes["past_key_values.0.key"] == [1, 2, 64, 16]
        assert shapes[graph.input[0].name] == [1, 8 if name == "context" else 1, 64]
        assert shapes["model.layers.0.attn.qkv_proj.lora_A"] == [64, 8]  # q and v at rank 4 each: 8, fixed
        types = {i.type.tensor_type.elem_type for i in graph.input if i.name not in (npu.PAST, npu.TOTAL)}
        assert types == {onnx.TensorProto.FLOAT16}  # embeddings, cache and LoRA inputs: the body is fp16
    for name in ("embeddings", "lm_head"):
        assert stages[name]["session_options"]["provider_options"] == []


def test_compiled_graphs_load_on_htp_with_cpu_fallback_disabled(chain):
    from edgewise.runtime import qnn

    model, _, _, _ = chain
    genai = json.loads((model / "genai_config.json").read_text())
    options = genai["model"]["decoder"]["session_options"]["provider_options"][0]["QNN"]
    for name in npu.ON_HTP:
        session = qnn.session(model / f"{name}_ctx.onnx", options)
        assert "past_sequence_length" in [i.name for i in session.get_inputs()]


def test_the_same_int4_integers_as_the_cpu_model(chain, tmp_path):
    """The cut graphs carry the CPU model's MatMulNBits tensors byte for byte (the quantize step's integers)."""
    _, cpu_model, _, _ = chain
    model = onnx.load(cpu_model / "model.onnx")
    genai = json.loads((cpu_model / "genai_config.json").read_text())
    parts = npu.split(model, genai["model"]["decoder"], genai["model"]["vocab_size"], 8, 64, 8)
    cpu = {i.name: i.raw_data for i in model.graph.initializer if "qweight" in i.name or "weight_Q" in i.name}
    cut = {i.name: i.raw_data for part in parts.values() for i in part.graph.initializer if i.name in cpu}
    assert cut.keys() == cpu.keys() and all(cut[k] == cpu[k] for k in cpu)


@pytest.mark.parametrize("with_adapter", [False, True])
def test_npu_logits_match_the_cpu_int4_model(chain, with_adapter):
    model, cpu_model, _, _ = chain
    adapters = {"travel": model / onnx_lora.ADAPTER_FILE} if with_adapter else {}
    cpu_adapters = {"travel": cpu_model / onnx_lora.ADAPTER_FILE} if with_adapter else {}
    adapter = "travel" if with_adapter else None
    rt_npu, rt_cpu = runtime(model, adapters), runtime(cpu_model, cpu_adapters)
    ids = list(rt_cpu.tokenizer.encode(PROMPT))
    npu_logits, tokens = greedy_logits(rt_npu, ids, adapter)
    assert_close(forced_logits(rt_cpu, ids, tokens, adapter), npu_logits)


def test_adapters_switch_per_request_on_the_npu(chain):
    model, _, _, _ = chain
    rt = runtime(model, {"travel": model / onnx_lora.ADAPTER_FILE})
    ids = list(rt.tokenizer.encode(PROMPT))
    base, on, base_again = (greedy_logits(rt, ids, a, n=2)[0] for a in (None, "travel", None))
    assert np.array_equal(base, base_again)
    assert np.abs(base - on).max() > 0.1


def test_every_position_logits_for_perplexity(chain):
    """Perplexity needs every position: the pipeline's prompt goes one window per append."""
    model, cpu_model, _, _ = chain
    rt_npu, rt_cpu = runtime(model), runtime(cpu_model)
    ids = list(rt_cpu.tokenizer.encode(PROMPT))
    a, b = rt_cpu.all_logits(ids), rt_npu.all_logits(ids)
    assert a.shape == b.shape and a.shape[0] == len(ids)
    assert_close(a, b)


def test_generate_chat_and_benchmark_run_the_npu_model(chain):
    model, _, _, _ = chain
    adapter = f"travel={model / onnx_lora.ADAPTER_FILE}"
    done = edgewise("generate", "--model", str(model), "--adapter", adapter, "--prompt", "Where should I go?",
                    "--max_new_tokens", "4")
    assert done.returncode == 0, done.stderr
    done = edgewise("benchmark", str(model), "--adapter", adapter, "--prompt_tokens", "20", "--gen_tokens", "6",
                    "--runs", "1", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)  # the HTP backend's banner does not reach stdout
    assert [r["adapter"] for r in rows] == [None, "travel"] and all(r["decode_tok_s"] > 0 for r in rows)
    done = subprocess.run([sys.executable, "-m", "edgewise", "chat", str(model), "--max_new_tokens", "3"],
                          input="hello\n/exit\n", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr


def test_convert_adapters_pads_to_the_fixed_rank(chain, tmp_path):
    model, _, ft, _ = chain
    done = edgewise("convert-adapters", "--model", str(model), "--adapter_path", f"two={ft.path / 'adapter'}",
                    "--output_path", str(tmp_path))
    assert done.returncode == 0, done.stderr
    import onnxruntime as ort

    params = ort.AdapterFormat.read_adapter(str(tmp_path / "two.onnx_adapter")).get_parameters()
    assert {tuple(v.shape()) for k, v in params.items() if k.endswith("lora_A")} == {(64, 8)}


def test_the_npu_export_is_cached_registered_and_pulled_whole(chain, tmp_path):
    """The chain's guarantees hold: a second run is a cache hit, the manifest has the lineage with the compile
    metrics, and a registry push/pull gives a folder that generates the same answer."""

    model, _, ft, cache = chain
    again = engine.run_pass("export", ft, ExportConfig(**NPU), cache)
    assert again.path / "model" == model
    manifest = json.loads((model.parent / "edgewise.json").read_text())
    assert [s["pass"] for s in manifest["lineage"]] == ["quantize", "finetune", "export"]
    assert set(manifest["metrics"]["npu"]["compiled"]) == {"context", "iterator"}
    assert reg(tmp_path / "reg", "push", str(model.parent), "--name", "npu").stdout.strip() == "npu@1"
    assert reg(tmp_path / "reg", "pull", "npu@1", "--to", str(tmp_path / "got")).returncode == 0
    got = runtime(tmp_path / "got" / "model").generate("Where to?", None, Sampling(max_new_tokens=5))
    assert got == runtime(model).generate("Where to?", None, Sampling(max_new_tokens=5))


def test_the_prompt_must_fit_the_compiled_context(chain):
    model, _, _, _ = chain
    rt = runtime(model)
    with pytest.raises(EdgewiseError, match=r"padded to 64\) and 4 new tokens exceed the model's context of 64"):
        list(rt.stream(list(range(3, 60)), None, Sampling(max_new_tokens=4)))


# HTP's attention has no sliding window: a window as wide as the context changes nothing and is dropped
WIDE_WINDOW = {"gemma2": dict(sliding_window=64), "gemma3_text": dict(sliding_window=64)}
NPU_REFUSED = {"ernie4_5": "this model rotates interleaved pairs of channels (rotary_interleaved)",
               "hunyuan_v1_dense": "this model applies its rotary embedding outside the attention",
               "gemma2": "this model soft-caps its attention scores (attn_logit_softcapping)",
               **dict.fromkeys(("phi", "phi4mini", "nemotron"), "this model rotates only part of each head")}


@pytest.mark.parametrize("family", [f for f in TINY if f != "llama" and f not in NPU_REFUSED])
def test_every_family_runs_on_the_npu(family, tmp_path):
    folder = tiny_model(family, tmp_path / family, **WIDE_WINDOW.get(family, {}))
    art = engine.folder_artifact(folder)
    model = engine.run_pass("export", art, ExportConfig(**NPU), tmp_path / "cache").path / "model"
    cpu_model = engine.run_pass("export", art, ExportConfig(), tmp_path / "cache").path / "model"
    rt_npu, rt_cpu = runtime(model), runtime(cpu_model)
    ids = list(rt_cpu.tokenizer.encode(PROMPT))
    npu_logits, tokens = greedy_logits(rt_npu, ids)
    assert_close(forced_logits(rt_cpu, ids, tokens), npu_logits)


@pytest.mark.parametrize("family", ["ernie4_5", "hunyuan_v1_dense", "gemma2", "phi4mini", "gemma3_text"])
def test_what_htp_attention_cannot_express_is_refused_in_one_line(family, tmp_path):
    message = NPU_REFUSED.get(family, "this model's sliding-window layers attend to the last 16 tokens, which HTP's "
                                      "attention cannot express: use --context_length 16 or less")
    with pytest.raises(EdgewiseError, match=re.escape(message)):
        engine.run_pass("export", engine.folder_artifact(tiny_model(family, tmp_path / family)),
                        ExportConfig(**NPU), tmp_path / "cache")


def test_npu_options_are_checked_before_any_work(tmp_path):
    for flags, message in ((["--precision", "int8"], "precision int8 is not built for QNNExecutionProvider: use "
                                                     "int4, fp32"),
                           (["--prompt_window", "1"], "--prompt_window must be at least 2"),
                           (["--context_length", "64", "--prompt_window", "64"], "--context_length 64 must be at "
                                                                               "least twice --prompt_window")):
        done = edgewise("auto-opt", "-m", "nobody/no-such-model", "--device", "npu", *flags,
                        "--output_path", str(tmp_path / "out"))
        assert_user_error(done, message, tmp_path / "out")


def test_an_adapter_wider_than_the_fixed_rank_is_refused(chain, tmp_path):
    _, _, ft, cache = chain
    with pytest.raises(EdgewiseError, match="the adapter needs LoRA rank 8 .* more than --lora_rank 4"):
        engine.run_pass("export", ft, ExportConfig(**NPU, lora_rank=4), cache)


def test_without_the_qnn_package_the_model_names_it(chain, monkeypatch):
    from edgewise.runtime import genai, qnn

    model, _, _, _ = chain
    monkeypatch.setattr(qnn, "available", lambda: False)
    with pytest.raises(genai.RuntimeMissing, match="built for QNNExecutionProvider, which this machine's "
                                                   "onnxruntime-genai cannot run; it runs with onnxruntime-genai "
                                                   "with onnxruntime-qnn"):
        genai.Runtime(model)


def test_serve_runs_the_npu_model_with_its_adapter(chain):
    """The OpenAI server over an NPU pipeline: one request at a time, each answer equal to onnxruntime-genai's."""
    import signal

    import openai
    from helpers import start_server

    model, _, _, _ = chain
    adapters = {"travel": model / onnx_lora.ADAPTER_FILE}
    rt = runtime(model, adapters)
    proc, url = start_server(model, adapters)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        for name, adapter in (("base", None), ("travel", "travel"), ("base", None)):
            reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Where to?"}],
                                                   max_tokens=6, temperature=0)
            assert reply.choices[0].message.content == rt.generate("Where to?", adapter, Sampling(max_new_tokens=6))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_longrope_compiles_its_short_path_within_the_original_context(tmp_path):
    """Phi-3.5's LongRoPE picks long or short factors with an If; HTP compiles one path, the short one while the
    context stays within original_max_position_embeddings; past it the export is refused in one line."""
    import transformers

    folder = tiny_model("phi3", tmp_path / "phi3")
    config = json.loads((folder / "config.json").read_text())
    factors = [1.0 + i / 8 for i in range(8)]  # head_dim 16: 8 factors
    key = "rope_parameters" if int(transformers.__version__.split(".")[0]) >= 5 else "rope_scaling"
    config[key] = {**(config.get(key) or {}), "rope_type": "longrope", "type": "longrope",
                   "long_factor": factors, "short_factor": [1.0] * 8}
    config["original_max_position_embeddings"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    art = engine.folder_artifact(folder)
    model = engine.run_pass("export", art, ExportConfig(device="npu", context_length=128, prompt_window=8),
                            tmp_path / "cache").path / "model"
    cpu_model = engine.run_pass("export", art, ExportConfig(), tmp_path / "cache").path / "model"
    rt_npu, rt_cpu = runtime(model), runtime(cpu_model)
    ids = list(rt_cpu.tokenizer.encode(PROMPT))
    npu_logits, tokens = greedy_logits(rt_npu, ids)
    assert_close(forced_logits(rt_cpu, ids, tokens), npu_logits)
    with pytest.raises(EdgewiseError, match="switches to its long factors within --context_length 256"):
        engine.run_pass("export", art, ExportConfig(device="npu", context_length=256, prompt_window=8),
                        tmp_path / "cache")


def test_evaluators_run_on_the_npu_model(chain, tiny_data):
    """size, perplexity (adapter on and off), quality and latency on the NPU export; perplexity within the fp16
    tolerance of the CPU int4 export's."""
    from edgewise.engine.evaluate import evaluate
    from edgewise.evaluators.latency import LatencyConfig
    from edgewise.evaluators.perplexity import PerplexityConfig
    from edgewise.evaluators.quality import QualityConfig

    model, cpu_model, _, cache = chain
    npu_art, cpu_art = engine.folder_artifact(model.parent), engine.folder_artifact(cpu_model.parent)
    ppl = PerplexityConfig(data_files=str(tiny_data), max_samples=4, seq_len=48)
    on, cpu_on = (evaluate(a, "perplexity", ppl, cache)["perplexity"] for a in (npu_art, cpu_art))
    off = evaluate(npu_art, "perplexity", PerplexityConfig(data_files=str(tiny_data), max_samples=4, seq_len=48,
                                                           adapter=False), cache)["perplexity"]
    assert abs(on - cpu_on) / cpu_on < 0.05 and abs(on - off) > 1e-2
    from edgewise.evaluators.size import SizeConfig

    assert evaluate(npu_art, "size", SizeConfig(), cache)["size_mb"] > 0
    speed = evaluate(npu_art, "latency", LatencyConfig(prompt_tokens=16, gen_tokens=4, runs=1), cache)
    assert speed["decode_tok_s"] > 0
    quality = evaluate(npu_art, "quality", QualityConfig(data_files=str(tiny_data), max_samples=2, max_new_tokens=4),
                       cache)
    assert quality["answers"] == 2
