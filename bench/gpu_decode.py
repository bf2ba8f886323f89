"""GPU decode benchmark (issue 12): a Phi-3.5-mini-shaped model (the real config, random weights) through the lab
chain on one GPU (AWQ int4 g32 -> LoRA finetune -> `auto-opt --device gpu`), next to the plain model builder's own
CUDA int4 model of the same float checkpoint (`-p int4 -e cuda`, its defaults); decode tok/s and TTFT with the adapter
off and on, in interleaved rounds (medians). Offline.

The tokenizer must be one onnxruntime-genai reads and of Phi-3.5's vocabulary size (32,064): `tokenizer` cuts the
default model's byte-level BPE to that size (its first 32,064 tokens and the merges between them).
Usage:
  python bench/gpu_decode.py tokenizer SMOLLM2_DIR OUT_DIR           (anywhere)
  python bench/gpu_decode.py build WORK --tokenizer DIR [--steps 20]  (GPU machine: checkpoint, chain, exports)
  python bench/gpu_decode.py plain WORK                               (GPU machine: the plain builder's model)
  python bench/gpu_decode.py measure WORK [--rounds 4]                (GPU machine: Markdown table on stdout)"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PHI35_VOCAB = 32064
PROMPT, GEN = 128, 128


def cut_tokenizer(src: Path, out: Path, size: int = PHI35_VOCAB) -> None:
    """A BPE of `size` tokens: BPE ids follow merge order, so the first `size` tokens are closed under their merges."""
    tok = json.loads((src / "tokenizer.json").read_text())
    vocab = {t: i for t, i in tok["model"]["vocab"].items() if i < size}
    tok["model"]["vocab"] = vocab
    tok["model"]["merges"] = [m for m in tok["model"]["merges"]
                              if all(p in vocab for p in m) and "".join(m) in vocab]
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < size]
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(tok))
    for name in ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, out / name)


def build(work: Path, tokenizer: Path, steps: int, device: str = "cuda", layers: int | None = None) -> None:
    from gpu_phi35 import build_model, data_file

    from edgewise import engine
    from edgewise.passes.export import ExportConfig
    from edgewise.passes.finetune import FinetuneConfig
    from edgewise.passes.quantize import QuantizeConfig

    folder, cache, data = work / "phi35-random", work / "cache", work / "data.jsonl"
    if not (folder / "config.json").is_file():
        build_model(folder, tokenizer, layers)
    data_file(data, tokenizer)
    awq = engine.run_pass("quantize", engine.folder_artifact(folder),
                          QuantizeConfig(device=device, data_files=str(data)), cache)
    ft = engine.run_pass("finetune", awq, FinetuneConfig(data_files=str(data), max_steps=steps, max_seq_len=256,
                                                         device=device), cache)
    lora = engine.run_pass("export", ft, ExportConfig(device="gpu"), cache)
    without = engine.run_pass("export", awq, ExportConfig(device="gpu"), cache)
    bounded = engine.run_pass("export", ft, ExportConfig(device="gpu", context_length=4096), cache)
    links = {"lora": lora.path / "model", "no_lora": without.path / "model", "bounded": bounded.path / "model"}
    (work / "models.json").write_text(json.dumps({k: str(v) for k, v in links.items()}))


def plain(work: Path) -> None:
    """`python -m onnxruntime_genai.models.builder -p int4 -e cuda` with its defaults, as a user would run it."""
    out = work / "builder"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(work / "phi35-random"), "-o", str(out),
           "-p", "int4", "-e", "cuda", "-c", str(work / "builder_cache")]
    with open(work / "builder.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def with_cuda_graph(folder: Path, out: Path) -> Path:
    """The same model with onnxruntime-genai's CUDA graph capture on (the files linked, genai_config.json edited)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(folder).iterdir():
        if f.name != "genai_config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f)
    cfg = json.loads((Path(folder) / "genai_config.json").read_text())
    for entry in cfg["model"]["decoder"]["session_options"]["provider_options"]:
        if "cuda" in entry:
            entry["cuda"]["enable_cuda_graph"] = "1"
    (out / "genai_config.json").write_text(json.dumps(cfg, indent=4))
    return out


def switching_tokens(runtime, ids) -> list[list[int]]:
    """Greedy tokens with the adapter on, off, on again: CUDA graph replay must follow the active adapter."""
    from edgewise.runtime.sampling import Sampling

    return [list(runtime.stream_tokens(ids, name, Sampling(16))) for name in ("tuned", None, "tuned")]


def engine_speed(decoder, adapter, ids, rows: int = 1):
    """The serving engine (serve/decoder.py, CUDA graphs): TTFT of one prompt and decode tok/s over `rows` slots,
    every other slot on the adapter when rows > 1 (aggregate tokens per second)."""
    import time
    from types import SimpleNamespace

    import numpy as np

    ttfts = []
    for slot in range(rows):
        decoder.assign(slot, adapter if rows == 1 or slot % 2 else None)
        start = time.perf_counter()
        first = int(decoder.prefill(slot, ids).argmax())
        ttfts.append((time.perf_counter() - start) * 1000)
    tokens, lengths = np.full(rows, first), np.full(rows, len(ids))
    tick = time.perf_counter()
    for _ in range(GEN - 1):
        tokens = decoder.decode(tokens, lengths).argmax(axis=-1)
        lengths += 1
    rate = rows * (GEN - 1) / (time.perf_counter() - tick)
    return SimpleNamespace(ttft_ms=ttfts[0], decode_tok_s=rate, as_dict=lambda: {"ttft_ms": ttfts[0], "tok_s": rate})


