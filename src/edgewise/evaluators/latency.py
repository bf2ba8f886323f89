"""latency: time to first token, decode tokens/s (median and p50/p90 per token) and peak memory of an exported
model in onnxruntime-genai, with its adapter active where it has one."""
from __future__ import annotations

from dataclasses import dataclass, field

from edgewise.core.errors import EdgewiseError
from edgewise.evaluators import evaluator
from edgewise.runtime.benchmark import BenchmarkConfig


@dataclass(frozen=True)
class LatencyConfig(BenchmarkConfig):
    gen_tokens: int = field(default=64, metadata={"help": "tokens generated per run"})
    adapter: bool = field(default=True, metadata={"help": "with the model's adapter active, where it has one"})


@evaluator("latency", LatencyConfig, better={"ttft_ms": "lower", "decode_tok_s": "higher", "decode_ms_p50": "lower",
                                             "decode_ms_p90": "lower", "peak_rss_mb": "lower"})
def run(model, config: LatencyConfig) -> dict:
    from edgewise.runtime.benchmark import measure

    if model.kind != "onnx":
        raise EdgewiseError("latency is measured on exported models: end the passes with an export")
    speed = measure(model.runtime, model.adapter, config.prompt_tokens, config.gen_tokens, config.runs).as_dict()
    return {k: v for k, v in speed.items() if k in ("ttft_ms", "decode_tok_s", "decode_ms_p50", "decode_ms_p90",
                                                    "peak_rss_mb")}
