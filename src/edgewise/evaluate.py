"""Quality measurements on PyTorch models: perplexity over fixed token windows."""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    """exp(mean next-token loss) over [n, seq_len] windows."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                 reduction="sum")
        total += loss.item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)


def stdlib_prose(modules: tuple[str, ...] = ("argparse", "json", "collections", "logging", "pathlib", "subprocess",
                                             "threading", "unittest", "email", "http.client")) -> list[str]:
    """Held-out English prose available offline on any machine: docstrings of Python standard-library modules."""
    import importlib
    import inspect

    texts = []
    for name in modules:
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj) or obj is module) else None
            if doc and len(doc) > 200:
                texts.append(doc)
    return texts
