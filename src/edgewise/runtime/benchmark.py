"""On-device speed of an exported model through onnxruntime-genai: time to first token, decode tokens per second and
peak memory, for the base model and with each adapter active. Prompts are fixed synthetic token ids, and generation
runs a fixed number of tokens (end-of-sequence is not allowed to stop it), so every run does the same work."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import psutil

from edgewise.runtime.genai import Runtime


@dataclass(frozen=True)
class BenchmarkConfig:
    prompt_tokens: int = field(default=128, metadata={"help": "prompt length"})
    gen_tokens: int = field(default=128, metadata={"help": "tokens generated per run"})
    runs: int = field(default=3, metadata={"help": "timed runs after one warm-up; medians are reported"})


@dataclass
class Speed:
    adapter: str | None
    prompt_tokens: int
    gen_tokens: int
    ttft_ms: float  # prompt processing and the first token, median over runs
    decode_tok_s: float  # tokens after the first, per second, median over runs
    decode_ms_p50: float  # per-token latency after the first
    decode_ms_p90: float
    peak_rss_mb: float  # the process's peak resident memory so far

    def as_dict(self) -> dict:
        return asdict(self)


def synthetic_prompt(runtime: Runtime, n: int) -> list[int]:
    """n token ids of ordinary English text, repeated as needed."""
    text = "The quick brown fox jumps over the lazy dog while travellers plan a trip to Paris and Rome. "
    ids = list(runtime.tokenizer.encode(text))
    return (ids * (n // len(ids) + 1))[:n]


def one_run(runtime: Runtime, ids: list[int], gen_tokens: int, adapter: str | None) -> tuple[float, list[float]]:
    """Seconds to the first token, then the seconds of each further token."""
    start = time.perf_counter()
    runtime.check_room(len(ids), gen_tokens)
    total = runtime.prompt_span(len(ids)) + gen_tokens
    generator = runtime.generator(total, adapter, do_sample=False, min_length=total)
    generator.append_tokens(ids)
    generator.generate_next_token()
    ttft = time.perf_counter() - start
    steps = []
    for _ in range(gen_tokens - 1):  # a pipeline's max_length is its whole context
        tick = time.perf_counter()
        generator.generate_next_token()
        steps.append(time.perf_counter() - tick)
    return ttft, steps


def measure(runtime: Runtime, adapter: str | None, prompt_tokens: int = 128, gen_tokens: int = 128,
            runs: int = 3, warmup: int = 1) -> Speed:
    ids = synthetic_prompt(runtime, prompt_tokens)
    for _ in range(warmup):
        one_run(runtime, ids, min(gen_tokens, 8), adapter)
    ttfts, rates, steps_all = [], [], []
    for _ in range(runs):
        ttft, steps = one_run(runtime, ids, gen_tokens, adapter)
        ttfts.append(ttft)
        rates.append(len(steps) / sum(steps) if steps else 0.0)
        steps_all.extend(steps)
    quantiles = statistics.quantiles(steps_all, n=10) if len(steps_all) > 1 else [0.0] * 9
    return Speed(adapter, prompt_tokens, gen_tokens, 1000 * statistics.median(ttfts), statistics.median(rates),
                 1000 * statistics.median(steps_all) if steps_all else 0.0, 1000 * quantiles[8], peak_rss_mb())


def peak_rss_mb() -> float:
    """The process's peak resident memory: psutil reports it on Windows, getrusage (in kB) on Linux."""
    info = psutil.Process().memory_info()
    if hasattr(info, "peak_wset"):
        return info.peak_wset / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
