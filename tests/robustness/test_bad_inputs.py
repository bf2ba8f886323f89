"""Bad inputs across commands and configs: each ends with a non-zero exit, exactly one `edgewise...: error:` line
naming the problem, no traceback, and nothing written at the output path."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from ledger import record
from safetensors.torch import save_file
from helpers import edgewise

M = "--model_name_or_path"
DATA = {
    "broken.jsonl": b'{"prompt": "a", "response": "b"}\n{"prompt": "c", \n',
    "blank.jsonl": b"\n\n",
    "zero.jsonl": b"",
    "nocol.jsonl": b'{"question": "a", "answer": "b"}\n',
    "latin1.jsonl": '{"prompt": "caf\xe9", "response": "x"}\n'.encode("latin-1"),
    "utf16.jsonl": '{"prompt": "a", "response": "b"}\n'.encode("utf-16"),
    "types.jsonl": b'{"prompt": "a", "response": ["not", "text"]}\n',
    "array-line.jsonl": b'[1, 2, 3]\n',
    "array.json": b'[{"prompt": "a", "response": "b"},\n {"prompt": ]\n',
    "nocol.csv": b"question,answer\na,b\n",
    "bad.parquet": b"PAR1 this is not a parquet file PAR1",
    "good.jsonl": b'{"prompt": "Where to?", "response": "The old market."}\n' * 4,
}


@pytest.fixture(scope="module")
def bad(tiny_llama, tiny_onnx, tmp_path_factory):
    """Every broken input, built once: data files, damaged model folders, a damaged export, foreign adapters and
    workflow files."""
    d = tmp_path_factory.mktemp("bad")
    for name, content in DATA.items():
        (d / name).write_bytes(content)
    (d / "huge.jsonl").write_bytes(b"x" * (32 << 20) + b"\n")  # one 32 MB line that is not JSON
    (d / "garbage.jsonl").write_bytes(os.urandom(1 << 20))

    def model_copy(name: str) -> Path:
        shutil.copytree(tiny_llama, d / name)
        return d / name

    notok = model_copy("notok")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (notok / name).unlink(missing_ok=True)
    weights = model_copy("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (model_copy("garbled") / "model.safetensors").write_bytes(b"\xff" * 64 + os.urandom(4096))
    pickled = model_copy("pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")  # the name is enough: it must not be read
    (model_copy("badconfig") / "config.json").write_text('{"model_type": "llama", ')
    remote = model_copy("remote")
    cfg = json.loads((remote / "config.json").read_text())
    cfg.update(model_type="sneaky", auto_map={"AutoConfig": "sneaky.SneakyConfig",
                                               "AutoModelForCausalLM": "sneaky.SneakyModel"})
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "sneaky.py").write_text(f"open({str(d / 'REMOTE_CODE_RAN')!r}, 'w').close()\n")
    gpt2 = d / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (d / "trunc.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(512))

    shutil.copytree(tiny_onnx.model, d / "onnx")
    onnx_file = d / "onnx" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:2048])
    adapter = tiny_onnx.adapters["one"].read_bytes()
    (d / "trunc.onnx_adapter").write_bytes(adapter[: len(adapter) // 3])
    _foreign_adapter(d / "wide-adapter", tiny_onnx.peft, width=96)
    _foreign_adapter(d / "tall-adapter", tiny_onnx.peft, rows=40)
    shutil.copytree(tiny_onnx.peft, d / "noconfig-adapter")
    (d / "noconfig-adapter" / "adapter_config.json").unlink()

    flows = {
        "unknown-key.yaml": "input_model: {}\npasses: [{type: quantize, algoritm: rtn}]\n",
        "wrong-type.yaml": "passes: [{type: quantize}]\nsearch: {max_trials: many}\n",
        "syntax.yaml": "passes: [{type: quantize\n  - oops: [\n",
        "unknown-pass.yaml": "passes: [{type: distill}]\n",
        "not-a-mapping.yaml": "- just\n- a list\n",
    }
    for name, text in flows.items():
        (d / name).write_text(text)
    (d / "a-file").write_text("I am a file")
    return d


def _foreign_adapter(folder: Path, source: Path, width: int | None = None, rows: int | None = None) -> None:
    """A PEFT adapter folder shaped for another base: wider inputs, or more outputs, than the tiny Llama's."""
    shutil.copytree(source, folder)
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    for key, value in list(tensors.items()):
        if "lora_A" in key and width:
            tensors[key] = torch.zeros(value.shape[0], width)
        if "lora_B" in key and rows:
            tensors[key] = torch.zeros(rows, value.shape[1])
    save_file(tensors, str(folder / "adapter_model.safetensors"))


