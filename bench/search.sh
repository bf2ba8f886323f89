#!/usr/bin/env bash
# Issue 4's benchmark: the {RTN, GPTQ, AWQ} x {32, 64, 128} search of examples/search.yaml on the default model, from
# an empty cache, then the same run again (every pass and evaluation from the cache). Prints both wall times.
# Usage: bash bench/search.sh [CACHE_DIR]   (run from the repository root)
set -euo pipefail
CACHE=${1:-$(mktemp -d)/cache}
OUT=$(mktemp -d)
for run in first again; do
  start=$(date +%s.%N)
  .venv/bin/edgewise run --config examples/search.yaml cache_dir="$CACHE" output_dir="$OUT/$run" --json \
    > "$OUT/$run.json" 2> "$OUT/$run.log"
  end=$(date +%s.%N)
  python3 -c "print(f'$run run: {$end - $start:.1f} s')"
done
.venv/bin/python - "$OUT/first.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print(f"reference perplexity {report['reference']['perplexity']:.3f}")
print("| algorithm | group | status | size MB | perplexity | vs fp32 | Pareto |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for c in report["candidates"]:
    m, p = c["metrics"], c["params"]
    ppl = m.get("perplexity")
    delta = f"+{100 * (ppl / report['reference']['perplexity'] - 1):.1f}%" if ppl else ""
    print(f"| {p['quantize.algorithm']} | {p['quantize.group_size']} | {c['status']}{' (best)' if c['trial'] == report['best'] else ''} "
          f"| {m.get('size_mb', 0):.1f} | {ppl or 0:.3f} | {delta} | {'yes' if c['pareto'] else ''} |")
PY
echo "report: $OUT/first/report.html"
