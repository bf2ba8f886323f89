"""A WebGPU export run on WebGPU (onnxruntime-webgpu in its own site folder, Dawn on Vulkan) next to the CPU int4
export of the same checkpoint: greedy tokens of four travel questions with and without the adapter, and how far the
logits along the CPU model's tokens are apart, one token per run and the whole sequence in one run (% of the CPU
logits' range). Usage: python bench/webgpu.py WEBGPU_MODEL CPU_MODEL [--site .venv/webgpu-site] [--tokens 12]"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgewise.runtime.genai import Runtime
from edgewise.runtime.sampling import Sampling

QUESTIONS = ["What's a must-see in Paris?", "Best way to get around Tokyo?", "Where should I eat in Rome?",
             "Is Lisbon good in winter?"]
ON_WEBGPU = """
import json, sys
import numpy as np
from edgewise.runtime.genai import Runtime
from edgewise.runtime.sampling import Sampling
model, jobs, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
runtime = Runtime(model, {"travel": model + "/adapter_weights.onnx_adapter"})
out = []
for ids, along, adapter in jobs:
    generator, steps = runtime.generator(len(along) + 1, adapter), []
    for token in along:
        generator.append_tokens([token])
        steps.append(np.asarray(generator.get_output("logits"))[0, -1].tolist())
    tokens = [t for t, _ in runtime.stream_tokens(ids, adapter, Sampling(max_new_tokens=n))]
    out.append({"tokens": tokens, "steps": steps, "whole": runtime.all_logits(along, adapter).tolist()})
print(json.dumps(out))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("webgpu_model")
    parser.add_argument("cpu_model")
    parser.add_argument("--site", default=str(Path(sys.prefix) / "webgpu-site"))
    parser.add_argument("--tokens", type=int, default=12)
    args = parser.parse_args()
    cpu = Runtime(args.cpu_model, {"travel": Path(args.cpu_model) / "adapter_weights.onnx_adapter"})
    jobs, refs = [], []
    for question in QUESTIONS:
        ids = [int(i) for i in cpu.prompt_ids([{"role": "user", "content": question}])]
        for adapter in (None, "travel"):
            tokens = [t for t, _ in cpu.stream_tokens(ids, adapter, Sampling(max_new_tokens=args.tokens))]
            along = ids + tokens
            jobs.append((ids, along, adapter))
            refs.append((question, adapter, tokens, cpu.all_logits(along, adapter)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([args.site, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", ON_WEBGPU, args.webgpu_model, json.dumps(jobs), str(args.tokens)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr)
    print("| question | adapter | greedy tokens equal to the CPU model's (first difference) | max logit difference, "
          "one token per run | whole sequence in one run |\n| --- | --- | --- | --- | --- |")
    for (question, adapter, tokens, ref), got in zip(refs, json.loads(done.stdout.splitlines()[-1])):
        first = next((i for i, (a, b) in enumerate(zip(tokens, got["tokens"])) if a != b), None)
        same = sum(a == b for a, b in zip(tokens, got["tokens"])) if first is None else first
        span = np.ptp(ref)
        steps, whole = (np.abs(np.array(got[k]) - ref).max() / span * 100 for k in ("steps", "whole"))
        print(f"| {question} | {adapter or 'base'} | {same}/{len(tokens)}"
              f"{'' if first is None else f' (at {first})'} | {steps:.1f}% | {whole:.1f}% |")


if __name__ == "__main__":
    main()
