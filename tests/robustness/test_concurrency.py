"""Two lab chains (quantize -> finetune -> auto-opt) at once on one cache, then both outputs pushed to one registry
at once: every pass runs once (the other chain waits on its lock and takes the cached result), both chains end
with the same files, and the two pushes get distinct whole versions."""
import json
import subprocess
import sys
import threading

from ledger import record
from helpers import digests


def chain(tiny_llama, tiny_data, cache, out, registry, logs: list) -> None:
    steps = [
        ["quantize", "--model_name_or_path", str(tiny_llama), "--algorithm", "gptq", "--num_samples", "4",
         "--seq_len", "64", "-o", str(out / "q")],
        ["finetune", "--model_name_or_path", str(out / "q"), "--data_files", str(tiny_data), "--max_steps", "10",
         "--lora_r", "4", "-o", str(out / "ft")],
        ["auto-opt", "--model_name_or_path", str(out / "ft"), "--precision", "int4", "-o", str(out / "onnx"),
         "--register", "travel", "--registry", str(registry)],
    ]
    for args in steps:
        done = subprocess.run([sys.executable, "-m", "edgewise", *args, "--cache_dir", str(cache)],
                              capture_output=True, text=True, timeout=600)
        logs.append(done)
        if done.returncode:
            return


def test_two_chains_share_one_cache_and_push_at_once(tiny_llama, tiny_data, tmp_path):
    cache, registry = tmp_path / "cache", tmp_path / "registry"
    logs = [[], []]
    threads = [threading.Thread(target=chain, args=(tiny_llama, tiny_data, cache, tmp_path / f"chain{i}", registry,
                                                    logs[i])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [d.stderr[-2000:] for runs in logs for d in runs if d.returncode]
    ran = sum(d.stderr.count(": running") for runs in logs for d in runs)
    outputs = [digests(tmp_path / f"chain{i}" / "onnx") for i in range(2)]
    listed = subprocess.run([sys.executable, "-m", "edgewise", "registry", "list", "--json", "--registry",
                             str(registry)], capture_output=True, text=True)
    versions = sorted(r["version"] for r in json.loads(listed.stdout or "[]"))
    ok = not failed and ran == 3 and outputs[0] == outputs[1] and versions == [1, 2]
    record("concurrency", "two chains on one cache, then two registry pushes at once", "pass" if ok else "FAIL",
           passes_run=ran, of=6, versions=versions)
    assert not failed, failed
    assert ran == 3, "each pass must run once; the other chain takes it from the cache"
    assert outputs[0] == outputs[1] and outputs[0]
    assert versions == [1, 2]
    pulled = [subprocess.run([sys.executable, "-m", "edgewise", "registry", "pull", f"travel@{v}", "--to",
                              str(tmp_path / f"pulled{v}"), "--registry", str(registry)], capture_output=True,
                             text=True) for v in versions]
    assert all(p.returncode == 0 for p in pulled), [p.stderr for p in pulled]
    assert digests(tmp_path / "pulled1") == digests(tmp_path / "pulled2") == outputs[0]
