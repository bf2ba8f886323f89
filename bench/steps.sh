#!/usr/bin/env bash
# Per-step wall time and peak memory of the lab chain on the default model, fresh cache. Usage: bash bench/steps.sh
set -e
cd "$(dirname "$0")/.."
export EDGEWISE_CACHE=${EDGEWISE_CACHE:-/tmp/stepcache} HF_HUB_OFFLINE=1 PATH=$PWD/.venv/bin:$PATH
O=${STEPS_OUT:-/tmp/step-out}
for step in "quantize --algorithm awq --output_path $O/awq" \
            "finetune --method lora --model_name_or_path $O/awq --data_files examples/travel.jsonl --max_steps 100 --output_path $O/ft" \
            "auto-opt --model_name_or_path $O/ft/model --adapter_path $O/ft/adapter --device cpu --provider CPUExecutionProvider --use_ort_genai --output_path $O/onnx"; do
  /usr/bin/time -f "STEP ${step%% *}: %e s wall, %M kB peak RSS" edgewise $step --log_level 2 2>&1 | grep -a "STEP\|error" || true
done
/usr/bin/time -f "STEP generate: %e s wall, %M kB peak RSS" edgewise generate --model $O/onnx/model \
  --adapter travel=$O/onnx/model/adapter_weights.onnx_adapter --prompt "What's a must-see in Paris?" --max_new_tokens 80 2>&1
