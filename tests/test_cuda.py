"""The GPU path (skipped without CUDA; run on the GPU machine): quantize and finetune on cuda in bf16 give a valid
checkpoint and an adapter that learns, and AWQ on the GPU stays as close to fp32 as on the CPU."""
import pytest
import torch
from conftest import counting

from edgewise import engine
from edgewise.models.checkpoint import load_model, read_tensors
from edgewise.models.qtensor import unpack_gptq
from edgewise.passes.finetune import FinetuneConfig
from edgewise.passes.quantize import QuantizeConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _logits(folder, ids):
    with torch.no_grad():
        return load_model(folder)(input_ids=ids).logits


@pytest.mark.parametrize("algorithm", ["awq", "gptq", "rtn"])
def test_quantize_on_cuda_matches_cpu_quality(tiny, cache, tiny_data, algorithm):
    art = engine.folder_artifact(tiny)
    results = {}
    for device in ("cpu", "cuda"):
        cfg = QuantizeConfig(algorithm=algorithm, data_files=str(tiny_data), num_samples=2, seq_len=32, device=device)
        results[device] = engine.run_pass("quantize", art, cfg, cache)
    gpu = results["cuda"].path
    tensors = read_tensors(gpu)
    model = load_model(gpu)
    for prefix in [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]:
        parts = {s: tensors[f"{prefix}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx")}
        assert torch.equal(model.get_submodule(prefix).weight, unpack_gptq(parts, 4).dequantize())
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = _logits(tiny, ids)
    err = {d: (_logits(r.path, ids) - ref).pow(2).mean().item() for d, r in results.items()}
    assert err["cuda"] < 1.5 * err["cpu"] + 1e-3, err


def test_finetune_on_cuda_learns(tiny, cache, tiny_data):
    art = engine.folder_artifact(tiny)
    cfg = FinetuneConfig(data_files=str(tiny_data), max_steps=8, lora_r=4, learning_rate=1e-2, device="cuda")
    metrics = engine.run_pass("finetune", art, cfg, cache).manifest["metrics"]
    assert metrics["train_loss_last"] < metrics["train_loss_first"]


def test_cuda_export_with_an_adapter_runs_in_onnxruntime_genai_cuda(tiny_llama, cache, tiny_data, tmp_path):
    """Needs onnxruntime-genai-cuda too: the CUDA export loads with its fp16 adapter, the adapter changes the greedy
    tokens, and a zero-B adapter gives the base model's tokens (bench/gpu_targets.py also compares logits)."""
    import numpy as np
    import onnxruntime as ort

    from edgewise.models import onnx_lora
    from edgewise.passes.export import ExportConfig
    from edgewise.runtime.genai import Runtime, RuntimeMissing
    from edgewise.runtime.sampling import Sampling

    ft = engine.run_pass("finetune", engine.folder_artifact(tiny_llama), FinetuneConfig(
        data_files=str(tiny_data), max_steps=8, lora_r=4, learning_rate=0.05), cache)
    model = engine.run_pass("export", ft, ExportConfig(device="cuda"), cache).path / "model"
    fmt = ort.AdapterFormat.read_adapter(str(model / onnx_lora.ADAPTER_FILE))
    arrays = {k: np.array(v.numpy(), copy=True) for k, v in fmt.get_parameters().items()}
    zero = {k: np.zeros_like(v) if k.endswith("lora_B") else v for k, v in arrays.items()}
    onnx_lora.write_adapter(zero, tmp_path / "zero.onnx_adapter", "float16")
    try:
        runtime = Runtime(model, {"tuned": model / onnx_lora.ADAPTER_FILE, "zero": tmp_path / "zero.onnx_adapter"})
    except RuntimeMissing:
        pytest.skip("onnxruntime-genai-cuda is not installed")
    ids = runtime.prompt_ids([{"role": "user", "content": "Where should I go in city 3?"}])
    answers = {name: list(runtime.stream_tokens(ids, name, Sampling(8))) for name in (None, "tuned", "zero")}
    assert answers["tuned"] != answers[None] and answers["zero"] == answers[None]


def test_a_bounded_cuda_export_captures_cuda_graphs_and_follows_the_adapter(tiny_llama, cache, tiny_data):
    """--context_length on a CUDA export turns on onnxruntime-genai's CUDA graph capture: the greedy tokens with the
    adapter on, off, on (a new generator each) equal those of the same export without graphs."""
    from edgewise.models import onnx_lora
    from edgewise.passes.export import ExportConfig
    from edgewise.runtime.genai import Runtime, RuntimeMissing
    from edgewise.runtime.sampling import Sampling

    ft = engine.run_pass("finetune", engine.folder_artifact(tiny_llama), FinetuneConfig(
        data_files=str(tiny_data), max_steps=8, lora_r=4, learning_rate=0.05), cache)
    bounded = engine.run_pass("export", ft, ExportConfig(device="cuda", context_length=128), cache).path / "model"
    plain = engine.run_pass("export", ft, ExportConfig(device="cuda"), cache).path / "model"
    try:
        runs = [Runtime(m, {"tuned": m / onnx_lora.ADAPTER_FILE}) for m in (bounded, plain)]
    except RuntimeMissing:
        pytest.skip("onnxruntime-genai-cuda is not installed")
    ids = runs[1].prompt_ids([{"role": "user", "content": "Where should I go in city 3?"}])
    tokens = [[list(rt.stream_tokens(ids, name, Sampling(8))) for name in ("tuned", None, "tuned")] for rt in runs]
    assert tokens[0] == tokens[1] and tokens[0][0] != tokens[0][1]


