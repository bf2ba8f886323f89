"""Finetuning across processes with torch.distributed, launched by torchrun: DDP or FSDP, one process per GPU (NCCL)
or per share of the CPU cores (gloo). Each process trains on its share of every optimizer step's micro-batches and the
gradients are averaged, so N processes learn what one process learns with N times the gradient accumulation.

The finetune pass runs `torchrun --nproc_per_node N -m edgewise.compute.distributed JOB.json`; rank 0 writes the adapter
and the metrics, the pass itself publishes the result as usual."""
from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from edgewise.core.errors import EdgewiseError
from edgewise.core.log import log


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def launched() -> bool:
    """True inside a torchrun worker."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> str:
    """Join the process group; the device this rank trains on."""
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def mean(value: float) -> float:
    """The average of a number over all ranks."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world()


def wrap(model, sharding: str):
    """DDP keeps a full copy per rank; FSDP (FSDP2's fully_shard) shards each decoder layer's parameters, and the
    rest, across the ranks and gathers a layer's weights only while it runs."""
    if world() == 1:
        return model
    if sharding == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    from edgewise.models.checkpoint import decoder_layers

    for layer in decoder_layers(model.get_base_model() if hasattr(model, "get_base_model") else model):
        fully_shard(layer)
    fully_shard(model)
    return model


def _sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_state(model, optimizer=None) -> tuple[dict, dict | None]:
    """The LoRA weights (and optimizer state) as whole tensors on the CPU; under FSDP a collective of all ranks."""
    if not _sharded(model):
        lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        return lora, optimizer.state_dict() if optimizer else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    lora = {k: v for k, v in get_model_state_dict(model, options=options).items() if "lora_" in k}
    return lora, get_optimizer_state_dict(model, optimizer, options=options) if optimizer else None


def load_full_state(model, optimizer, lora: dict, optim: dict) -> None:
    """Put whole-tensor LoRA weights and optimizer state back (each rank keeps its shard under FSDP)."""
    if not _sharded(model):
        model.load_state_dict(lora, strict=False)
        optimizer.load_state_dict(optim)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, lora, options=options)
    set_optimizer_state_dict(model, optimizer, optim, options=options)


def launch(nproc: int, entry: str, arguments: dict, work: Path) -> dict:
    """Run `entry` ("module:function", called with `arguments` as keywords) in `nproc` torchrun processes and return
    what rank 0's call returned."""
    job = work / "job.json"
    job.write_text(json.dumps({"entry": entry, "arguments": arguments, "work": str(work)}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "edgewise.compute.distributed", str(job)]
    log_path = work / "torchrun.log"
    log.info("%d processes (torchrun, %d threads each); log: %s", nproc, threads, log_path)
    with open(log_path, "w") as handle:
        done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    metrics = work / "metrics.json"
    if done.returncode != 0 or not metrics.is_file():
        errors = [ln for ln in log_path.read_text().splitlines() if "Error" in ln or "error:" in ln]
        raise EdgewiseError(f"distributed run failed: {errors[-1] if errors else 'no output'} (full log: {log_path})")
    return json.loads(metrics.read_text())


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    module, _, function = job["entry"].partition(":")
    result = getattr(importlib.import_module(module), function)(**job["arguments"])
    if rank() == 0:
        (Path(job["work"]) / "metrics.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
