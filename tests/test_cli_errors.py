"""User mistakes end with one clear line, a non-zero exit and nothing written (the table of bad inputs is in
robustness/test_bad_inputs.py)."""

from helpers import edgewise


def test_output_path_holding_other_files_is_refused(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEWISE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    done = edgewise("quantize", "--model_name_or_path", str(tiny_llama), "--algorithm", "rtn", "--output_path", str(out))
    assert done.returncode == 2 and "did not write" in done.stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_help_has_examples():
    for command in ("quantize", "finetune", "auto-opt", "convert-adapters", "generate", "embed", "benchmark", "serve",
                    "chat"):
        done = edgewise(command, "--help")
        assert done.returncode == 0 and "examples:" in done.stdout
