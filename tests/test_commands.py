"""Command presets on a tiny Llama: CSV/Parquet data, the qlora preset, finetune resume after an interruption,
convert-adapters for a second adapter of the same base, and benchmark."""
import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import RECORDS
from safetensors.torch import load_file
from helpers import edgewise

from edgewise import engine
from edgewise.models.checkpoint import load_tokenizer
from edgewise.models.onnx_lora import ADAPTER_FILE
from edgewise.compute import training
from edgewise.passes.finetune import FinetuneConfig
from edgewise.runtime.genai import Runtime
from edgewise.runtime.sampling import Sampling
from edgewise.sources import datasets


@pytest.fixture(scope="module")
def data_formats(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    (folder / "d.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    with open(folder / "d.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["prompt", "response"])
        writer.writeheader()
        writer.writerows(RECORDS)
    pq.write_table(pa.Table.from_pylist(RECORDS), folder / "d.parquet")
    return folder


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_give_the_same_examples_as_jsonl(tiny_llama, data_formats, fmt):
    tokenizer = load_tokenizer(tiny_llama)
    template = "Q: {prompt}\\nA: {response}"
    reference = datasets.load_formatted(data_formats / "d.jsonl", "json", template)
    records, formatter = datasets.load_formatted(data_formats / f"d.{fmt}", fmt, template)
    assert records == reference[0]
    assert formatter.split(records[3], tokenizer) == (f"Q: {RECORDS[3]['prompt']}\nA: ", RECORDS[3]["response"])
    assert datasets.tokenize(records, formatter, tokenizer, 64) == datasets.tokenize(*reference, tokenizer, 64)


def _lora_weights(folder):
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_interrupted_finetune_resumes_to_the_same_adapter(tiny_llama, tiny_data, tmp_path, monkeypatch):
    config = FinetuneConfig(data_files=str(tiny_data), max_steps=6, save_steps=2, lora_r=4, learning_rate=1e-2,
                            eval_split=0.25, eval_steps=2)  # the held-out history is resumed too
    art = engine.folder_artifact(tiny_llama)
    straight = engine.run_pass("finetune", art, config, tmp_path / "a")

    real_checkpoint = training._checkpoint

    def checkpoint_then_stop(*args):
        real_checkpoint(*args)
        if args[3] == 4:  # the step
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_checkpoint", checkpoint_then_stop)
    with pytest.raises(KeyboardInterrupt):
        engine.run_pass("finetune", art, config, tmp_path / "b")
    assert not list((tmp_path / "b" / "runs").iterdir())  # nothing half-written is visible
    monkeypatch.setattr(training, "_checkpoint", real_checkpoint)
    resumed = engine.run_pass("finetune", art, config, tmp_path / "b")
    a, b = _lora_weights(straight.path), _lora_weights(resumed.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("train_loss_last", "eval_history"):
        assert resumed.manifest["metrics"][key] == straight.manifest["metrics"][key]
    assert not (tmp_path / "b" / "work").exists() or not list((tmp_path / "b" / "work").iterdir())


def test_qlora_preset_quantizes_then_trains(tiny_llama, data_formats, tmp_path):
    out = tmp_path / "ft"
    done = edgewise("finetune", "--method", "qlora", "-m", str(tiny_llama), "--data_files",
                    str(data_formats / "d.csv"), "--data_name", "csv", "--max_steps", "3", "--lora_r", "4",
                    "--output_path", str(out), "--cache_dir", str(tmp_path / "cache"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["pass"] == "finetune" and report["metrics"]["examples"] == len(RECORDS)
    qconfig = json.loads((out / "model" / "config.json").read_text())["quantization_config"]
    assert qconfig["quantizer"] == ["edgewise:awq"] and qconfig["bits"] == 4
    manifest = json.loads((out / "edgewise.json").read_text())
    assert [step["pass"] for step in manifest["lineage"]] == ["quantize", "finetune"]
    assert manifest["source"] == str(tiny_llama) and manifest["lineage"][1]["metrics"]["examples"] == len(RECORDS)


def test_convert_adapters_and_benchmark_on_one_base(tiny_llama, tiny_data, tmp_path):
    cache = ["--cache_dir", str(tmp_path / "cache")]
    for name, seed in (("one", "1"), ("two", "2")):
        done = edgewise("finetune", "-m", str(tiny_llama), "--data_files", str(tiny_data), "--max_steps", "4",
                        "--lora_r", "4", "--learning_rate", "0.02", "--seed", seed,
                        "--output_path", str(tmp_path / name), *cache)
        assert done.returncode == 0, done.stderr
    done = edgewise("auto-opt", "-m", str(tmp_path / "one"), "--precision", "fp32", "--output_path",
                    str(tmp_path / "onnx"), *cache)
    assert done.returncode == 0, done.stderr
    model = tmp_path / "onnx" / "model"
    done = edgewise("convert-adapters", "--model", str(model), "--adapter_path", f"two={tmp_path / 'two' / 'adapter'}",
                    "--output_path", str(tmp_path / "adapters"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "adapters" / "two.onnx_adapter")

    runtime = Runtime(model, {"one": model / ADAPTER_FILE, "two": tmp_path / "adapters" / "two.onnx_adapter"})
    ids = runtime.prompt_ids([{"role": "user", "content": RECORDS[0]["prompt"]}])
    outputs = {name: list(runtime.stream(ids, name, Sampling(max_new_tokens=8))) for name in (None, "one", "two")}
    assert len({"".join(v) for v in outputs.values()}) == 3, outputs  # base, one and two all differ

    done = edgewise("benchmark", str(model), "--adapter", f"two={tmp_path / 'adapters' / 'two.onnx_adapter'}",
                    "--prompt_tokens", "16", "--gen_tokens", "8", "--runs", "1", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["adapter"] for r in rows] == [None, "two"]
    assert all(r["decode_tok_s"] > 0 and r["ttft_ms"] > 0 and r["gen_tokens"] == 8 for r in rows)
