"""What one LoRA target costs at decode on the GPU, whatever the runtime (issue 12): the three operations of
y + (x A) B at the Phi-3.5-mini shape (hidden 3072, rank 16; qkv_proj 3072 -> 9216, o_proj 3072 -> 3072), each
replayed 64 times inside one CUDA graph (32 layers x 2 targets), fp16, batch 1, through PyTorch's cuBLAS. Variants
of the x A product (the transposed layout, a matrix-vector call, a split of K into 8 with a sum, an elementwise
product with a reduction) and of the B product with its add (addmm, one call with beta = 1). Runs on the GPU
machine's own PyTorch; no onnxruntime needed.

Usage: python bench/gpu_lora_floor.py            (prints microseconds per call, best of 5 x 200 replays)"""
import time

import torch

H, R, N, CALLS = 3072, 16, 9216, 64


def timed(fn) -> float:
    """Microseconds per call of fn's body, replayed as one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(200):
            graph.replay()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - began) / 200)
    return best / CALLS * 1e6


def main() -> None:
    torch.manual_seed(0)
    f16 = dict(device="cuda", dtype=torch.float16)
    a = [torch.randn(H, R, **f16) * 0.02 for _ in range(CALLS)]
    a_t = [m.t().contiguous() for m in a]
    b = [torch.randn(R, N, **f16) * 0.02 for _ in range(CALLS)]
    x, xa, y = torch.randn(1, H, **f16), torch.randn(1, R, **f16), torch.randn(1, N, **f16)
    out = [None]

    def each(op, weights):
        return lambda: [out.__setitem__(0, op(w)) for w in weights]

    cases = {
        "x A (A stored [in, rank])": each(lambda m: x @ m, a),
        "x A (A stored [rank, in], transposed view)": each(lambda m: x @ m.t(), a_t),
        "A^T x as matrix-vector": each(lambda m: torch.mv(m, x[0]), a_t),
        "x A with K split in 8 and summed": each(lambda m: torch.bmm(x.view(8, 1, H // 8), m.view(8, H // 8, R)).sum(0), a),
        "x A as elementwise product and sum": each(lambda m: (x.t() * m).sum(0), a),
        "(x A) B": each(lambda m: xa @ m, b),
        "y + z (the add)": each(lambda m: y + y, b),
        "y + (x A) B as one addmm": each(lambda m: torch.addmm(y, xa, m), b),
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fp16, batch 1, {CALLS} calls per graph\n")
    print("| operation | us per call |\n| --- | --- |")
    for name, fn in cases.items():
        print(f"| {name} | {min(timed(fn), timed(fn)):.2f} |", flush=True)


if __name__ == "__main__":
    main()
