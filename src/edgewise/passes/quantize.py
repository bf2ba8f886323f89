"""quantize: int4/int8 weight-only quantization (AWQ, GPTQ, RTN) into a GPTQ-format Hugging Face folder."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from importlib import resources

from edgewise.core.artifact import Artifact
from edgewise.core.errors import EdgewiseError
from edgewise.core.log import log
from edgewise.passes import register
from edgewise.quant.algorithms import ALGORITHMS
from edgewise.sources import datasets


@dataclass(frozen=True)
class QuantizeConfig:
    algorithm: str = field(default="awq", metadata={"help": "awq (activation-aware scales + clipping), gptq or rtn",
                                                    "choices": tuple(ALGORITHMS)})
    bits: int = field(default=4, metadata={"help": "weight bits", "choices": (4, 8)})
    group_size: int = field(default=32, metadata={
        "help": "weights per scale; halved for a layer whose width it does not divide"})
    zero_point: bool = field(default=True, metadata={"help": "asymmetric with an integer zero point (else symmetric)"})
    data_files: str | None = field(default=None, metadata={
        "help": "calibration data file (default: English prose shipped with edgewise)", "path": True})
    data_name: str = field(default="json", metadata={"help": "format of --data_files", "choices": datasets.FORMATS})
    text_template: str | None = field(default=None, metadata={
        "help": "template with {column} placeholders (default: the chat template over prompt/response)"})
    data_split: str | None = field(default=None, metadata={
        "help": "records to use, START:STOP by index or percentage, e.g. ':80%%' (default: all)"})
    num_samples: int = field(default=16, metadata={"help": "calibration windows"})
    seq_len: int = field(default=512, metadata={"help": "tokens per calibration window"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda", "choices": ("auto", "cpu", "cuda")})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def check(self) -> None:
        """Cheap checks before any work: the values, and that a calibration file loads and fits the template."""
        for name in ("group_size", "num_samples", "seq_len"):
            if getattr(self, name) < 1:
                raise EdgewiseError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.data_files:
            datasets.load_formatted(self.data_files, self.data_name, self.text_template, split=self.data_split)


def default_calibration() -> list[str]:
    """English prose shipped with edgewise (data/calibration.jsonl; data/NOTICE says what it holds)."""
    lines = resources.files("edgewise").joinpath("data/calibration.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def calibration_texts(config, tokenizer) -> list[str]:
    if not config.data_files:
        return default_calibration()
    records, formatter = datasets.load_formatted(config.data_files, config.data_name, config.text_template,
                                                 split=config.data_split)
    return datasets.texts(records, formatter, tokenizer)


@register("quantize", QuantizeConfig)
def run(artifact: Artifact, config: QuantizeConfig, out, work) -> dict:
    import torch  # here, not at the top: the config and its checks stay light for the command line

    from edgewise.compute import devices
    from edgewise.models.checkpoint import load_model, load_tokenizer, save_quantized
    from edgewise.models.hf_config import quantization_config
    from edgewise.quant.calib import token_windows
    from edgewise.quant.int4 import QuantSpec
    from edgewise.quant.layerwise import quantize_model

    if quantization_config(artifact.path):
        raise EdgewiseError(f"{artifact.path} is already quantized")
    torch.manual_seed(config.seed)
    device = devices.resolve(config.device)
    clock = [time.perf_counter()]
    tokenizer = load_tokenizer(artifact.path)
    windows = token_windows(tokenizer, calibration_texts(config, tokenizer), config.num_samples, config.seq_len)
    model = load_model(artifact.path, devices.compute_dtype(device), device)
    spec = QuantSpec(config.bits, config.group_size, config.zero_point)
    log.info("%s int%d, group %d, %s, on %s", config.algorithm, config.bits, config.group_size,
             "zero point" if config.zero_point else "symmetric", device)
    clock.append(time.perf_counter())
    qtensors = quantize_model(model, windows, spec, config.algorithm)
    clock.append(time.perf_counter())
    qconfig = {
        "quant_method": "gptq", "checkpoint_format": "gptq", "bits": config.bits, "group_size": config.group_size,
        "sym": not config.zero_point, "desc_act": False, "quantizer": [f"edgewise:{config.algorithm}"],
        "dynamic": {f"+:{re.escape(name)}\\.": {"group_size": qt.group_size}
                    for name, qt in qtensors.items() if qt.group_size != config.group_size},
    }
    save_quantized(model, qtensors, qconfig, artifact.path, out)
    clock.append(time.perf_counter())
    load, search, save = (round(b - a, 2) for a, b in zip(clock, clock[1:]))
    return {"linears": len(qtensors), "calibration_tokens": windows.numel(), "load_seconds": load,
            "quantize_seconds": search, "save_seconds": save}
