"""LoRA training of a finetune pass (passes/finetune.py holds its config): held-out records, micro-batches, the
optimizer loop with checkpoints that an interrupted run resumes from, and the held-out loss with early stopping. It
runs in one process or as one torchrun rank (compute.distributed)."""
from __future__ import annotations

import math
import random
import time
import warnings

import torch
from tqdm.auto import tqdm

from edgewise.compute import devices, distributed
from edgewise.core.artifact import ADAPTER
from edgewise.core.errors import EdgewiseError
from edgewise.core.log import log
from edgewise.models.archs import arch_for
from edgewise.models.checkpoint import load_model, load_tokenizer
from edgewise.sources import datasets


def lora_targets(config, model) -> list[str]:
    if config.target_modules:
        return [t.strip() for t in config.target_modules.split(",") if t.strip()]
    return list(arch_for(model.config).lora_targets)


def prepare_data(config, tokenizer) -> tuple[list[dict], list[dict]]:
    """Training examples and held-out ones (--eval_split of the records, or --eval_data_files); held-out examples
    are scored on their response tokens."""
    records, formatter = datasets.load_formatted(config.data_files, config.data_name, config.text_template,
                                                 config.prompt_column, config.response_column, config.data_split)
    random.Random(config.seed).shuffle(records)
    if config.eval_data_files:
        held, held_formatter = datasets.load_formatted(config.eval_data_files, config.data_name, config.text_template,
                                                       config.prompt_column, config.response_column,
                                                       config.eval_data_split)
    else:
        n_eval = int(len(records) * config.eval_split)
        held, records, held_formatter = records[:n_eval], records[n_eval:], formatter
    if (config.eval_split or config.eval_data_files) and not held:
        raise EdgewiseError(f"no held-out records: --eval_split {config.eval_split} of {len(records)} records is none"
                            if not config.eval_data_files else f"{config.eval_data_files} selects no records")
    train = datasets.tokenize(records, formatter, tokenizer, config.max_seq_len, config.response_only)
    return train, datasets.tokenize(held, held_formatter, tokenizer, config.max_seq_len) if held else []


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ex["input_ids"]) for ex in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), datasets.IGNORE)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(ex["input_ids"]), torch.tensor(ex["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def batches(examples: list[dict], size: int, seed: int):
    """Endless shuffled micro-batches; epoch e uses the seed + e so a resumed run sees the same order."""
    epoch = 0
    while True:
        order = list(range(len(examples)))
        random.Random(seed + epoch).shuffle(order)
        for start in range(0, len(order), size):
            yield [examples[i] for i in order[start:start + size]]
        epoch += 1


def train_and_save(model_path, config, out, work) -> dict:
    """Train the LoRA adapter and write `out/adapter`; in a torchrun worker, as one rank of DDP (rank 0 writes)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    device = devices.resolve(config.device)
    if distributed.launched():
        device = distributed.setup(device)
    tokenizer = load_tokenizer(model_path)
    train, held_out = prepare_data(config, tokenizer)
    model = load_model(model_path, torch.float32, device)
    targets = lora_targets(config, model)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = get_peft_model(model, lora)
    except ValueError as exc:
        raise EdgewiseError(f"cannot apply LoRA to {targets}: {str(exc).splitlines()[0]}") from exc
    trained = distributed.wrap(model, config.sharding)
    start = time.time()
    pad_id = tokenizer.pad_token_id or 0
    held = HeldOut(held_out, lambda: eval_loss(model, held_out, config, pad_id, device), model, config)
    losses = train_loop(trained, train, config, pad_id, device, work, held)
    metrics = {"train_loss_first": losses[0], "train_loss_last": sum(losses[-10:]) / len(losses[-10:]),
               "examples": len(train), "targets": targets, "train_seconds": round(time.time() - start, 2),
               "processes": distributed.world(), "steps": len(losses), **held.metrics()}
    lora_state, _ = distributed.full_state(model)  # every rank takes part when the weights are sharded
    if distributed.rank() == 0:
        model.save_pretrained(out / ADAPTER, state_dict=lora_state)
    return metrics


class HeldOut:
    """The held-out response loss over training: before the first step, every `eval_steps`, after the last. With
    --early_stopping, training stops once it has not improved for that many evaluations and the best adapter is
    restored. Every rank scores (the same loss), so all of them stop together."""

    def __init__(self, examples: list[dict], score, model, config):
        self.enabled, self.score, self.model = bool(examples), score, model
        self.patience = config.early_stopping
        self.every = config.eval_steps or (max(1, config.max_steps // 10) if self.patience else 0)
        self.history: list[list] = []  # [step, loss]
        self.best: tuple | None = None  # (loss, step, trainable tensors)

    def due(self, step: int) -> bool:
        return self.enabled and self.every > 0 and step % self.every == 0

    def evaluate(self, step: int) -> float:
        loss = self.score()
        self.model.train()
        self.history.append([step, round(loss, 5)])
        if self.best is None or loss < self.best[0]:
            self.best = (loss, step, {n: p.detach().clone() for n, p in self._trainable()})
        return loss

    def stop(self) -> bool:
        if not (self.patience and self.best):
            return False
        return sum(1 for step, _ in self.history if step > self.best[1]) >= self.patience

    def finish(self, step: int) -> None:
        """The last evaluation; with early stopping the best adapter is put back."""
        if not self.enabled:
            return
        if self.history[-1][0] != step:
            self.evaluate(step)
        if self.patience and self.best[1] != step:
            with torch.no_grad():
                for name, param in self._trainable():
                    param.copy_(self.best[2][name])
            log.info("finetune: keeping the adapter of step %d (held-out loss %.4f)", self.best[1], self.best[0])
        kept, before = self.metrics()["eval_loss"], self.history[0][1]
        if distributed.rank() == 0:
            log.info("finetune: held-out response loss %.3f -> %.3f (%.3fx)", before, kept, kept / before)

    def _trainable(self):
        return ((n, p) for n, p in self.model.named_parameters() if p.requires_grad)

    def state(self) -> dict:
        return {"history": self.history, "best": list(self.best) if self.best else None}

    def restore(self, state: dict) -> None:
        self.history, self.best = state["history"], tuple(state["best"]) if state["best"] else None

    def metrics(self) -> dict:
        if not self.enabled:
            return {}
        kept = self.best if self.patience else (self.history[-1][1], self.history[-1][0])
        return {"eval_loss_before": self.history[0][1], "eval_loss": round(kept[0], 5), "eval_step": kept[1],
                "eval_history": self.history}


def train_loop(model, examples, config, pad_id: int, device: str, work,
               held: HeldOut) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    warmup = max(1, config.max_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, max(
        0.0, (config.max_steps - s) / max(1, config.max_steps - warmup))))
    step, losses = _resume(model, optimizer, schedule, work, held)
    per_step = config.gradient_accumulation_steps * distributed.world()  # micro-batches per optimizer step, all ranks
    stream = batches(examples, config.batch_size, config.seed)
    for _ in range(step * per_step):
        next(stream)
    bar = tqdm(total=config.max_steps, initial=step, desc="finetune", unit="step", leave=False,
               disable=distributed.rank() > 0)
    postfix = {}
    if held.enabled and step == 0:
        postfix["eval"] = f"{held.evaluate(0):.3f}"
    model.train()
    while step < config.max_steps and not held.stop():
        total = 0.0
        mine = [next(stream) for _ in range(per_step)][distributed.rank()::distributed.world()]
        for micro in mine:
            batch = {k: v.to(device) for k, v in collate(micro, pad_id).items()}
            with devices.autocast(device):
                loss = model(**batch).loss / config.gradient_accumulation_steps
            loss.backward()  # DDP averages the gradients over the ranks
            total += loss.item()
        total = distributed.mean(total)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(total)
        postfix["loss"] = f"{total:.3f}"
        if held.due(step):
            postfix["eval"] = f"{held.evaluate(step):.3f}"
        bar.set_postfix(postfix)
        bar.update(1)
        if step % config.save_steps == 0 and step < config.max_steps:
            _checkpoint(model, optimizer, schedule, step, losses, work, held)
    bar.close()
    if step < config.max_steps:
        log.info("finetune: early stop at step %d (held-out loss not better for %d evaluations)", step,
                 held.patience)
    held.finish(step)
    if not all(math.isfinite(x) for x in losses):
        raise EdgewiseError("training diverged (loss is not finite): lower --learning_rate")
    log.info("finetune: loss %.3f -> %.3f over %d steps", losses[0], sum(losses[-10:]) / len(losses[-10:]), step)
    return losses


def _checkpoint(model, optimizer, schedule, step, losses, work, held: HeldOut) -> None:
    lora, optim = distributed.full_state(model, optimizer)  # a collective under FSDP: every rank calls it
    if distributed.rank() > 0:
        return
    state = {"step": step, "losses": losses, "optimizer": optim, "schedule": schedule.state_dict(),
             "lora": lora, "rng": torch.get_rng_state(), "held_out": held.state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    tmp = work / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(work / "checkpoint.pt")


def _resume(model, optimizer, schedule, work, held: HeldOut):
    path = work / "checkpoint.pt"
    if not path.is_file():
        return 0, []
    state = torch.load(path, weights_only=True)
    distributed.load_full_state(model, optimizer, state["lora"], state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])  # dropout masks continue exactly where the interrupted run stopped
    held.restore(state["held_out"])
    if "cuda_rng" in state:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    log.info("finetune: resuming at step %d", state["step"])
    return state["step"], state["losses"]


@torch.no_grad()
def eval_loss(model, examples, config, pad_id: int, device: str) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), config.batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + config.batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != datasets.IGNORE).sum())
        with devices.autocast(device):
            total += model(**batch).loss.item() * n
        count += n
    return total / max(count, 1)
