"""RELIABILITY.md's tables from what the robustness suite recorded (build/reliability.jsonl; the latest line of each
case counts). Usage: python bench/reliability.py [LOG] > RELIABILITY-tables.md"""
import json
import re
import sys
from pathlib import Path

LOG = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "build" / "reliability.jsonl")
AREAS = {
    "bad input": ("Bad inputs", ["exit", "line"]),
    "interruption": ("Interruptions", ["exit", "resumed_from_checkpoint", "checkpoints", "files"]),
    "concurrency": ("Concurrency", ["passes_run", "of", "versions"]),
    "property": ("Property-based tests (hypothesis)", ["examples"]),
    "server fuzzing": ("Server fuzzing (schemathesis, the server's own OpenAPI document)",
                       ["requests", "operations", "status_5xx", "statuses"]),
    "safety": ("Safety", []),
}


def cell(value) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    text = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/ ]+/", ".../", text)  # the test's temporary folders
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    latest = {}
    for line in LOG.read_text().splitlines():
        row = json.loads(line)
        latest[(row["area"], row["case"])] = row
    for area, (title, columns) in AREAS.items():
        rows = [r for (a, _), r in latest.items() if a == area]
        if not rows:
            continue
        passed = sum(r["outcome"] == "pass" for r in rows)
        print(f"### {title}: {passed} of {len(rows)} pass\n")
        print("| case | outcome | " + " | ".join(columns or ["figures"]) + " |")
        print("| --- | --- |" + " --- |" * len(columns or ["figures"]))
        for r in rows:
            if columns:
                figures = [cell(r.get(k, "")) for k in columns]
            else:  # each case its own figures, as key=value
                figures = [", ".join(f"{k}={cell(v)}" for k, v in r.items() if k not in ("area", "case", "outcome", "when"))]
            print(f"| {cell(r['case'])} | {r['outcome']} | " + " | ".join(figures) + " |")
        print()


if __name__ == "__main__":
    main()