def measure(work: Path, rounds: int) -> None:
    from edgewise.models.onnx_lora import ADAPTER_FILE
    from edgewise.runtime.benchmark import measure as speed_of
    from edgewise.runtime.genai import Runtime

    models = json.loads((work / "models.json").read_text())
    adapter = {"tuned": Path(models["lora"]) / ADAPTER_FILE}
    lora = Runtime(models["lora"], adapter)
    builder = Runtime(work / "builder")
    cases = [("plain builder int4 CUDA (its defaults)", builder, None),
             ("edgewise lab chain, adapter off", lora, None),
             ("edgewise lab chain, adapter on", lora, "tuned"),
             ("edgewise, same checkpoint without LoRA inputs", Runtime(models["no_lora"]), None)]
    try:
        graph = Runtime(with_cuda_graph(Path(models["lora"]), work / "lora_graph"), adapter)
        ids = list(range(200, 264))
        same = switching_tokens(graph, ids) == switching_tokens(lora, ids)
        print(f"CUDA graph: tokens with the adapter on/off/on equal the plain session's: {same}", flush=True)
        cases += [("plain builder, CUDA graph on", Runtime(with_cuda_graph(work / "builder", work / "b_graph")), None),
                  ("edgewise, CUDA graph on, adapter off", graph, None),
                  ("edgewise, CUDA graph on, adapter on", graph, "tuned")]
    except Exception as exc:  # report what the runtime says and measure the rest
        print(f"CUDA graph: not measured: {str(exc).splitlines()[0]}", flush=True)
    if "bounded" in models:  # --context_length 4096: no LongRoPE If, so onnxruntime-genai can capture graphs
        bounded = Runtime(with_cuda_graph(Path(models["bounded"]), work / "bounded_graph"),
                          {"tuned": Path(models["bounded"]) / ADAPTER_FILE})
        ids = list(range(200, 264))
        same = switching_tokens(bounded, ids) == switching_tokens(lora, ids)
        print(f"bounded context, CUDA graph: tokens with the adapter on/off/on equal the plain session's: {same}",
              flush=True)
        cases += [("edgewise --context_length 4096, genai CUDA graph, adapter off", bounded, None),
                  ("edgewise --context_length 4096, genai CUDA graph, adapter on", bounded, "tuned")]
    from edgewise.serve.decoder import SlotDecoder

    served = SlotDecoder(models["lora"], adapter, slots=16, context=PROMPT + GEN + 8)
    print(f"serving engine: CUDA graphs {'on' if served.graphs else 'off'}", flush=True)
    ids = list(range(300, 300 + PROMPT))
    engine_cases = [("edgewise serve engine, adapter off", 1, None), ("edgewise serve engine, adapter on", 1, "tuned"),
                    ("edgewise serve engine, 16 requests, half on the adapter (aggregate)", 16, "tuned")]
    cases += [(label, None, (rows, name)) for label, rows, name in engine_cases]
    results = {label: [] for label, _, _ in cases}
    for r in range(rounds + 1):  # round 0 warms the GPU clocks and is not counted
        for label, runtime, name in cases:
            if runtime is None:
                speed = engine_speed(served, name[1], ids, name[0])
            else:
                speed = speed_of(runtime, name, PROMPT, GEN, runs=1, warmup=1 if r == 0 else 0)
            if r:
                results[label].append(speed)
            print(f"round {r}: {label}: {speed.decode_tok_s:.1f} tok/s", file=sys.stderr, flush=True)
    med = {label: (statistics.median(s.ttft_ms for s in runs), statistics.median(s.decode_tok_s for s in runs))
           for label, runs in results.items()}
    print(f"| model | TTFT ms ({PROMPT} prompt tokens) | decode tok/s ({GEN} tokens) |\n| --- | --- | --- |")
    for label, (ttft, rate) in med.items():
        print(f"| {label} | {ttft:.1f} | {rate:.1f} |")
    labels = list(med)
    print(f"\nadapter off / plain builder: {med[labels[1]][1] / med[labels[0]][1]:.3f}x (target >= 0.95x)")
    print(f"adapter on / adapter off: {med[labels[2]][1] / med[labels[1]][1]:.3f}x (target >= 0.9x)")
    if "edgewise, CUDA graph on, adapter off" in med:
        print(f"CUDA graph: adapter off / plain builder (defaults): {med[labels[5]][1] / med[labels[0]][1]:.3f}x; "
              f"adapter on / off: {med[labels[6]][1] / med[labels[5]][1]:.3f}x")
    b_off = med.get("edgewise --context_length 4096, genai CUDA graph, adapter off")
    if b_off:
        b_on = med["edgewise --context_length 4096, genai CUDA graph, adapter on"]
        print(f"bounded + genai CUDA graph: adapter off / plain builder: {b_off[1] / med[labels[0]][1]:.3f}x; "
              f"adapter on / off: {b_on[1] / b_off[1]:.3f}x")
    off, on = med["edgewise serve engine, adapter off"][1], med["edgewise serve engine, adapter on"][1]
    print(f"serve engine: adapter off / plain builder: {off / med[labels[0]][1]:.3f}x; adapter on / off: "
          f"{on / off:.3f}x")
    print(json.dumps({label: [s.as_dict() for s in runs] for label, runs in results.items()}), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=("tokenizer", "build", "plain", "measure"))
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--layers", type=int, help="fewer decoder layers (a quick profile)")
    parser.add_argument("--device", default="cuda", help="where quantize and finetune run (cpu: a dry run)")
    args = parser.parse_args()
    if args.step == "tokenizer":
        cut_tokenizer(args.work, args.out)
    elif args.step == "build":
        build(args.work, args.tokenizer, args.steps, args.device, args.layers)
    elif args.step == "plain":
        plain(args.work)
    else:
        measure(args.work, args.rounds)


if __name__ == "__main__":
    main()
