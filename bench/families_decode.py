"""Issue 27's speed target, per family: decode speed of edgewise's export (the chain's int4 model with its LoRA
inputs, adapter off and on) against the plain onnxruntime-genai builder's own int4 export of the same checkpoint, on
the CPU, same threads, interleaved in one run (round robin over the models, `--rounds` times).

No public weights of most families are reachable here, so each family gets a random model of one mid size (12
layers, hidden 576, intermediate 1536, 9 heads of 64, 3 KV heads, SmolLM2's 49,152-token vocabulary and tokenizer;
the family's own extras from tests/conftest.TINY, sliding windows widened to 512): speed depends on the shapes and
the graph, not on the weights. The chain is RTN int4 (the decode graph is the same for AWQ or GPTQ) -> LoRA r=16 on
the default targets (2 steps: speed does not depend on what it learned) -> auto-opt. Where the plain builder cannot
export a family (it fails on Gemma 3, OLMo and SmolLM3 as transformers 5 writes them), the baseline is the builder
run through edgewise's fixes with the builder's own defaults (its windowed cache included where the family has one,
so the 512-token sliding window sets a 512-token minimum length: for those families every model gets a prompt of
512 - gen_tokens tokens), and the table says so.

Usage: python bench/families_decode.py [--families llama gemma3_text ...] [--prompt_tokens 128] [--gen_tokens 128]
       [--rounds 3]; prints a Markdown table."""
import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from conftest import TINY  # noqa: E402  (the families' tiny configs: their extras are reused here)
from decode import builder_default  # noqa: E402  (the plain builder's int4 export, as bench/decode.py runs it)

from edgewise import engine  # noqa: E402
from edgewise.models.onnx_lora import ADAPTER_FILE  # noqa: E402
from edgewise.passes.export import ExportConfig  # noqa: E402
from edgewise.passes.finetune import FinetuneConfig  # noqa: E402
from edgewise.passes.quantize import QuantizeConfig  # noqa: E402
from edgewise.runtime.benchmark import one_run, synthetic_prompt  # noqa: E402
from edgewise.runtime.genai import Runtime  # noqa: E402
from edgewise.sources import model as sources  # noqa: E402

SIZE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=9,
            num_key_value_heads=3, head_dim=64, max_position_embeddings=4096)
WINDOW = 512  # the sliding families' window (Gemma 2 and 3 ship 4096 and 512)


def random_model(kind: str, folder: Path, tokenizer_from: Path) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    name, extra = TINY[kind]
    extra = {k: v for k, v in extra.items() if k not in ("num_key_value_heads", "head_dim")}
    if "sliding_window" in extra:
        extra["sliding_window"] = WINDOW
    if "original_max_position_embeddings" in extra:
        extra["original_max_position_embeddings"] = 4096
    for key, value in extra.items():  # per-layer lists (layer types, NoPE layers) repeated over the 12 layers
        if isinstance(value, list) and len(value) == 2:
            extra[key] = value * (SIZE["num_hidden_layers"] // 2)
    tokenizer = json.loads((tokenizer_from / "config.json").read_text())
    config = getattr(transformers, name)(**SIZE, **extra, vocab_size=tokenizer["vocab_size"],
                                         bos_token_id=tokenizer.get("bos_token_id"),
                                         eos_token_id=tokenizer.get("eos_token_id"),
                                         pad_token_id=tokenizer.get("pad_token_id", tokenizer.get("eos_token_id")))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    for file in tokenizer_from.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copy2(file, folder / file.name)
    return folder


def chain(folder: Path, cache: Path) -> dict[int, Path]:
    """The chain's export with its default int8 head, and with the builder's int4 head (--lm_head_bits 4)."""
    q = engine.run_pass("quantize", engine.folder_artifact(folder), QuantizeConfig(algorithm="rtn"), cache)
    ft = engine.run_pass("finetune", q, FinetuneConfig(data_files=str(ROOT / "examples" / "travel.jsonl"),
                                                       max_steps=2, lora_r=16), cache)
    models = {bits: engine.run_pass("export", engine.folder_artifact(ft.path / "model"),
                                    ExportConfig(adapter_path=str(ft.path / "adapter"), lm_head_bits=bits),
                                    cache).path / "model" for bits in (8, 4)}
    return models


def decode_rates(cases: dict, prompt_tokens: int, gen_tokens: int, rounds: int) -> dict[str, float]:
    """Median decode tokens/s of each case, measured round robin."""
    runtimes = {label: Runtime(folder, {"travel": folder / ADAPTER_FILE} if adapter else None)
                for label, (folder, adapter) in cases.items()}
    rates = {label: [] for label in cases}
    for label, rt in runtimes.items():  # warm-up
        one_run(rt, synthetic_prompt(rt, prompt_tokens), gen_tokens, cases[label][1])
    for _ in range(rounds):
        for label, rt in runtimes.items():
            _, steps = one_run(rt, synthetic_prompt(rt, prompt_tokens), gen_tokens, cases[label][1])
            rates[label].append(len(steps) / sum(steps))
    del runtimes
    gc.collect()
    return {label: statistics.median(r) for label, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", nargs="*", default=list(TINY))
    parser.add_argument("--prompt_tokens", type=int, default=128)
    parser.add_argument("--gen_tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tokenizer_from = sources.resolve(None, engine.cache_root())
    print("| family | baseline | baseline tok/s | edgewise off / on (int8 head, default) | off / on vs baseline | "
          "edgewise off / on (`--lm_head_bits 4`) | off / on vs baseline |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind in args.families:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            folder = random_model(kind, tmp / "hf", tokenizer_from)
            ours = chain(folder, tmp / "cache")
            theirs, label = builder_default(folder, tmp / "builder")
            # the builder's windowed caches need prompt + answer to reach the window: every model gets that length
            prompt = max(args.prompt_tokens, WINDOW - args.gen_tokens) if "sliding_window" in TINY[kind][1] else \
                args.prompt_tokens
            rates = decode_rates({"base": (theirs, None),
                                  **{(bits, adapter): (model, adapter) for bits, model in ours.items()
                                     for adapter in (None, "travel")}},
                                 prompt, args.gen_tokens, args.rounds)
        base = rates.pop("base")
        cells = [f"{rates[bits, None]:.1f} / {rates[bits, 'travel']:.1f} | {rates[bits, None] / base:.3f}x / "
                 f"{rates[bits, 'travel'] / base:.3f}x" for bits in (8, 4)]
        print(f"| `{kind}` | {label} | {base:.1f} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
