"""User mistakes end with one clear line, a non-zero exit and nothing written (the table of bad inputs is in
robustness/test_bad_inputs.py)."""
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
