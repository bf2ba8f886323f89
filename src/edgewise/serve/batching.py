"""Continuous batching: requests in flight share the decoder's forward passes.

One engine thread owns the decoder (a `Decoder`: the slot decoder or the one-slot decoder). Each turn it admits
waiting requests into free slots (prefilling each prompt into its slot, which yields its first token), then runs
one decode step for every running request at once, each row with its own adapter, position and sampler, and hands
each request its next token. A request leaves the batch when it meets an end-of-sequence token, its token budget, its deadline or a cancellation (a client that went away), and
its slot is free for the next turn. A request's tokens depend only on its own prompt, adapter and seed.

A prompt is prefilled one piece a turn, always in the same pieces (the chat template's head, then blocks of the
decoder's prefill_chunk): pieces already in the prompt cache (prompt_cache.py) are copied into the slot instead of
computed. Because the pieces never depend on what ran before, a request computes exactly the same numbers whether
its prompt was cached or not."""
from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from edgewise.core.errors import EdgewiseError
from edgewise.core.log import log
from edgewise.runtime.sampling import Sampler, Sampling
from edgewise.serve.prompt_cache import PromptCache, piece_keys, pieces


@runtime_checkable
class Decoder(Protocol):
    """What the batcher drives: `slots` sequences, each with its own adapter and its own position. The slot decoder
    (decoder.py: CPU and CUDA models, many slots) and the one-slot decoder (one_slot.py: pipelines, DirectML, WebGPU
    through genai) implement it."""

    slots: int
    context: int  # tokens a slot holds, prompt and answer
    prefill_chunk: int  # a prompt is prefilled in pieces of at most this many tokens
    adapters: Collection[str]
    eos: set[int]
    can_save: bool  # save() and load() copy a slot's cache (the prompt cache needs them)

    @property
    def cache_bytes(self) -> int: ...

    def assign(self, slot: int, adapter: str | None) -> None:
        """The slot's next request starts, with this adapter (None: the base)."""

    def prefill(self, slot: int, ids: list[int], start: int = 0) -> np.ndarray:
        """The slot's prompt tokens at positions start.. into its cache; the logits after the last one."""

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One step for slots 0..len(tokens)-1: token r goes in at position lengths[r]; logits [rows, vocab]."""

    def save(self, slot: int, start: int, end: int) -> list:
        """A copy of the slot's cache for its tokens start..end-1."""

    def load(self, slot: int, start: int, saved: list) -> None:
        """A saved copy written into the slot's cache from position start."""



class QueueFull(EdgewiseError):
    """The server's queue of waiting requests is at its bound."""


@dataclass(frozen=True)
class Finished:
    reason: str  # stop | length | timeout | cancelled | error
    detail: str = ""


@dataclass(eq=False)
class Job:
    """One request: the engine puts its tokens (ints) and finally a Finished on `out` (anything with put(), called
    from the engine thread: a queue.SimpleQueue, or a bridge into an event loop)."""

    ids: list[int]
    adapter: str | None
    sampling: Sampling
    timeout: float | None = None
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    # engine-side state
    slot: int = -1
    length: int = 0  # tokens in the slot's cache
    prefilled: int = 0  # prompt tokens in the cache so far
    spans: list = field(default_factory=list)  # the prompt's prefill pieces, (start, end)
    keys: list = field(default_factory=list)  # their prompt-cache digests (none without a cache)
    produced: int = 0
    last: int = 0
    first_token_at: float | None = None
    end: Finished | None = None
    sampler: Sampler | None = None

    def cancel(self) -> None:
        self.cancelled = True

    def expired(self, now: float) -> bool:
        return self.timeout is not None and now - self.submitted > self.timeout

    def abandoned(self, now: float) -> Finished | None:
        """Why the job ends before its next step (its client left, or its deadline passed), or None."""
        return Finished("cancelled") if self.cancelled else Finished("timeout") if self.expired(now) else None

    def results(self):
        """The generated token ids as they come (`end` says why they stopped)."""
        while not isinstance(item := self.out.get(), Finished):
            yield item


