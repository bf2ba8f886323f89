"""A CUDA export on the GPU, through onnxruntime-genai-cuda: it loads with its adapter, the adapter changes the greedy
tokens, a zero-B adapter gives the base model's logits, and the logits agree with the CPU int4 export of the same
checkpoint within fp16 error. Needs only onnxruntime-genai(-cuda) and numpy, so it runs where edgewise is not
installed; the exports (each with adapter_weights.onnx_adapter and zero_b.onnx_adapter) are built by edgewise
auto-opt on any machine.
Usage: python bench/gpu_targets.py CUDA_MODEL_DIR CPU_MODEL_DIR [--json OUT.json]"""
import json
import sys

import numpy as np
import onnxruntime_genai as og

PROMPT = [1, 20, 31, 42, 53, 64, 75, 86]  # fixed token ids (any valid ids of the tiny vocabulary)


def logits_and_tokens(model, adapters, name, steps=8):
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(PROMPT) + steps, do_sample=False)
    generator = og.Generator(model, params)
    if name:
        generator.set_active_adapter(adapters, name)
    generator.append_tokens(PROMPT)
    first = np.asarray(generator.get_output("logits"), dtype=np.float32)[0, -1]
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return first, tokens


def measure(folder):
    model = og.Model(folder)
    adapters = og.Adapters(model)
    adapters.load(f"{folder}/adapter_weights.onnx_adapter", "tuned")
    adapters.load(f"{folder}/zero_b.onnx_adapter", "zero")
    return {name: logits_and_tokens(model, adapters, name) for name in (None, "tuned", "zero")}


def main(cuda_dir, cpu_dir, out=None):
    gpu, cpu = measure(cuda_dir), measure(cpu_dir)
    scale = float(np.abs(cpu[None][0]).max())
    result = {
        "device": og.__version__,
        "tokens_base": gpu[None][1], "tokens_adapter": gpu["tuned"][1], "tokens_zero_b": gpu["zero"][1],
        "adapter_changes_tokens": gpu[None][1] != gpu["tuned"][1],
        "zero_b_max_abs_diff": float(np.abs(gpu["zero"][0] - gpu[None][0]).max()),
        "cuda_vs_cpu_max_abs_diff_base": float(np.abs(gpu[None][0] - cpu[None][0]).max()),
        "cuda_vs_cpu_max_abs_diff_adapter": float(np.abs(gpu["tuned"][0] - cpu["tuned"][0]).max()),
        "cpu_logit_scale": scale, "cpu_tokens_base": cpu[None][1], "cpu_tokens_adapter": cpu["tuned"][1],
    }
    print(json.dumps(result, indent=2))
    if out:
        with open(out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], args[3] if len(args) > 3 and args[2] == "--json" else None)
