"""finetune: LoRA on the user's data. On a quantized base the model holds exactly the dequantized int4 weights that
inference uses. Writes `adapter/` (standard PEFT files) and `model/` (the base as hard links, not a copy). The training
itself is compute/training.py (imported when the pass runs: the config and its checks stay light)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgewise.core.artifact import ADAPTER, MODEL, Artifact
from edgewise.core.errors import EdgewiseError
from edgewise.core.fsutil import MANIFEST, link_tree
from edgewise.passes import register
from edgewise.sources import datasets


@dataclass(frozen=True)
class FinetuneConfig:
    data_files: str = field(default="", metadata={"help": "training data file", "path": True})
    data_name: str = field(default="json", metadata={"help": "format of --data_files", "choices": datasets.FORMATS})
    text_template: str | None = field(default=None, metadata={
        "help": "template with {column} placeholders; loss falls after {response} (default: the chat template)"})
    data_split: str | None = field(default=None, metadata={
        "help": "records to use, START:STOP by index or percentage, e.g. ':80%%' (default: all)"})
    prompt_column: str = field(default="prompt", metadata={"help": "prompt column for the chat template"})
    response_column: str = field(default="response", metadata={"help": "response column"})
    method: str = field(default="lora", metadata={"help": "lora, or qlora (LoRA over a 4-bit AWQ base)",
                                                  "choices": ("lora", "qlora")})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha/r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    target_modules: str | None = field(default=None, metadata={
        "help": "comma-separated linears to adapt (default: per architecture, e.g. q_proj,v_proj)"})
    max_steps: int = field(default=100, metadata={"help": "optimizer steps"})
    learning_rate: float = field(default=2e-3, metadata={
        "help": "peak learning rate (linear warmup and decay); 2e-3 measured best for 100 LoRA steps on the default "
                "model (BENCHMARKS.md)"})
    batch_size: int = field(default=1, metadata={"help": "examples per micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_seq_len: int = field(default=512, metadata={"help": "tokens per example (longer ones are truncated)"})
    response_only: bool = field(default=True, metadata={"help": "loss on response tokens only"})
    eval_split: float = field(default=0.0, metadata={
        "help": "fraction of the records held out: their response loss is reported before and after training"})
    eval_data_files: str | None = field(default=None, metadata={
        "help": "held-out records in a file of their own (same format and template), instead of --eval_split",
        "path": True})
    eval_data_split: str | None = field(default=None, metadata={"help": "records of --eval_data_files to use"})
    eval_steps: int = field(default=0, metadata={
        "help": "score the held-out records every N steps too (0: before and after training only; with "
                "--early_stopping: every max_steps/10)"})
    early_stopping: int = field(default=0, metadata={
        "help": "stop once the held-out loss has not improved for N evaluations; the best adapter is kept"})
    save_steps: int = field(default=25, metadata={"help": "checkpoint every N steps (an interrupted run resumes)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda", "choices": ("auto", "cpu", "cuda")})
    nproc: int = field(default=1, metadata={
        "help": "processes (torchrun DDP: one per GPU, or shares of the CPU cores); each step's micro-batches are "
                "split among them"})
    sharding: str = field(default="ddp", metadata={
        "help": "with --nproc: ddp (a full model copy per process) or fsdp (parameters sharded across processes, "
                "for models that do not fit one device)", "choices": ("ddp", "fsdp")})
    seed: int = field(default=42, metadata={"help": "random seed"})

    def check(self) -> None:
        """Cheap checks before any work: the values, and that the data file loads and fits the template."""
        positive = ("lora_r", "lora_alpha", "max_steps", "batch_size", "gradient_accumulation_steps", "max_seq_len",
                    "save_steps", "nproc")
        for name in positive:
            if getattr(self, name) < 1:
                raise EdgewiseError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_steps", "early_stopping"):
            if getattr(self, name) < 0:
                raise EdgewiseError(f"--{name} must be 0 or more, got {getattr(self, name)}")
        if self.early_stopping and not (self.eval_split or self.eval_data_files):
            raise EdgewiseError("--early_stopping needs held-out records: --eval_split or --eval_data_files")
        if self.eval_data_files:
            datasets.load_formatted(self.eval_data_files, self.data_name, self.text_template, self.prompt_column,
                                    self.response_column, self.eval_data_split)
        if not (0 <= self.lora_dropout < 1 and 0 <= self.eval_split < 1 and self.learning_rate > 0):
            raise EdgewiseError("--lora_dropout and --eval_split must lie in [0, 1), --learning_rate above 0")
        if not self.data_files:
            raise EdgewiseError("finetune needs --data_files")
        datasets.load_formatted(self.data_files, self.data_name, self.text_template, self.prompt_column,
                                self.response_column, self.data_split)


@register("finetune", FinetuneConfig)
def run(artifact: Artifact, config: FinetuneConfig, out, work) -> dict:
    from edgewise.compute import distributed, training
    from edgewise.models.hf_config import quantization_config

    if config.method == "qlora" and not quantization_config(artifact.path):
        raise EdgewiseError("method qlora trains over a quantized base: quantize first (commands and workflows add "
                            "that step themselves)")
    if config.nproc > 1:
        arguments = {"model_path": str(artifact.path), "config": dataclasses.asdict(config), "out": str(out),
                     "work": str(work)}
        metrics = distributed.launch(config.nproc, f"{__name__}:worker", arguments, work)
    else:
        metrics = training.train_and_save(artifact.path, config, out, work)
    _record_base(out / ADAPTER, artifact)
    # The base's own manifest stays out: OUT/model is identified (and its lineage told) by OUT's manifest.
    link_tree(artifact.path, out / MODEL, skip=(MANIFEST,))
    return metrics


def worker(model_path: str, config: dict, out: str, work: str) -> dict:
    """One torchrun process of a `--nproc N` finetune (see compute.distributed.launch)."""
    from edgewise.compute.training import train_and_save

    return train_and_save(Path(model_path), FinetuneConfig(**config), Path(out), Path(work))


def _record_base(adapter_dir, artifact: Artifact) -> None:
    path = adapter_dir / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = str(artifact.path)
    if isinstance(cfg.get("target_modules"), list):  # PEFT writes a set, in an order that changes between runs
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2))