def test_the_serving_engine_on_cuda_replays_graphs_per_batch_and_follows_each_rows_adapter(tiny_llama, cache,
                                                                                            tiny_data):
    """The batching server's decoder on the CUDA export: CUDA graphs (one per batch size) replay with the adapter
    each slot holds, the same greedy tokens as without graphs and as onnxruntime-genai-cuda; rows decoded together
    give each row's logits alone within fp16 tolerance."""
    import numpy as np

    from edgewise.models import onnx_lora
    from edgewise.passes.export import ExportConfig
    from edgewise.serve.decoder import SlotDecoder
    from edgewise.runtime.genai import Runtime, RuntimeMissing
    from edgewise.runtime.sampling import Sampling

    ft = engine.run_pass("finetune", engine.folder_artifact(tiny_llama), FinetuneConfig(
        data_files=str(tiny_data), max_steps=8, lora_r=4, learning_rate=0.05), cache)
    model = engine.run_pass("export", ft, ExportConfig(device="cuda"), cache).path / "model"
    adapters = {"tuned": model / onnx_lora.ADAPTER_FILE}
    graphs, plain = (SlotDecoder(model, adapters, slots=4, context=96, graphs=g) for g in (True, False))
    assert graphs.graphs and not plain.graphs
    try:
        runtime = Runtime(model, adapters)
    except RuntimeMissing:
        pytest.skip("onnxruntime-genai-cuda is not installed")
    prompts = [runtime.prompt_ids([{"role": "user", "content": f"Where should I go in city {i}?"}]) for i in range(4)]

    def alone(decoder, ids, adapter, n=8):
        decoder.assign(0, adapter)
        logits = [decoder.prefill(0, ids)]
        tokens, length = [int(logits[0].argmax())], len(ids)
        while len(tokens) < n:
            logits.append(decoder.decode(np.array([tokens[-1]]), np.array([length]))[0].copy())
            tokens.append(int(logits[-1].argmax()))
            length += 1
        return tokens, np.stack(logits).astype(np.float32)

    for adapter in (None, "tuned", None, "tuned"):  # replays follow the slot's adapter both ways
        reference = [token for token, _ in runtime.stream_tokens(prompts[0], adapter, Sampling(8))]
        with_graphs = alone(graphs, prompts[0], adapter)[0]
        assert with_graphs == alone(plain, prompts[0], adapter)[0] and with_graphs[:len(reference)] == reference
    cases = list(zip(prompts, (None, "tuned", "tuned", None)))
    singles = [alone(graphs, ids, adapter) for ids, adapter in cases]
    tokens, lengths = [], []
    for slot, (ids, adapter) in enumerate(cases):
        graphs.assign(slot, adapter)
        tokens.append(int(graphs.prefill(slot, ids).argmax()))
        lengths.append(len(ids))
    for step in range(1, 8):
        feed = [single[0][step - 1] for single in singles]  # teacher-forced: compare logits row by row
        logits = graphs.decode(np.array(feed), np.array(lengths)).astype(np.float32)
        for slot, single in enumerate(singles):
            scale = np.abs(single[1][step]).max()
            assert np.abs(logits[slot] - single[1][step]).max() <= 2e-2 * scale + 1e-2, (step, slot)
            lengths[slot] += 1


def test_the_prompt_cache_on_cuda_stays_on_the_device_and_changes_no_answer(tiny_llama, cache, tiny_data):
    """The server's prompt cache on a CUDA export: pieces are saved and written back on the GPU, a repeated prompt
    needs no forward pass, and every answer equals the one computed without a cache."""
    import numpy as np

    from edgewise.models import onnx_lora
    from edgewise.passes.export import ExportConfig
    from edgewise.serve.batching import Batcher, Job
    from edgewise.serve.decoder import SlotDecoder
    from edgewise.runtime.sampling import Sampling

    ft = engine.run_pass("finetune", engine.folder_artifact(tiny_llama), FinetuneConfig(
        data_files=str(tiny_data), max_steps=8, lora_r=4, learning_rate=0.05), cache)
    model = engine.run_pass("export", ft, ExportConfig(device="cuda"), cache).path / "model"
    adapters = {"tuned": model / onnx_lora.ADAPTER_FILE}
    rng = np.random.default_rng(0)
    head = rng.integers(3, 200, 12).tolist()
    cases = [(head + rng.integers(3, 200, 9 + 5 * i).tolist(), (None, "tuned")[i % 2]) for i in range(4)]

    def answers(cache_bytes):
        decoder = SlotDecoder(model, adapters, slots=2, context=128)
        decoder.prefill_chunk = 8
        batcher = counting(Batcher(decoder, eos=set(), cache_bytes=cache_bytes, prefix=head))
        try:
            runs = [[list(batcher.submit(Job(ids, adapter, Sampling(6))).results()) for ids, adapter in cases]
                    for _ in range(2)]
            return runs, batcher.computed, batcher.cache
        finally:
            batcher.close()

    (first, again), computed, kept = answers(2**20)
    (cold, _), computed_cold, _ = answers(0)
    assert first == again == cold
    assert computed < computed_cold / 2  # the second round and the shared head came from the cache
    entry = next(iter(kept.entries.values()))
    assert entry.kv[0][0].value.device_name() == "cuda"
