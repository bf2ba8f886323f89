"""Logging to stderr; data goes to stdout. `--log_level` follows the lab's numbers (0 debug .. 3 error)."""
from __future__ import annotations

import logging
import os
import sys

LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}
log = logging.getLogger("edgewise")


def setup(level: int = 1) -> None:
    handler = logging.StreamHandler(sys.stderr)
    color = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    fmt = "\033[2m[edgewise]\033[0m %(message)s" if color else "[edgewise] %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    log.handlers[:] = [handler]
    log.setLevel(LEVELS.get(level, logging.INFO))
    log.propagate = False
    for noisy in ("transformers", "huggingface_hub", "peft", "onnxruntime", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR if level > 0 else logging.INFO)
