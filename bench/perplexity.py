"""Perplexity of the default model (fp32) and its int4 quantizations, on held-out English prose (docstrings of Python
standard-library modules; calibration uses edgewise's shipped text). Usage: python bench/perplexity.py [awq,gptq,rtn]"""
import copy
import sys
import time
from importlib import resources
from pathlib import Path

import torch

from edgewise import engine, sources
from edgewise.evaluate import perplexity, stdlib_prose
from edgewise.modeling import load_model, load_tokenizer
from edgewise.quant.calib import token_windows
from edgewise.quant.int4 import QuantSpec
from edgewise.quant.layerwise import quantize_model

torch.manual_seed(0)
folder = sources.resolve(None, engine.cache_root())
tok, base = load_tokenizer(folder), load_model(folder)
held_out = token_windows(tok, stdlib_prose(), 16, 512)
calibration = token_windows(tok, [resources.files("edgewise").joinpath("data/calibration.txt").read_text()], 16, 512)
p0 = perplexity(base, held_out)
print(f"fp32 ppl {p0:.3f}", flush=True)
for algorithm in (sys.argv[1] if len(sys.argv) > 1 else "rtn,awq,gptq").split(","):
    model, start = copy.deepcopy(base), time.time()
    quantize_model(model, calibration, QuantSpec(4, 32, True), algorithm)
    seconds = time.time() - start
    p = perplexity(model, held_out)
    print(f"{algorithm} int4 g32 asym ppl {p:.3f} (+{100 * (p / p0 - 1):.1f}%) in {seconds:.0f} s", flush=True)
