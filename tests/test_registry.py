"""The registry: the embedded backend (SQLite + content-addressed files) end to end through the CLI, a push killed
at random points, two pushes at once, a real `mlflow server`, the Hub without network, and --register on a command."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import assert_user_error, edgewise, free_port, reg, wait_until_healthy


def folder_with(root, files: dict):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def model_out(tmp_path):
    lineage = {"id": "x", "source": "tiny", "lineage": [{"pass": "quantize", "config": {"bits": 4}, "metrics": {}}]}
    return folder_with(tmp_path / "out", {"edgewise.json": json.dumps(lineage).encode(), "model/model.onnx": b"\1" * 5000,
                                          "model/genai_config.json": b"{}", "model/a.onnx_adapter": os.urandom(3000)})


def blobs(root):
    return sorted(p for p in (root / "blobs").glob("*/*"))


def stored_blobs(root):
    """Blobs in place (a file being copied has a dot name until it is renamed into place)."""
    return [p for p in blobs(root) if not p.name.startswith(".")]


def test_push_list_show_pull_alias_delete(model_out, tmp_path):
    root = tmp_path / "reg"
    assert reg(root, "push", str(model_out), "--name", "travel").stdout.strip() == "travel@1"
    assert reg(root, "push", str(model_out), "--name", "travel").stdout.strip() == "travel@2"
    assert len(blobs(root)) == 4  # the same content pushed twice is stored once
    assert_user_error(reg(root, "push", str(model_out), "--name", "travel", "--version", "2"), "immutable",
                      tmp_path / "none")
    listed = json.loads(reg(root, "list", "--json").stdout)
    assert [(r["name"], r["version"]) for r in listed] == [("travel", 1), ("travel", 2)]
    assert listed[0]["digest"] == listed[1]["digest"]
    assert reg(root, "alias", "travel@1", "production").returncode == 0
    shown = json.loads(reg(root, "show", "travel@production", "--json").stdout)
    assert shown["version"] == 1 and shown["aliases"] == ["production"] and shown["source"] == "tiny"
    assert shown["lineage"][0]["config"] == {"bits": 4} and shown["pushed_from"].endswith(str(model_out))
    assert {f["path"]: f["size"] for f in shown["files"]}["model/model.onnx"] == 5000
    assert "model/a.onnx_adapter" in reg(root, "show", "travel").stdout
    assert reg(root, "pull", "travel@production", "--to", str(tmp_path / "got")).returncode == 0
    for f in shown["files"]:
        assert (tmp_path / "got" / f["path"]).read_bytes() == (model_out / f["path"]).read_bytes()
    assert reg(root, "delete", "travel@2").returncode == 0
    assert [r["version"] for r in json.loads(reg(root, "list", "--json").stdout)] == [1]
    assert reg(root, "delete", "travel").returncode == 0
    assert blobs(root) == [] and json.loads(reg(root, "list", "--json").stdout) == []


def test_corrupted_file_fails_the_pull_and_writes_nothing(model_out, tmp_path):
    root = tmp_path / "reg"
    reg(root, "push", str(model_out), "--name", "m")
    victim = next(b for b in blobs(root) if b.stat().st_size == 3000)
    victim.chmod(0o644)
    victim.write_bytes(b"\0" * 3000)
    assert_user_error(reg(root, "pull", "m@1", "--to", str(tmp_path / "got")), "does not match its recorded sha256",
                      tmp_path / "got")


def test_user_mistakes_are_one_line(model_out, tmp_path):
    root, nothing = tmp_path / "reg", tmp_path / "nothing"
    assert_user_error(reg(root, "push", str(tmp_path / "missing"), "--name", "m"), "not a folder", nothing)
    assert_user_error(reg(root, "push", str(model_out), "--name", "bad name"), "invalid model name", nothing)
    reg(root, "push", str(model_out), "--name", "m")
    assert_user_error(reg(root, "alias", "m@1", "7"), "would read as a version", nothing)
    assert_user_error(reg(root, "alias", "m", "prod"), "NAME@VERSION", nothing)
    assert_user_error(reg(root, "show", "m@3"), "no m@3", nothing)
    assert_user_error(reg(root, "pull", "other", "--to", str(nothing)), "no model 'other'", nothing)
    (tmp_path / "afile").write_text("x")
    assert_user_error(reg(root, "pull", "m", "--to", str(tmp_path / "afile")), "is a file", nothing)
    assert_user_error(edgewise("registry", "list", "--registry", "s3://bucket"), "unknown registry", nothing)


PUSH = "import sys; from edgewise.registry import open_registry; open_registry(sys.argv[1]).push(sys.argv[2], 'm')"


def test_killed_pushes_leave_no_half_version(tmp_path):
    """SIGKILL at points spread over a push, each the moment the push has stored a given number of its 8 files (its
    own, so that none is already in the store): 0, 1, 3, 5, 7 and all 8 (in or after its database write)."""
    root = tmp_path / "reg"
    for step, stored in enumerate((0, 1, 3, 5, 7, 8)):
        big = folder_with(tmp_path / f"big{step}", {f"part{i}.bin": os.urandom(8 << 20) for i in range(8)})
        before = len(stored_blobs(root))
        proc = subprocess.Popen([sys.executable, "-c", PUSH, str(root), str(big)])
        while len(stored_blobs(root)) < before + stored and proc.poll() is None:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for record in json.loads(reg(root, "list", "--json").stdout):  # any visible version is whole
            assert len(record["files"]) == 8
            pulled = reg(root, "pull", f"m@{record['version']}", "--to", str(tmp_path / f"got{step}-{record['version']}"))
            assert pulled.returncode == 0, pulled.stderr
    from edgewise.registry.local import LocalRegistry

    LocalRegistry(root).gc()
    visible = len(json.loads(reg(root, "list", "--json").stdout))
    assert len(blobs(root)) == 8 * visible  # stray files of killed pushes are reclaimed
    assert reg(root, "push", str(big), "--name", "m").returncode == 0


def test_two_pushes_at_once_get_distinct_versions(model_out, tmp_path):
    root, other = tmp_path / "reg", folder_with(tmp_path / "other", {"w.bin": os.urandom(1 << 20)})
    procs = [subprocess.Popen([sys.executable, "-m", "edgewise", "registry", "push", str(folder), "--name", "m",
                               "--registry", str(root)], stdout=subprocess.PIPE, text=True)
             for folder in (model_out, other, model_out)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and sorted(outs) == ["m@1", "m@2", "m@3"]
    for record in json.loads(reg(root, "list", "--json").stdout):
        assert reg(root, "pull", f"m@{record['version']}", "--to", str(tmp_path / str(record["version"]))).returncode == 0


def test_hub_without_network_is_one_clear_line(model_out, tmp_path):
    done = edgewise("registry", "push", str(model_out), "--name", "m", "--registry", "hf://edgewise-test")
    assert_user_error(done, "needs the network", tmp_path / "nothing")


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
                             "--artifacts-destination", str(tmp_path / "mlartifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_until_healthy(proc, f"http://127.0.0.1:{port}/health")
    yield f"mlflow:http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_mlflow_registry(mlflow_server, model_out, tmp_path):
    def ml(*args):
        return edgewise("registry", *args, "--registry", mlflow_server)

    assert ml("push", str(model_out), "--name", "travel").stdout.strip() == "travel@1"
    assert ml("push", str(model_out), "--name", "travel").stdout.strip() == "travel@2"
    assert_user_error(ml("push", str(model_out), "--name", "travel", "--version", "1"), "omit --version",
                      tmp_path / "none")
    assert ml("alias", "travel@2", "production").returncode == 0
    shown = json.loads(ml("show", "travel@production", "--json").stdout)
    assert shown["version"] == 2 and shown["aliases"] == ["production"] and shown["lineage"][0]["pass"] == "quantize"
    assert ml("pull", "travel@production", "--to", str(tmp_path / "got")).returncode == 0
    for f in shown["files"]:
        assert (tmp_path / "got" / f["path"]).read_bytes() == (model_out / f["path"]).read_bytes()
    assert [r["version"] for r in json.loads(ml("list", "travel", "--json").stdout)] == [1, 2]
    assert ml("delete", "travel@1").returncode == 0
    assert [r["version"] for r in json.loads(ml("list", "--json").stdout)] == [2]


def test_unreachable_mlflow_is_one_clear_line(model_out, tmp_path):
    done = edgewise("registry", "push", str(model_out), "--name", "m", "--registry",
                    f"mlflow:http://127.0.0.1:{free_port()}")
    assert_user_error(done, "cannot reach the MLflow server", tmp_path / "nothing")


def test_register_flag_pushes_the_output_with_its_lineage(tiny_llama, tmp_path):
    root = tmp_path / "reg"
    done = edgewise("quantize", "-m", str(tiny_llama), "--algorithm", "rtn", "--output_path", str(tmp_path / "q"),
                    "--cache_dir", str(tmp_path / "cache"), "--register", "tiny-rtn", "--registry", str(root), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["registered"] == "tiny-rtn@1"
    shown = json.loads(reg(root, "show", "tiny-rtn", "--json").stdout)
    assert shown["source"] == str(tiny_llama)
    assert [(s["pass"], s["config"]["algorithm"]) for s in shown["lineage"]] == [("quantize", "rtn")]
    assert "model.safetensors" in {f["path"] for f in shown["files"]}
