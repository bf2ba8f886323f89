#!/usr/bin/env bash
# The lab chain on the embedded default model (SmolLM2-135M-Instruct), offline, on a CPU:
# quantize (AWQ int4) -> finetune (LoRA, 100 steps) -> auto-opt (ONNX Runtime GenAI + .onnx_adapter) -> generate.
# DEMO_MODEL=PATH runs it on another model (a folder, hub id or .gguf file), e.g. Gemma 3 270M; DEMO_TEMPLATE a text
# template for a base model without a chat template, e.g. $'Question: {prompt}\nAnswer: {response}'.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUT:-demo-out}
STEPS=${DEMO_STEPS:-100}
QUESTION=${DEMO_QUESTION:-"What's a must-see in Paris?"}
export EDGEWISE_REGISTRY=${EDGEWISE_REGISTRY:-$OUT/registry}   # the embedded model registry (SQLite + files)

edgewise quantize --algorithm awq ${DEMO_MODEL:+--model_name_or_path "$DEMO_MODEL"} --output_path "$OUT/awq" \
  --log_level 1
edgewise finetune --method lora --model_name_or_path "$OUT/awq" --data_files examples/travel.jsonl \
  --max_steps "$STEPS" ${DEMO_TEMPLATE:+--text_template "$DEMO_TEMPLATE"} --output_path "$OUT/ft" --log_level 1
edgewise auto-opt --model_name_or_path "$OUT/ft/model" --adapter_path "$OUT/ft/adapter" --device cpu \
  --provider CPUExecutionProvider --use_ort_genai --output_path "$OUT/onnx" --log_level 1 \
  --register ft-for-travel                     # step 4 of the lab: a new version in the registry, with its lineage

echo
echo "Q: $QUESTION"
echo "--- base model (no adapter):"
edgewise generate --model "$OUT/onnx/model" --prompt "$QUESTION" --max_new_tokens 80
echo "--- with the travel adapter:"
edgewise generate --model "$OUT/onnx/model" --adapter "travel=$OUT/onnx/model/adapter_weights.onnx_adapter" \
  --prompt "$QUESTION" --max_new_tokens 80
echo
edgewise registry show ft-for-travel
