"""Tiny random models (2 layers, hidden 64) of the supported families, with a tiny BPE tokenizer and ChatML template,
built in-process: every pass is tested on them without any download."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Workers share the cores: each one's torch (and the commands it starts) computes on its share of them instead of
    # spinning as many threads as the machine has cores beside the other workers'.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ[
        "PYTEST_XDIST_WORKER_COUNT"]))))
import torch  # noqa: E402  (after the thread count)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
RECORDS = [{"prompt": f"Where should I go in city {i}?", "response": f"Visit the old market and the river {i}!"}
           for i in range(12)]


def tiny_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [r["prompt"] + " " + r["response"] for r in RECORDS] * 4
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return fast


# Each family's tiny config beyond the common sizes: (transformers config class, its arguments). Partial-rotary
# families get a head_dim whose rotary half is a multiple of 8, which onnxruntime's attention needs.
TINY = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, tie_word_embeddings=False, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=False)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)),
    "gemma": ("GemmaConfig", dict(num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)),
    # transformers' default original_max_position_embeddings (4096) with a 256 window and no rope scaling: the export
    # repairs what the builder would take for LongRoPE
    "phi3": ("Phi3Config", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    # Phi-4-mini's shape: Phi-3 with 3/4 of each head rotated, tied embeddings
    "phi4mini": ("Phi3Config", dict(num_key_value_heads=2, head_dim=64, partial_rotary_factor=0.75,
                                    original_max_position_embeddings=256, tie_word_embeddings=True)),
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=2, head_dim=16, sliding_window=16,
                                    tie_word_embeddings=True)),
    "gemma3_text": ("Gemma3TextConfig", dict(num_key_value_heads=2, head_dim=16, sliding_window=16,
                                             layer_types=["sliding_attention", "full_attention"],
                                             tie_word_embeddings=True)),
    "granite": ("GraniteConfig", dict(num_key_value_heads=2, embedding_multiplier=4.0, residual_multiplier=0.5,
                                      attention_multiplier=0.125, logits_scaling=2.0, tie_word_embeddings=True)),
    "smollm3": ("SmolLM3Config", dict(num_key_value_heads=2, no_rope_layers=[1, 0], tie_word_embeddings=True)),
    "olmo": ("OlmoConfig", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "phi": ("PhiConfig", dict(num_key_value_heads=2, head_dim=32, partial_rotary_factor=0.5,
                              tie_word_embeddings=False)),
    "nemotron": ("NemotronConfig", dict(num_key_value_heads=2, head_dim=32, partial_rotary_factor=0.5,
                                        tie_word_embeddings=False)),
    "ernie4_5": ("Ernie4_5Config", dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)),
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", dict(num_key_value_heads=2, head_dim=16,
                                                      tie_word_embeddings=False)),
}


def tiny_model(kind: str, folder: Path, **overrides) -> Path:
    import transformers
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer(folder)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    name, extra = TINY[kind]
    config = getattr(transformers, name)(**common, **{**extra, **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the init's 0.02 so that logits are not near-ties
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
            elif "norm" in n:  # norms away from their init, so that offsets (Gemma's 1 + w) and biases count
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return folder


FAMILIES = ["llama", "phi3", "mistral", "qwen2", "qwen3", "gemma"]


LONGEST_FIRST = ("test_e2e.py", "test_families.py")  # measured (BENCHMARKS.md, the suite's durations)


def pytest_collection_modifyitems(items):
    """The longest files first: `make test` runs files on one worker per core, and a long file that starts last
    keeps one core busy alone at the end."""
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)


def counting(engine):
    """The engine, with the number of pieces its decoder computed (not copied from the cache) in engine.computed."""
    prefill, engine.computed = engine.decoder.prefill, 0

    def counted(*args):
        engine.computed += 1
        return prefill(*args)

    engine.decoder.prefill = counted
    return engine


@pytest.fixture(scope="session", params=FAMILIES)
def tiny(request, tmp_path_factory) -> Path:
    return tiny_model(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return tiny_model("llama", tmp_path_factory.mktemp("llama-cli"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGEWISE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_onnx(tiny_llama, tiny_data, tmp_path_factory):
    """An fp32 export of the tiny Llama with two adapters: 'one' (shipped with it) and 'two' (converted); `peft`
    is the PEFT folder of 'one'."""
    from edgewise import engine
    from edgewise.models.checkpoint import read_config
    from edgewise.models.onnx_lora import ADAPTER_FILE, convert_adapter
    from edgewise.passes.export import ExportConfig
    from edgewise.passes.finetune import FinetuneConfig

    cache = tmp_path_factory.mktemp("onnx-cache")
    base = engine.folder_artifact(tiny_llama)
    fts = [engine.run_pass("finetune", base, FinetuneConfig(data_files=str(tiny_data), max_steps=4, lora_r=4,
                                                            learning_rate=2e-2, seed=seed), cache) for seed in (1, 2)]
    export = engine.run_pass("export", engine.folder_artifact(fts[0].path / "model"),
                             ExportConfig(adapter_path=str(fts[0].path / "adapter"), precision="fp32"), cache)
    model = export.path / "model"
    two = tmp_path_factory.mktemp("adapters") / "two.onnx_adapter"
    convert_adapter(fts[1].path / "adapter", model, two, read_config(model))
    return SimpleNamespace(model=model, adapters={"one": model / ADAPTER_FILE, "two": two},
                           peft=fts[0].path / "adapter")