FT = ["finetune", M, "{m}", "--max_steps", "1"]
Q = ["quantize", "--algorithm", "rtn", M]
CASES = {
    # data files
    "data file missing": (FT + ["--data_files", "{d}/missing.jsonl"], "data file not found"),
    "JSONL broken on line 2": (FT + ["--data_files", "{d}/broken.jsonl"], "line 2"),
    "JSONL of blank lines": (FT + ["--data_files", "{d}/blank.jsonl"], "empty"),
    "zero-byte data file": (FT + ["--data_files", "{d}/zero.jsonl"], "empty"),
    "column missing": (FT + ["--data_files", "{d}/nocol.jsonl"], "no column 'prompt'"),
    "Latin-1 encoding": (FT + ["--data_files", "{d}/latin1.jsonl"], "not UTF-8"),
    "UTF-16 encoding": (FT + ["--data_files", "{d}/utf16.jsonl"], "not UTF-8"),
    "binary file as JSONL": (FT + ["--data_files", "{d}/garbage.jsonl"], "not UTF-8"),
    "one 32 MB line": (FT + ["--data_files", "{d}/huge.jsonl"], "malformed JSON on line 1"),
    "column of the wrong type": (FT + ["--data_files", "{d}/types.jsonl"], "column 'response' is a list"),
    "a JSONL line that is an array": (FT + ["--data_files", "{d}/array-line.jsonl"], "line 1 is a JSON list"),
    "JSON array file broken": (FT + ["--data_files", "{d}/array.json"], "malformed JSON at line 2"),
    "CSV without the column": (FT + ["--data_files", "{d}/nocol.csv", "--data_name", "csv"], "no column 'prompt'"),
    "corrupted Parquet": (FT + ["--data_files", "{d}/bad.parquet", "--data_name", "parquet"],
                          "not a readable Parquet file"),
    "unknown data format": (FT + ["--data_files", "{d}/good.jsonl", "--data_name", "xlsx"], "invalid choice"),
    "template with an unknown placeholder": (
        FT + ["--data_files", "{d}/nocol.jsonl", "--text_template", "Q: {question} A: {answr}"], "'answr'"),
    "template with an unbalanced brace": (
        FT + ["--data_files", "{d}/nocol.jsonl", "--text_template", "Q: {question"], "malformed"),
    "template with a stray closing brace": (
        FT + ["--data_files", "{d}/nocol.jsonl", "--text_template", "Q: {question}} A: {answer}"], "malformed"),
    "template with a positional placeholder": (
        FT + ["--data_files", "{d}/nocol.jsonl", "--text_template", "Q: {0}"], "invalid placeholder"),
    "data split selecting nothing": (FT + ["--data_files", "{d}/good.jsonl", "--data_split", "150%:"],
                                     "selects none"),
    "data split that is no range": (FT + ["--data_files", "{d}/good.jsonl", "--data_split", "half"], "START:STOP"),
    "calibration data broken": (Q + ["{m}", "--data_files", "{d}/broken.jsonl"], "line 2"),
    # values
    "a flag with a value of the wrong type": (FT + ["--data_files", "{d}/good.jsonl", "--lora_r", "four"],
                                              "invalid int value"),
    "zero training steps": (["finetune", M, "{m}", "--data_files", "{d}/good.jsonl", "--max_steps", "0"],
                            "--max_steps must be at least 1"),
    "eval split of 1.5": (FT + ["--data_files", "{d}/good.jsonl", "--eval_split", "1.5"], "[0, 1)"),
    "group size 0": (Q + ["{m}", "--group_size", "0"], "--group_size must be at least 1"),
    # models
    "model path missing": (Q + ["{d}/no/such/folder"], "model path not found"),
    "hub model while offline": (Q + ["nobody-xyz/not-a-model"], "cannot fetch"),
    "unsupported architecture": (Q + ["{d}/gpt2"], "unsupported architecture 'gpt2'"),
    "unsupported architecture (auto-opt)": (["auto-opt", M, "{d}/gpt2"], "unsupported architecture"),
    "config.json that is not JSON": (Q + ["{d}/badconfig"], "cannot read the model config"),
    "tokenizer files missing": (Q + ["{d}/notok"], "cannot load the tokenizer"),
    "truncated safetensors": (Q + ["{d}/truncated"], "cannot load model weights"),
    "corrupted safetensors header": (Q + ["{d}/garbled"], "cannot load model weights"),
    "pickle weights only": (Q + ["{d}/pickled"], "edgewise reads safetensors only"),
    "remote code without --trust_remote_code": (Q + ["{d}/remote"], "trust_remote_code"),
    "truncated GGUF file": (Q + ["{d}/trunc.gguf"], "cannot read GGUF file"),
    # exported models and adapters
    "truncated ONNX model": (["generate", "--model", "{d}/onnx", "--prompt", "hi"], "cannot load"),
    "truncated .onnx_adapter": (["generate", "--model", "{x}", "--adapter", "t={d}/trunc.onnx_adapter",
                                 "--prompt", "hi"], "cannot load adapter"),
    "adapter of a wider base": (["convert-adapters", "--model", "{x}", "--adapter_path",
                                 "{d}/wide-adapter"], "belongs to another base model"),
    "adapter of a base with other output sizes": (["convert-adapters", "--model", "{x}", "--adapter_path",
                                                   "{d}/tall-adapter"], "belongs to another base model"),
    "adapter folder without its config": (["convert-adapters", "--model", "{x}", "--adapter_path",
                                           "{d}/noconfig-adapter"], "not a PEFT adapter folder"),
    "adapter of another base at export": (["auto-opt", M, "{m}", "--adapter_path", "{d}/wide-adapter",
                                           "--precision", "fp32"], "belongs to another base model"),
    # workflow files
    "workflow with an unknown key": (["run", "--config", "{d}/unknown-key.yaml"], "unknown key 'algoritm'"),
    "workflow value of the wrong type": (["run", "--config", "{d}/wrong-type.yaml"], "search.max_trials"),
    "workflow YAML syntax error": (["run", "--config", "{d}/syntax.yaml"], "syntax.yaml"),
    "workflow with an unknown pass": (["run", "--config", "{d}/unknown-pass.yaml"], "distill"),
    "workflow that is a list": (["run", "--config", "{d}/not-a-mapping.yaml"], "mapping"),
    "override of an unknown key": (["run", "--config", "{d}/unknown-pass.yaml", "serch.strategy=tpe"], "serch"),
    # outputs and registry
    "output path that is a file": (Q + ["{m}", "-o", "{d}/a-file"], "is a file"),
    "registry pull of an unknown name": (["registry", "pull", "nobody@1", "--to", "{out}",
                                          "--registry", "{d}/registry"], "nobody"),
}


