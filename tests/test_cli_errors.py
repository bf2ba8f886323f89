"""User mistakes end with one clear line, a non-zero exit and nothing written."""
import json
import subprocess
import sys

import pytest


def edgewise(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgewise", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def assert_user_error(done, message, out):
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("edgewise: error:")]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", \n')
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "nocol.jsonl").write_text('{"question": "a", "answer": "b"}\n')
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "response": "x"}\n'.encode("latin-1"))
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return tmp_path


CASES = [
    (["finetune", "--data_files", "{d}/missing.jsonl"], "data file not found"),
    (["finetune", "--data_files", "{d}/broken.jsonl"], "line 2"),
    (["finetune", "--data_files", "{d}/empty.jsonl"], "empty"),
    (["finetune", "--data_files", "{d}/nocol.jsonl"], "no column 'prompt'"),
    (["finetune", "--data_files", "{d}/latin1.jsonl"], "not UTF-8"),
    (["finetune", "--data_files", "{d}/nocol.jsonl", "--text_template", "Q: {question} A: {answr}"], "'answr'"),
    (["finetune", "--data_files", "{d}/nocol.jsonl", "--text_template", "Q: {question"], "malformed"),
    (["quantize", "--model_name_or_path", "{d}/no/such/folder"], "model path not found"),
    (["quantize", "--model_name_or_path", "nobody-xyz/not-a-model"], "cannot fetch"),
    (["quantize", "--model_name_or_path", "{d}/gpt2"], "unsupported architecture 'gpt2'"),
    (["auto-opt", "--model_name_or_path", "{d}/gpt2"], "unsupported architecture"),
]


@pytest.mark.parametrize("args,message", CASES)
def test_user_errors(tiny_llama, bad_files, args, message, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EDGEWISE_CACHE", str(tmp_path / "cache"))
    args = [a.replace("{d}", str(bad_files)) for a in args]
    if "--model_name_or_path" not in args:
        args += ["--model_name_or_path", str(tiny_llama)]
    out = tmp_path / "out"
    assert_user_error(edgewise(*args, "--output_path", str(out)), message, out)


def test_output_path_holding_other_files_is_refused(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEWISE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    done = edgewise("quantize", "--model_name_or_path", str(tiny_llama), "--algorithm", "rtn", "--output_path", str(out))
    assert done.returncode == 2 and "did not write" in done.stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_help_has_examples():
    for command in ("quantize", "finetune", "auto-opt", "convert-adapters", "generate", "benchmark", "serve", "chat"):
        done = edgewise(command, "--help")
        assert done.returncode == 0 and "examples:" in done.stdout
