"""Finetuning across processes with torch.distributed, launched by torchrun: DDP, one process per GPU (NCCL) or per
share of the CPU cores (gloo). Each process trains on its share of every optimizer step's micro-batches and the
gradients are averaged, so N processes learn what one process learns with N times the gradient accumulation.

The finetune pass runs `torchrun --nproc_per_node N -m edgewise.distributed JOB.json`; rank 0 writes the adapter
and the metrics, the pass itself publishes the result as usual."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from edgewise.errors import EdgewiseError
from edgewise.log import log


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


def launch(nproc: int, model: Path, config, out: Path, work: Path) -> dict:
    """Run the finetune pass in `nproc` torchrun processes and return rank 0's metrics."""
    job = work / "job.json"
    job.write_text(json.dumps({"model": str(model), "config": dataclasses.asdict(config), "out": str(out),
                               "work": str(work)}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "edgewise.distributed", str(job)]
    log_path = work / "torchrun.log"
    log.info("finetune: %d processes (torchrun, %d threads each); log: %s", nproc, threads, log_path)
    with open(log_path, "w") as handle:
        done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    metrics = work / "metrics.json"
    if done.returncode != 0 or not metrics.is_file():
        errors = [ln for ln in log_path.read_text().splitlines() if "Error" in ln or "error:" in ln]
        raise EdgewiseError(f"distributed finetuning failed: {errors[-1] if errors else 'no output'}"
                            f" (full log: {log_path})")
    return json.loads(metrics.read_text())


def main(job_path: str) -> None:
    from edgewise.passes.finetune import FinetuneConfig, train_and_save

    job = json.loads(Path(job_path).read_text())
    work = Path(job["work"])
    metrics = train_and_save(Path(job["model"]), FinetuneConfig(**job["config"]), Path(job["out"]), work)
    if rank() == 0:
        (work / "metrics.json").write_text(json.dumps(metrics))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