CHAIN = ("quantize", "finetune", "auto-opt", "convert-adapters")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, bad, tiny_llama, tiny_onnx, tmp_path):
    args, message = CASES[case]
    out = tmp_path / "out"
    args = [a.replace("{d}", str(bad)).replace("{m}", str(tiny_llama)).replace("{x}", str(tiny_onnx.model))
            .replace("{out}", str(out)) for a in args]
    if args[0] in CHAIN and "-o" not in args:
        args += ["-o", str(out)] + (["--cache_dir", str(tmp_path / "cache")] if args[0] != "convert-adapters" else [])
    done = edgewise(*args)
    lines = [ln for ln in done.stderr.splitlines() if ": error:" in ln]
    ok = (done.returncode != 0 and len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
          and not out.exists() and not (bad / "REMOTE_CODE_RAN").exists())
    record("bad input", case, "pass" if ok else "FAIL", exit=done.returncode, line=lines[0] if lines else "")
    assert done.returncode != 0, done.stderr
    assert len(lines) == 1 and message in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not out.exists()
    assert not (bad / "REMOTE_CODE_RAN").exists()


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 kB filesystem (tmpfs; needs root, as CI has) standing for a full disk."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_no_space_left_in_the_output_folder(tiny_llama, tiny_disk, tmp_path):
    done = edgewise(*Q, str(tiny_llama), "-o", str(tiny_disk / "q"), "--cache_dir", str(tmp_path / "cache"))
    lines = [ln for ln in done.stderr.splitlines() if ": error:" in ln]
    ok = done.returncode == 2 and len(lines) == 1 and "No space left" in lines[0] and not any(tiny_disk.iterdir())
    record("bad input", "no disk space left in the output folder", "pass" if ok else "FAIL", exit=done.returncode,
           line=lines[0] if lines else "")
    assert done.returncode == 2 and len(lines) == 1 and "No space left on device" in lines[0], done.stderr
    assert not any(tiny_disk.iterdir()), list(tiny_disk.iterdir())  # no half-written output, no temp folder



def test_an_adapter_of_another_rank_loads(tiny_llama, tiny_onnx, tiny_data, tmp_path):
    """Not a bad input: the exported LoRA inputs have a symbolic rank, so a rank-8 adapter joins a model whose own
    adapter has rank 4, and it changes the answer."""
    common = ["--cache_dir", str(tmp_path / "cache")]
    trained = edgewise("finetune", M, str(tiny_llama), "--data_files", str(tiny_data), "--max_steps", "8",
                       "--lora_r", "8", "--learning_rate", "0.02", "-o", str(tmp_path / "ft"), *common)
    converted = edgewise("convert-adapters", "--model", str(tiny_onnx.model), "--adapter_path",
                         f"r8={tmp_path / 'ft' / 'adapter'}", "-o", str(tmp_path / "adapters"))
    answers = [edgewise("generate", "--model", str(tiny_onnx.model), *adapter, "--prompt", "Where should I go?",
                        "--max_new_tokens", "8")
               for adapter in ([], ["--adapter", f"r8={tmp_path / 'adapters' / 'r8.onnx_adapter'}"])]
    ok = trained.returncode == converted.returncode == 0 and all(a.returncode == 0 for a in answers) \
        and answers[0].stdout != answers[1].stdout
    record("bad input", "an adapter of another rank (accepted by design: symbolic rank)", "pass" if ok else "FAIL",
           exit=answers[1].returncode, line="rank 8 adapter on a model exported with rank 4: loads and answers")
    assert trained.returncode == 0 and converted.returncode == 0, trained.stderr + converted.stderr
    assert all(a.returncode == 0 for a in answers), answers[1].stderr
    assert answers[0].stdout != answers[1].stdout
