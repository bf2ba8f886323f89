"""The memory-bandwidth bound of decoding: every generated token reads all weights once (the int4 body and the int8
head, which the tied embedding shares) plus the KV cache so far. Bound = measured read bandwidth / bytes per token;
compared with the measured decode speed. Usage: python bench/bandwidth.py MODEL_DIR [--context 192] [--tok_s X]"""
import argparse
import json
import time
from pathlib import Path

import onnx
import torch


def read_bandwidth(gib: float = 1.0, repeats: int = 5, trials: int = 7) -> float:
    """Bytes per second that a parallel reduction reads from main memory (the machine's intra-op threads); the best
    of several trials, since the bound is what the memory can deliver."""
    x = torch.ones(int(gib * 2**30 / 4))
    x.sum()
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            x.sum()
        best = max(best, repeats * x.numel() * 4 / (time.perf_counter() - start))
    return best


def weight_bytes(model_dir: Path) -> int:
    model = onnx.load(model_dir / "model.onnx", load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        location = {e.key: e.value for e in init.external_data}
        total += int(location.get("length", 0)) if location else len(init.raw_data)
    return total


def kv_bytes(model_dir: Path, context: int) -> int:
    cfg = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_size"] * context * 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--context", type=int, default=192, help="average tokens in the KV cache while decoding")
    parser.add_argument("--tok_s", type=float, default=None, help="measured decode speed to compare")
    args = parser.parse_args()
    bandwidth = read_bandwidth()
    weights, kv = weight_bytes(args.model), kv_bytes(args.model, args.context)
    bound = bandwidth / (weights + kv)
    print(f"read bandwidth: {bandwidth / 1e9:.1f} GB/s ({torch.get_num_threads()} threads)")
    print(f"bytes per token: weights {weights / 1e6:.1f} MB + KV cache {kv / 1e6:.1f} MB (context {args.context})")
    print(f"bandwidth bound: {bound:.0f} tok/s")
    if args.tok_s:
        print(f"measured {args.tok_s:.1f} tok/s = {100 * args.tok_s / bound:.0f}% of the bound")


if __name__ == "__main__":
    main()
