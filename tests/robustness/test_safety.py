"""Safety: weights are read from safetensors only (a pickle is never unpickled, even one named like a checkpoint);
a model's own code runs only with --trust_remote_code; the server listens on loopback unless told otherwise."""
import json
import pickle
import re
import shutil
import signal
from pathlib import Path

from ledger import record
from helpers import edgewise
from helpers import start_server

SRC = Path(__file__).resolve().parents[2] / "src" / "edgewise"


class Payload:
    """Unpickling this creates the file `path`: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_pickle_checkpoint_is_never_loaded(tiny_llama, tmp_path):
    model, proof = tmp_path / "model", tmp_path / "UNPICKLED"
    shutil.copytree(tiny_llama, model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(str(proof))))
    done = edgewise("quantize", "-m", str(model), "--algorithm", "rtn", "-o", str(tmp_path / "out"),
                    "--cache_dir", str(tmp_path / "cache"))
    ok = done.returncode == 2 and "safetensors only" in done.stderr and not proof.exists()
    record("safety", "a model folder holding only a malicious pickle", "pass" if ok else "FAIL",
           unpickled=proof.exists())
    assert done.returncode == 2 and "safetensors only" in done.stderr, done.stderr
    assert not proof.exists()


def test_no_unsafe_deserialization_in_the_source():
    """Every torch.load is weights_only=True; nothing imports pickle, dill, joblib or cloudpickle."""
    calls = unsafe = 0
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            calls += 1
            unsafe += "weights_only=True" not in call
        unsafe += len(re.findall(r"^\s*(?:import|from)\s+(?:pickle|dill|joblib|cloudpickle)\b", text, re.M))
    record("safety", "no unsafe deserialization in the source", "pass" if not unsafe else "FAIL",
           torch_load_calls=calls, unsafe=unsafe)
    assert unsafe == 0


def test_remote_code_runs_only_when_trusted(tiny_llama, tmp_path):
    model, proof = tmp_path / "remote", tmp_path / "REMOTE_CODE_RAN"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="sneaky", auto_map={"AutoConfig": "sneaky.SneakyConfig"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "sneaky.py").write_text(f"open({str(proof)!r}, 'w').close()\n")
    args = ["quantize", "-m", str(model), "--algorithm", "rtn", "--cache_dir", str(tmp_path / "cache")]
    refused = edgewise(*args, "-o", str(tmp_path / "out1"))
    ran_untrusted = proof.exists()
    trusted = edgewise(*args, "-o", str(tmp_path / "out2"), "--trust_remote_code")
    ok = refused.returncode == 2 and "--trust_remote_code" in refused.stderr and not ran_untrusted and proof.exists()
    record("safety", "a model's own code without / with --trust_remote_code", "pass" if ok else "FAIL",
           ran_without_flag=ran_untrusted, ran_with_flag=proof.exists())
    assert refused.returncode == 2 and "--trust_remote_code" in refused.stderr, refused.stderr
    assert not ran_untrusted
    assert proof.exists(), trusted.stderr  # the flag is what lets it run (it then fails: sneaky.py is no config)
    assert trusted.returncode != 0


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on `port`, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_server_binds_loopback_by_default(tiny_onnx):
    proc, url = start_server(tiny_onnx.model, {})
    try:
        port = int(url.rsplit(":", 1)[1])
        addresses = listening_addresses(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    ok = addresses == {"0100007F"}  # 127.0.0.1, little-endian hex
    record("safety", "the server listens on loopback by default", "pass" if ok else "FAIL",
           listening=sorted(addresses))
    assert ok, addresses


def test_server_on_all_interfaces_without_a_key_warns(tiny_onnx):
    proc, url = start_server(tiny_onnx.model, {}, "--host", "0.0.0.0")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    stderr = proc.log.read_text()
    ok = "without --api_key" in stderr
    record("safety", "--host 0.0.0.0 without --api_key warns", "pass" if ok else "FAIL")
    assert ok, stderr
