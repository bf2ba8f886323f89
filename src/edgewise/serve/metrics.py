"""The server's /metrics in the Prometheus text format (prometheus_client, one registry per server): requests by
model and outcome, prompt tokens (and those the prompt cache served) and completion tokens, queue depth, running
batch, rows per decode step, time to first token and request latency."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_ROWS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self):
        disable_created_metrics()  # the *_created series only repeat the server's start time
        self.registry = r = CollectorRegistry()
        self.requests = Counter("edgewise_requests", "Requests by served model and outcome", ["model", "outcome"],
                                registry=r)
        self.prompt_tokens = Counter("edgewise_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.cached_tokens = Counter("edgewise_prompt_cached_tokens", "Prompt tokens copied from the prompt cache "
                                     "instead of computed", registry=r)
        self.completion_tokens = Counter("edgewise_completion_tokens", "Generated tokens", registry=r)
        self.queue_depth = Gauge("edgewise_queue_depth", "Requests waiting for a slot", registry=r)
        self.batch_size = Gauge("edgewise_batch_size", "Requests in the running batch", registry=r)
        self.step_rows = Histogram("edgewise_decode_step_requests", "Requests sharing one decode step",
                                   buckets=_ROWS, registry=r)
        self.ttft = Histogram("edgewise_time_to_first_token_seconds", "From arrival to the first token",
                              buckets=_LATENCY, registry=r)
        self.latency = Histogram("edgewise_request_latency_seconds", "From arrival to the last token",
                                 buckets=_LATENCY, registry=r)

    def watch(self, batcher) -> None:
        self.queue_depth.set_function(lambda: batcher.queue_depth)
        self.batch_size.set_function(lambda: batcher.batch_size)

    # called by the batcher's thread
    def first_token(self, job) -> None:
        self.prompt_tokens.inc(len(job.ids))
        self.ttft.observe(job.first_token_at - job.submitted)

    def cached(self, tokens: int) -> None:
        self.cached_tokens.inc(tokens)

    def step(self, requests: int) -> None:
        self.step_rows.observe(requests)

    def finished(self, job, end) -> None:
        self.completion_tokens.inc(job.produced)
        self.requests.labels(job.adapter or "base", end.reason).inc()
        if end.reason in ("stop", "length"):
            self.latency.observe(time.monotonic() - job.submitted)

    def rejected(self, model: str, outcome: str) -> None:
        self.requests.labels(model, outcome).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
