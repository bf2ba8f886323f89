"""`edgewise serve`: an OpenAI-compatible HTTP server over one exported model and its adapters (uvicorn running
serve/openai_api.py, imported when the server starts so that the command line stays light), with continuous
batching: up to --max_batch requests share each forward pass, --max_queue more wait, the rest get 429."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from edgewise.core.errors import EdgewiseError
from edgewise.core.log import log


@dataclass(frozen=True)
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (loopback unless you say otherwise)"})
    port: int = field(default=8000, metadata={"help": "port to listen on (0: a free one, announced on stderr)"})
    api_key: str | None = field(default=None, metadata={
        "help": "require 'Authorization: Bearer KEY' (default: $EDGEWISE_API_KEY, else none)"})
    max_batch: int = field(default=16, metadata={
        "help": "requests decoded together (each holds a KV-cache slot of --max_context tokens)"})
    max_queue: int = field(default=64, metadata={
        "help": "requests waiting for a slot; beyond this the server answers 429 with Retry-After"})
    timeout: float = field(default=600.0, metadata={
        "help": "seconds a request may take from arrival to its last token (then 504)"})
    max_context: int = field(default=2048, metadata={
        "help": "tokens per request, prompt and answer (at most the model's context); the KV cache holds "
                "max_batch x max_context tokens"})

    prompt_cache: int = field(default=256, metadata={
        "help": "MiB of prompt KV cache kept for reuse: a prompt that begins like an earlier one (a conversation's "
                "history, a shared system prompt) copies those pieces instead of computing them (in device memory "
                "for a CUDA model); 0 turns it off"})

    def check(self) -> None:
        for name in ("max_batch", "max_queue", "timeout", "max_context"):
            if getattr(self, name) <= 0:
                raise EdgewiseError(f"--{name} must be positive")
        if self.prompt_cache < 0:
            raise EdgewiseError("--prompt_cache must be 0 (off) or a positive number of MiB")


def serve(model_dir, adapters: dict[str, str], config: ServeConfig = ServeConfig()) -> None:
    """Run until SIGTERM (exit 0) or SIGINT; uvicorn finishes the requests in flight first."""
    import signal

    import uvicorn

    api_key = config.api_key or os.environ.get("EDGEWISE_API_KEY")
    if config.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s without --api_key (or $EDGEWISE_API_KEY): anyone who can reach this address "
                    "can use the model", config.host)
    from edgewise.serve.engine import open_engine
    from edgewise.serve.openai_api import Server, create_app

    config.check()
    sock = listen(config.host, config.port)  # before the model loads: a port in use fails at once
    port = sock.getsockname()[1]
    engine = open_engine(model_dir, adapters, config.max_batch, config.max_queue, config.max_context,
                         config.prompt_cache * 2**20)
    server = Server(engine, config.timeout)
    decoder = engine.batcher.decoder
    log.info("serving %s on http://%s:%d/v1 (chat page: /, OpenAPI: /openapi.json, metrics: /metrics); %d slots of "
             "%d tokens, cache %.2f GiB", model_dir, config.host, port, decoder.slots, engine.context_length,
             decoder.cache_bytes / 2**30)
    app = create_app(server, api_key)
    # uvicorn re-raises the signal that stopped it once it has shut down; for SIGTERM that lands here: a clean exit
    signal.signal(signal.SIGTERM, lambda *_: log.info("stopped (SIGTERM)"))
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10)).run(sockets=[sock])
    finally:
        server.close()


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound; one clear line if the address is taken or not this machine's."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EdgewiseError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
