"""How the next token is chosen: greedy, or sampled with temperature, top-k and top-p from a per-request seeded
generator, so that one request's answer depends on its own seed and logits only, never on what else is running."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = field(default=128, metadata={"help": "tokens to generate at most"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling: keep the most likely tokens up to this mass"})
    top_k: int = field(default=50, metadata={"help": "sample among this many most likely tokens"})
    seed: int | None = field(default=None, metadata={"help": "sampling seed (reproducible answers)"})


class Sampler:
    """Picks tokens for one request: argmax when greedy, else a draw from the renormalised top-k / top-p set."""

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)

    def __call__(self, logits: np.ndarray) -> int:
        s = self.sampling
        if s.temperature <= 0:
            return int(np.argmax(logits))
        k = min(max(s.top_k, 1), logits.shape[-1])
        top = np.argpartition(logits, -k)[-k:]
        top = top[np.argsort(-logits[top], kind="stable")]
        z = logits[top].astype(np.float64)
        with np.errstate(over="ignore"):  # shifted first: a tiny temperature gives 0 and -inf, never inf - inf
            p = np.exp((z - z[0]) / s.temperature)
        p /= p.sum()
        keep = min(int(np.searchsorted(np.cumsum(p), s.top_p)) + 1, k)  # the token that crosses top_p stays in
        p = p[:keep] / p[:keep].sum()
        return int(top[self.rng.choice(keep, p=p)])
