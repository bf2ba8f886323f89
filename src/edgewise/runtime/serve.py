"""`edgewise serve`: an OpenAI-compatible HTTP server over one exported model and its adapters (uvicorn running
runtime/openai_api.py, imported when the server starts so that the command line stays light)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from edgewise.core.log import log


@dataclass(frozen=True)
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (loopback unless you say otherwise)"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    api_key: str | None = field(default=None, metadata={
        "help": "require 'Authorization: Bearer KEY' (default: $EDGEWISE_API_KEY, else none)"})
    parallel: int = field(default=4, metadata={"help": "generations run at once; more requests wait their turn"})


def serve(model_dir, adapters: dict[str, str], config: ServeConfig = ServeConfig()) -> None:
    """Run until SIGTERM (exit 0) or SIGINT; uvicorn finishes the requests in flight first."""
    import signal

    import uvicorn

    api_key = config.api_key or os.environ.get("EDGEWISE_API_KEY")
    if config.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s without --api_key (or $EDGEWISE_API_KEY): anyone who can reach this address "
                    "can use the model", config.host)
    from edgewise.runtime.genai import Runtime
    from edgewise.runtime.openai_api import Server, create_app

    server = Server(Runtime(model_dir, adapters), config.parallel)
    log.info("serving %s on http://%s:%d/v1 (OpenAPI: /openapi.json)", model_dir, config.host, config.port)
    app = create_app(server, api_key)
    # uvicorn re-raises the signal that stopped it once it has shut down; for SIGTERM that lands here: a clean exit
    signal.signal(signal.SIGTERM, lambda *_: log.info("stopped (SIGTERM)"))
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=10)