class Batcher:
    """The engine thread and its queue; `submit` is called from any thread."""

    def __init__(self, decoder: Decoder, eos: set[int], max_queue: int = 64, metrics=None,
                 prefix: list[int] | None = None, cache_bytes: int = 256 * 2**20):
        self.decoder, self.eos, self.max_queue, self.metrics = decoder, eos, max_queue, metrics
        self.prefix = list(prefix or [])  # the chat template's head: a prompt's first piece where it starts so
        self.cache = PromptCache(cache_bytes) if cache_bytes > 0 and decoder.can_save else None
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: dict[int, Job] = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="edgewise-batcher", daemon=True)
        self.thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def batch_size(self) -> int:
        return len(self.running)

    def submit(self, job: Job) -> Job:
        if job.adapter is not None and job.adapter not in self.decoder.adapters:
            raise EdgewiseError(f"unknown adapter '{job.adapter}'")
        with self.cond:
            for gone in [j for j in self.waiting if j.cancelled]:  # clients that left while waiting free their place
                self.waiting.remove(gone)
                self._finish(gone, Finished("cancelled"))
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (the bound is {self.max_queue})")
            self.waiting.append(job)
            self.cond.notify()
        return job

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout=30)

    # --- the engine thread -----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not (self.waiting or self.running or self.stopping):
                    self.cond.wait()
                if self.stopping:
                    break
                admitted = self._admit()
            try:
                self._turn(admitted)
            except Exception as exc:  # noqa: BLE001 - a failed step fails the requests in it, never the server
                log.error("generation failed: %s", exc)
                for job in list(self.running.values()):
                    self._finish(job, Finished("error", str(exc)))
        for job in [*self.waiting, *self.running.values()]:
            self._finish(job, Finished("cancelled", "the server is shutting down"))

    def _admit(self) -> list[Job]:
        free = [s for s in range(self.decoder.slots) if s not in self.running]
        admitted = []
        now = time.monotonic()
        while self.waiting and free:
            job = self.waiting.popleft()
            if end := job.abandoned(now):
                self._finish(job, end)
                continue
            job.slot = free.pop(0)
            self.running[job.slot] = job
            admitted.append(job)
        return admitted

    def _turn(self, admitted: list[Job]) -> None:
        now = time.monotonic()
        for job in list(self.running.values()):
            if end := job.abandoned(now):
                self._finish(job, end)
        for job in admitted:
            if job.slot in self.running:
                self.decoder.assign(job.slot, job.adapter)
        for job in [j for j in self.running.values() if j.prefilled < len(j.ids)]:
            try:
                self._prefill(job)
            except Exception as exc:  # noqa: BLE001 - one prompt that fails fails its own request only
                log.error("prompt failed: %s", exc)
                self._finish(job, Finished("error", str(exc)))
        decoding = [j for j in self.running.values() if j.prefilled == len(j.ids)]
        if decoding:
            self._step(decoding)

    def _prefill(self, job: Job) -> None:
        """The job's next piece of prompt, after any that the cache holds; the last piece gives its first token."""
        if not job.spans:
            job.spans = pieces(job.ids, self.prefix, self.decoder.prefill_chunk)
            job.keys = piece_keys(job.adapter, job.ids, job.spans) if self.cache else []
        logits = None
        for i, (start, end) in enumerate(job.spans):
            if end <= job.prefilled:
                continue
            last = i == len(job.spans) - 1
            entry = self.cache.get(job.keys[i], last) if self.cache else None
            if entry is not None:
                self.decoder.load(job.slot, start, entry.kv)
                job.prefilled = job.length = end
                logits = entry.logits
                if self.metrics:
                    self.metrics.cached(end - start)
                continue
            logits = self.decoder.prefill(job.slot, job.ids[start:end], start)
            job.prefilled = job.length = end
            if self.cache:
                self.cache.put(job.keys[i], self.decoder.save(job.slot, start, end), logits if last else None)
            break  # one computed piece a turn: decode steps run between a long prompt's pieces
        if job.prefilled == len(job.ids):
            job.sampler = Sampler(job.sampling)
            job.first_token_at = time.monotonic()
            if self.metrics:
                self.metrics.first_token(job)
            self._emit(job, job.sampler(logits))

    def _step(self, jobs: list[Job]) -> None:
        rows = max(j.slot for j in jobs) + 1
        tokens, lengths = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
        for job in self.running.values():  # a row still in its prompt: its padding goes where its next piece will
            if job.slot < rows:
                lengths[job.slot] = job.length
        for job in jobs:
            tokens[job.slot], lengths[job.slot] = job.last, job.length
        logits = self.decoder.decode(tokens, lengths)
        if self.metrics:
            self.metrics.step(len(jobs))
        for job in jobs:
            job.length += 1
            self._emit(job, job.sampler(logits[job.slot]))

    def _emit(self, job: Job, token: int) -> None:
        if token in self.eos:
            self._finish(job, Finished("stop"))
            return
        job.out.put(token)
        job.produced += 1
        job.last = token
        if job.produced >= job.sampling.max_new_tokens or job.length >= self.decoder.context:
            self._finish(job, Finished("length"))

    def _finish(self, job: Job, end: Finished) -> None:
        if self.running.get(job.slot) is job:
            del self.running[job.slot]
        job.end = end
        if self.metrics:  # counted before the client can see the end (and read /metrics right after it)
            self.metrics.finished(job, end)
        job.out.put(end)
