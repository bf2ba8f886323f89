"""NPU benchmark in simulation (issue 13): an `auto-opt --device npu` model run by onnxruntime-genai with the QNN
execution provider's HTP backend, which on x86 Linux simulates the chip, next to the CPU int4 model of the same
checkpoint. Per prompt, with the adapter off and on: the first N greedy tokens of both, how many agree, the largest
logit difference along the NPU's tokens (relative to the CPU logits' largest magnitude), and the simulation's prefill
and per-token seconds; then the compile time and context-binary sizes from the export's manifest.
Simulation speed says nothing about the chip's speed: the simulator executes HTP instructions on these cores.
Usage: python bench/npu_sim.py NPU_MODEL CPU_MODEL [--tokens 12]   (Markdown on stdout)"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgewise.models.onnx_lora import ADAPTER_FILE
from edgewise.runtime.genai import Runtime

PROMPTS = ["What is the capital of France?", "What's a must-see in Paris?"]


def npu_run(rt: Runtime, ids, adapter, n):
    """Greedy tokens, the logits before each, prefill seconds and per-token seconds."""
    start = time.perf_counter()
    generator = rt.generator(len(ids) + n, adapter)
    generator.append_tokens(ids)
    logits = [np.array(generator.get_logits()).reshape(-1).copy()]
    prefill = time.perf_counter() - start
    tokens, steps = [], []
    for i in range(n):
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
        if generator.is_done() or i == n - 1:
            break
        tick = time.perf_counter()
        logits.append(np.array(generator.get_logits()).reshape(-1).copy())
        steps.append(time.perf_counter() - tick)
    return tokens, np.array(logits), prefill, steps


def cpu_logits_along(rt: Runtime, ids, adapter, forced):
    """The CPU model's logits along the NPU's tokens."""
    generator = rt.generator(len(ids) + len(forced) + 1, adapter)
    generator.append_tokens(ids)
    logits = []
    for token in forced:
        logits.append(np.array(generator.get_logits()).reshape(-1).copy())
        generator.append_tokens([token])
    return np.array(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("npu_model", type=Path)
    parser.add_argument("cpu_model", type=Path)
    parser.add_argument("--tokens", type=int, default=12)
    args = parser.parse_args()
    from edgewise.runtime.sampling import Sampling

    adapters = {"adapter": args.npu_model / ADAPTER_FILE} if (args.npu_model / ADAPTER_FILE).is_file() else {}
    cpu_adapters = {"adapter": args.cpu_model / ADAPTER_FILE} if adapters else {}
    npu, cpu = Runtime(args.npu_model, adapters), Runtime(args.cpu_model, cpu_adapters)
    print("| prompt | adapter | NPU tokens = CPU int4 tokens | max logit diff / max logit | prefill s (sim) | "
          "s/token (sim) |\n| --- | --- | --- | --- | --- | --- |")
    for prompt in PROMPTS:
        ids = cpu.prompt_ids([{"role": "user", "content": prompt}])
        for adapter in [None, *adapters]:
            tokens, npu_logits, prefill, steps = npu_run(npu, ids, adapter, args.tokens)
            own = [t for t, _ in cpu.stream_tokens(ids, adapter, Sampling(max_new_tokens=len(tokens)))]
            cpu_logits = cpu_logits_along(cpu, ids, adapter, tokens)
            same = next((i for i, (a, b) in enumerate(zip(tokens, own)) if a != b), min(len(tokens), len(own)))
            rel = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(cpu_logits, npu_logits))
            print(f"| {prompt} ({len(ids)} tokens) | {adapter or 'none'} | first {same} of {len(tokens)} "
                  f"({'all' if same == len(tokens) == len(own) else 'differ after'}) | {rel:.4f} | {prefill:.1f} | "
                  f"{np.median(steps) if steps else float('nan'):.2f} |", flush=True)
    manifest = json.loads((args.npu_model.parent / "edgewise.json").read_text())
    metrics = next(s["metrics"] for s in manifest["lineage"] if "npu" in s.get("metrics", {}))["npu"]
    for name, part in metrics["compiled"].items():
        sizes = ", ".join(f"{b} {n / 2**20:.1f} MiB" for b, n in part["binaries"].items())
        print(f"\ncompile {name}: {part['seconds']} s, {sizes}", end="")
    print(f"\ncontext {metrics['context_length']}, prompt window {metrics['prompt_window']}", file=sys.stdout)


if __name__ == "__main__":
    main()
