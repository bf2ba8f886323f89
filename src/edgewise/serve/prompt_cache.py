"""The server's prompt cache: the KV cache of prompt pieces already computed, reused by later prompts that begin the
same way (a conversation's history, a shared system prompt, the same question asked again), per adapter.

A prompt is always prefilled in the same pieces, whatever the cache holds: the chat template's head (the tokens every
chat prompt starts with), then blocks of `block` tokens counted from there, then the rest. A piece's key is a digest
of the adapter and every token up to the piece's end, so a cached piece holds exactly the numbers that computing it
would give, and a request's answer never depends on what was served before it. The last piece of a prompt also
keeps its logits (the first token's), so the same prompt again starts decoding without a forward pass. Entries are
dropped least recently used first once their bytes pass the bound."""
from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass

import numpy as np


def pieces(ids: list[int], head: list[int], block: int) -> list[tuple[int, int]]:
    """The prompt's canonical prefill pieces as (start, end) token ranges."""
    n = len(head)
    first = n if 0 < n < len(ids) and ids[:n] == head else 0
    bounds = [0, *([first] if first else []), *range(first + block, len(ids), block), len(ids)]
    return list(zip(bounds[:-1], bounds[1:]))


def piece_keys(adapter: str | None, ids: list[int], spans: list[tuple[int, int]]) -> list[bytes]:
    """One digest per piece, chained: each covers the adapter and every token up to the piece's end."""
    keys, digest = [], (adapter or "").encode() + b"\0"
    for start, end in spans:
        digest = hashlib.blake2b(digest + np.asarray(ids[start:end], np.int64).tobytes(), digest_size=16).digest()
        keys.append(digest)
    return keys


@dataclass
class Entry:
    kv: list  # per layer, the piece's [key, value] rows as the decoder saved them
    logits: np.ndarray | None  # the last position's logits, where this piece ended a prompt
    nbytes: int


class PromptCache:
    """Pieces by key, least recently used first out, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: collections.OrderedDict[bytes, Entry] = collections.OrderedDict()
        self.nbytes = 0

    def get(self, key: bytes, last: bool) -> Entry | None:
        """The piece, if cached (for a prompt's last piece, only with its logits)."""
        entry = self.entries.get(key)
        if entry is None or (last and entry.logits is None):
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, key: bytes, kv: list, logits: np.ndarray | None) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
            logits = logits if logits is not None else old.logits
        nbytes = sum(a.nbytes for pair in kv for a in pair) + (0 if logits is None else logits.nbytes)
        if nbytes > self.max_bytes:
            return
        while self.nbytes + nbytes > self.max_bytes:
            self.nbytes -= self.entries.popitem(last=False)[1].nbytes
        self.entries[key] = Entry(kv, None if logits is None else np.array(logits), nbytes)
        self.nbytes += nbytes
