"""GPU benchmark (issue 3): a Phi-3.5-mini-shaped model (the real config: 3.8B parameters, LongRoPE; random
weights, a word-level tokenizer of the real vocabulary size) through quantize (AWQ int4 g32) and finetune (LoRA,
100 steps, batch 1, 1024-token examples) on one GPU; wall time and peak GPU memory per step. Offline.
With --tokenizer DIR (a Hugging Face tokenizer onnxruntime-genai can read, e.g. the default model's), that tokenizer
and its vocabulary size are used instead, so that the exported model can be loaded (the word-level one cannot).
Usage: python bench/gpu_phi35.py WORK_DIR [--steps 100] [--skip_export] [--tokenizer DIR]"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from edgewise import engine
from edgewise.passes.export import ExportConfig
from edgewise.passes.finetune import FinetuneConfig
from edgewise.passes.quantize import QuantizeConfig

PHI35 = dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=32, max_position_embeddings=131072, original_max_position_embeddings=4096,
             rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000,
             pad_token_id=32000, sliding_window=262144)


def word_tokenizer(folder: Path):
    """A word-level tokenizer with Phi-3.5's vocabulary size: token i is the word w{i}."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {"<unk>": 0, "<s>": 1, "<|endoftext|>": 32000, "<|assistant|>": 32001, "<|end|>": 32007,
                "<|user|>": 32010}
    taken = set(specials.values())
    vocab = {f"w{i}": i for i in range(PHI35["vocab_size"]) if i not in taken} | specials
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>", "<|end|>"])
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    fast.save_pretrained(folder)


def build_model(folder: Path, tokenizer: Path | None, layers: int | None = None) -> None:
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    shape = dict(PHI35, num_hidden_layers=layers or PHI35["num_hidden_layers"])
    if tokenizer:
        tok = AutoTokenizer.from_pretrained(tokenizer)
        tok.save_pretrained(folder)
        shape.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    short = [1.0] * 48
    long = [1.0 + i / 48 for i in range(48)]
    config = Phi3Config(**shape, rope_scaling={"type": "longrope", "short_factor": short, "long_factor": long})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Phi3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    if not tokenizer:
        word_tokenizer(folder)
    del model
    torch.cuda.empty_cache()


def data_file(path: Path, tokenizer: Path | None, n: int = 64, words: int = 1000) -> None:
    """n records of about `words` tokens each (random tokens)."""
    g = torch.Generator().manual_seed(0)
    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        text = lambda ids: tok.decode(ids)  # noqa: E731
        high = len(tok) - 100
    else:
        text, high = (lambda ids: " ".join(f"w{i}" for i in ids)), 32000  # noqa: E731
    with path.open("w") as f:
        for _ in range(n):
            ids = torch.randint(100, high, (words,), generator=g).tolist()
            f.write(json.dumps({"prompt": text(ids[:24]), "response": text(ids[24:])}) + "\n")


def timed(label, fn, rows):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    out = fn()
    torch.cuda.synchronize()
    rows.append((label, time.time() - start, torch.cuda.max_memory_allocated() / 2**30))
    print(f"{label}: {rows[-1][1]:.1f} s, peak {rows[-1][2]:.1f} GiB", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--skip_export", action="store_true")
    parser.add_argument("--tokenizer", type=Path, default=None)
    args = parser.parse_args()
    folder, cache, rows = args.work / "phi35-random", args.work / "cache", []
    if not (folder / "config.json").is_file():
        timed("build random model (not a pass)", lambda: build_model(folder, args.tokenizer), rows)
    data_file(args.work / "data.jsonl", args.tokenizer)
    base = engine.folder_artifact(folder)
    awq = timed("quantize (AWQ int4 g32, 16x512 calibration tokens)", lambda: engine.run_pass(
        "quantize", base, QuantizeConfig(device="cuda", data_files=str(args.work / "data.jsonl")), cache), rows)
    ft_cfg = FinetuneConfig(data_files=str(args.work / "data.jsonl"), max_steps=args.steps, max_seq_len=1024,
                            device="cuda", target_modules="qkv_proj,o_proj", lora_r=64, lora_alpha=128)
    ft = timed(f"finetune ({args.steps} steps, batch 1 x 1024 tokens, LoRA r64 qkv/o)", lambda: engine.run_pass(
        "finetune", awq, ft_cfg, cache), rows)
    if not args.skip_export:
        timed("auto-opt (int4 CPU export + adapter + load check)", lambda: engine.run_pass(
            "export", engine.folder_artifact(ft.path / "model"), ExportConfig(adapter_path=str(ft.path / "adapter")),
            cache), rows)
    device = torch.cuda.get_device_name()
    print(f"| step ({device}) | wall s | peak GPU GiB |\n| --- | --- | --- |")
    for label, seconds, peak in rows:
        print(f"| {label} | {seconds:.1f} | {peak:.1f} |")
    for step in (awq, ft):
        print(json.dumps(step.manifest["metrics"]), file=sys.stderr)
    subprocess.run(["nvidia-smi", "--query-gpu=name,memory.used", "--format=csv"], check=False)


if __name__ == "__main__":
    main()
