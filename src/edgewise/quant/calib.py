"""Calibration: token windows from texts, the inputs of the first decoder layer, and per-linear input statistics.

Every algorithm here needs only two statistics of a linear's input X (tokens x features): the Gram matrix
H = X^T X, which turns any output error ||X dW^T||^2 into trace(dW H dW^T), and the mean |x| per feature."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from edgewise.models.checkpoint import decoder_layers


@dataclass
class InputStats:
    gram: torch.Tensor  # [in, in], summed over tokens
    abs_sum: torch.Tensor  # [in]
    tokens: int = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.gram += x.t() @ x
        self.abs_sum += x.abs().sum(0)
        self.tokens += x.shape[0]

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.tokens, 1)


def token_windows(tokenizer, texts: list[str], num_samples: int, seq_len: int) -> torch.Tensor:
    """[n, seq_len] windows cut from the concatenated texts (repeated if they are short)."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("calibration texts are empty")
    needed = num_samples * seq_len
    while len(ids) < needed:
        ids = ids + ids
    return torch.tensor(ids[:needed]).reshape(num_samples, seq_len)


class _Captured(Exception):
    pass


def first_layer_inputs(model, windows: torch.Tensor, batch_size: int):
    """Hidden states entering decoder layer 0 for each batch, and the keyword arguments each decoder layer receives
    (a list, one per layer: where layers differ in kind, as Gemma's sliding-window and global ones, each kind gets its
    own mask and rotary embeddings). The first batch runs up to the last layer to see them all; the others stop at
    layer 0."""
    layers = decoder_layers(model)
    hidden, kwargs, stop = [], [{} for _ in layers], [len(layers) - 1]

    def grab(i):
        def hook(_module, args, kw):
            if i == 0:
                hidden.append(args[0] if args else kw["hidden_states"])
            kwargs[i] = {k: v for k, v in kw.items() if k not in ("hidden_states", "past_key_values", "cache")}
            if i == stop[0]:
                raise _Captured
        return hook

    handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    try:
        for batch in windows.split(batch_size):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _Captured:
                pass
            stop[0] = 0
    finally:
        for handle in handles:
            handle.remove()
    for kw in kwargs:
        kw["use_cache"] = False
    return hidden, kwargs


def run_layer(layer, hidden: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
    out = []
    for h in hidden:
        res = layer(h, **kwargs)
        out.append(res[0] if isinstance(res, tuple) else res)
    return out


def layer_stats(layer, names: list[str], hidden: list[torch.Tensor], kwargs: dict, blocks: tuple[str, ...] = (),
                max_tokens: int = 4096) -> tuple[dict[str, InputStats], dict[str, torch.Tensor]]:
    """Input statistics of the named linears of one decoder layer over all calibration batches, and the inputs of the
    named token-wise `blocks` (every k-th token, at most about `max_tokens` of them)."""
    stats, captured, handles = {}, {b: [] for b in blocks}, []
    stride = -(-sum(h.shape[0] * h.shape[1] for h in hidden) // max_tokens)
    for name in names:
        module = layer.get_submodule(name)
        n = module.in_features
        dev = module.weight.device
        stats[name] = InputStats(torch.zeros(n, n, device=dev), torch.zeros(n, device=dev))
        handles.append(module.register_forward_hook(lambda _m, inp, _o, s=stats[name]: s.add(inp[0].detach())))
    for name in blocks:
        handles.append(layer.get_submodule(name).register_forward_pre_hook(
            lambda _m, inp, keep=captured[name]: keep.append(inp[0].detach().reshape(-1, inp[0].shape[-1])[::stride])))
    try:
        run_layer(layer, hidden, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return stats, {name: torch.cat(xs) for name, xs in captured.items()}
