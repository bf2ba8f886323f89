"""What the robustness suite measured, one JSON line per case in build/reliability.jsonl (or
$EDGEWISE_RELIABILITY_LOG); `python bench/reliability.py` turns the latest line of each case into RELIABILITY.md's
tables."""
import json
import os
import time
from pathlib import Path

LOG = Path(os.environ.get("EDGEWISE_RELIABILITY_LOG", Path(__file__).resolve().parents[2] / "build" /
                          "reliability.jsonl"))


def record(area: str, case: str, outcome: str, **figures) -> None:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    row = {"area": area, "case": case, "outcome": outcome, "when": time.strftime("%Y-%m-%d"), **figures}
    with LOG.open("a") as handle:
        handle.write(json.dumps(row, default=str) + "\n")
