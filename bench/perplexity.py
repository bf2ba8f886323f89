"""Perplexity of the default model (fp32) and its int4 quantizations (group 32, integer zero point) on two held-out
sets: English prose (docstrings of Python standard-library modules) and the lab's travel answers
(../shared/data/travel). Calibration: edgewise's default text (16 x 512 tokens), as `edgewise quantize` uses it.
--model takes any source edgewise takes (a folder, a .gguf file); the default is the embedded SmolLM2.
Usage: python bench/perplexity.py [awq,gptq,rtn] [--model PATH]"""
import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from edgewise import engine
from edgewise.evaluators.models import TorchModel
from edgewise.evaluators.perplexity import stdlib_prose
from edgewise.models.checkpoint import load_model, load_tokenizer
from edgewise.passes.quantize import default_calibration
from edgewise.quant.calib import token_windows
from edgewise.quant.int4 import QuantSpec
from edgewise.quant.layerwise import quantize_model
from edgewise.sources import model as sources

TRAVEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "travel" / "data_sample_travel.jsonl"



def perplexity(model, windows: torch.Tensor) -> float:
    """exp(mean next-token loss) over [n, seq_len] windows, scored as the perplexity evaluator scores PyTorch models."""
    scorer = TorchModel(folder, None)
    scorer.__dict__["model"] = model  # the model in memory, not the folder's
    return math.exp(-np.concatenate([scorer.logprobs(w.tolist()) for w in windows]).mean())


parser = argparse.ArgumentParser()
parser.add_argument("algorithms", nargs="?", default="rtn,awq,gptq")
parser.add_argument("--model", default=None)
args = parser.parse_args()
torch.manual_seed(0)
folder = sources.resolve(args.model, engine.cache_root())
tok, base = load_tokenizer(folder), load_model(folder)
held_out = {"prose": token_windows(tok, stdlib_prose(), 16, 512),
            "travel": token_windows(tok, [json.loads(line)["response"] for line in TRAVEL.open()], 8, 512)}
calibration = token_windows(tok, default_calibration(), 16, 512)
ref = {name: perplexity(base, windows) for name, windows in held_out.items()}
print("| model | prose ppl | vs fp32 | travel ppl | vs fp32 | quantize time |")
print("| --- | --- | --- | --- | --- | --- |")
print(f"| fp32 | {ref['prose']:.3f} | | {ref['travel']:.3f} | | |", flush=True)
for algorithm in args.algorithms.split(","):
    model, start = copy.deepcopy(base), time.time()
    quantize_model(model, calibration, QuantSpec(4, 32, True), algorithm)
    seconds = time.time() - start
    cells = [f"{p:.3f} | +{100 * (p / ref[name] - 1):.1f}%"
             for name, p in ((name, perplexity(model, w)) for name, w in held_out.items())]
    print(f"| {algorithm.upper()} | {' | '.join(cells)} | {seconds:.1f} s |", flush=True)
