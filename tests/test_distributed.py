"""Finetuning in 2 processes (torchrun, DDP or FSDP over gloo on the CPU) learns what one process learns with twice the
gradient accumulation: same losses, same adapter weights (up to float summation order)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from helpers import edgewise

from edgewise import engine
from edgewise.passes.finetune import FinetuneConfig


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_learn_like_one(tiny_llama, tiny_data, tmp_path, sharding):
    common = dict(data_files=str(tiny_data), max_steps=5, lora_r=4, learning_rate=1e-2, lora_dropout=0.0,
                  device="cpu")
    art = engine.folder_artifact(tiny_llama)
    one = engine.run_pass("finetune", art, FinetuneConfig(gradient_accumulation_steps=2, eval_split=0.25, **common),
                          tmp_path / "c1")
    out = tmp_path / "ddp"
    done = edgewise("finetune", "-m", str(tiny_llama), "--nproc", "2", "--gradient_accumulation_steps", "1",
                    "--sharding", sharding, "--save_steps", "2", "--eval_split", "0.25",
                    *[f"--{k}={v}" for k, v in common.items()], "--output_path", str(out),
                    "--cache_dir", str(tmp_path / "c2"), "--json")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)["metrics"]
    assert metrics["processes"] == 2 and one.manifest["metrics"]["processes"] == 1
    for key in ("train_loss_first", "train_loss_last", "eval_loss"):
        assert abs(metrics[key] - one.manifest["metrics"][key]) < 1e-4, (key, metrics, one.manifest["metrics"])
    a = load_file(str(one.path / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in b.items() if "lora_B" in k)  # it did learn


def test_fsdp_run_killed_after_a_checkpoint_resumes_to_the_same_adapter(tiny_llama, tiny_data, tmp_path):
    args = ["finetune", "-m", str(tiny_llama), "--nproc", "2", "--sharding", "fsdp", "--data_files", str(tiny_data),
            "--max_steps", "30", "--save_steps", "4", "--lora_r", "4", "--lora_dropout", "0", "--device", "cpu"]
    whole = edgewise(*args, "--output_path", str(tmp_path / "whole"), "--cache_dir", str(tmp_path / "c1"))
    assert whole.returncode == 0, whole.stderr
    cache = tmp_path / "c2"
    proc = subprocess.Popen([sys.executable, "-m", "edgewise", *args, "--output_path", str(tmp_path / "cut"),
                             "--cache_dir", str(cache)], start_new_session=True, stderr=subprocess.DEVNULL)
    while not list(cache.glob("work/*/checkpoint.pt")) and proc.poll() is None:  # its first checkpoint (step 4 of 30)
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, at once
    proc.wait()
    assert list(cache.glob("work/*/checkpoint.pt")) and not (tmp_path / "cut").exists()
    again = edgewise(*args, "--output_path", str(tmp_path / "cut"), "--cache_dir", str(cache))
    assert again.returncode == 0, again.stderr
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed FSDP run must give the uninterrupted run's adapter"
    assert not list(cache.glob("work/*/checkpoint.pt"))  # scratch is dropped once the step is done
