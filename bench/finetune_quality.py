"""Finetune quality per CPU-second (issue 15): the lab's chain on the default model (AWQ int4 -> LoRA finetune ->
auto-opt) trained on a seeded 80% of the lab's travel records, scored on the other 20%: the mean response-token loss
of the exported ONNX model with its adapter, over the same model without it. One row per finetune configuration.
Usage: python bench/finetune_quality.py [--set 'key=value key=value' ...] [--data FILE] [--json OUT] [--base AWQ_DIR]
  [--text_template T]
  e.g. --set '' (the defaults) --set 'learning_rate=1e-3 target_modules=q_proj,v_proj'"""
import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

from edgewise import engine
from edgewise.core.config import from_mapping
from edgewise.evaluators import perplexity
from edgewise.evaluators.models import OnnxModel
from edgewise.evaluators.perplexity import PerplexityConfig
from edgewise.models.onnx_lora import ADAPTER_FILE
from edgewise.passes.export import ExportConfig
from edgewise.passes.finetune import FinetuneConfig
from edgewise.passes.quantize import QuantizeConfig
from edgewise.sources import datasets
from edgewise.sources import model as sources

LAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "travel" / "data_sample_travel.jsonl"


def split(path: Path, folder: Path, seed: int = 0, held_out: float = 0.2) -> tuple[Path, Path]:
    """train.jsonl and held.jsonl in `folder`: a seeded shuffle, the first `held_out` of it held out."""
    records = datasets.load_records(path)
    random.Random(seed).shuffle(records)
    cut = round(len(records) * held_out)
    for name, part in (("train", records[cut:]), ("held", records[:cut])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder / "train.jsonl", folder / "held.jsonl"


def response_loss(model: OnnxModel, held: Path, template: str | None = None) -> tuple[float, int]:
    """Token-weighted mean negative log-likelihood of the held-out response tokens (the perplexity evaluator's, as
    its log), and how many tokens it scored."""
    scores = perplexity.run(model, PerplexityConfig(data_files=str(held), max_samples=10**6, text_template=template))
    return math.log(scores["perplexity"]), scores["scored_tokens"]


def scalar(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def finetune_config(text: str, train: Path, template: str | None) -> FinetuneConfig:
    """`key=value key=value` over the defaults, training on `train`."""
    values = {k: scalar(v) for k, v in (item.split("=", 1) for item in text.split())}
    return from_mapping(FinetuneConfig, {**values, "data_files": str(train), "text_template": template}, "--set")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[], help="finetune values of one row")
    parser.add_argument("--data", type=Path, default=LAB)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--base", type=Path, help="an AWQ output folder to train on (default: run the quantize step)")
    parser.add_argument("--text_template", help="for a base model without a chat template, e.g. "
                                                "$'Question: {prompt}\\nAnswer: {response}' (training and scoring)")
    args = parser.parse_args()
    cache = engine.cache_root()
    if args.base:
        awq = engine.folder_artifact(args.base)
    else:
        awq = engine.run_pass("quantize", engine.folder_artifact(sources.resolve(None, cache)), QuantizeConfig(), cache)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train, held = split(args.data, Path(tmp))
        n_held, base_loss = len(datasets.load_records(held)), None
        for text in args.set or [""]:
            start = time.time()
            ft = engine.run_pass("finetune", awq, finetune_config(text, train, args.text_template), cache)
            seconds = ft.manifest["metrics"].get("train_seconds", time.time() - start)
            onnx = engine.run_pass("export", ft, ExportConfig(), cache).path / "model"
            if base_loss is None:
                base_loss, tokens = response_loss(OnnxModel(onnx, None), held, args.text_template)
            loss, _ = response_loss(OnnxModel(onnx, onnx / ADAPTER_FILE), held, args.text_template)
            rows.append({"config": text or "defaults", "train_seconds": seconds, "held_out_loss": loss,
                         "base_loss": base_loss, "ratio": loss / base_loss})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"held-out: {n_held} records ({tokens} response tokens); base loss "
          f"{base_loss:.3f}\n\n| finetune values | train s | held-out loss | ratio |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {r['train_seconds']:.0f} | {r['held_out_loss']:.3f} | {r['ratio']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
