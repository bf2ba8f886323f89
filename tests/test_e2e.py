"""The whole lab chain through the CLI on the real embedded default model (SmolLM2-135M-Instruct), few steps."""
import json
import os
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def edgewise(*args, env):
    """The command, which must succeed."""
    done = helpers.edgewise(*args, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_lab_chain_on_the_default_model(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDGEWISE_CACHE": str(tmp_path / "cache"),
           "EDGEWISE_REGISTRY": str(tmp_path / "registry")}
    data = str(ROOT / "examples" / "travel.jsonl")
    out = tmp_path / "models"
    edgewise("quantize", "--algorithm", "awq", "--num_samples", "4", "--output_path", str(out / "awq"), env=env)
    edgewise("finetune", "--method", "lora", "--model_name_or_path", str(out / "awq"), "--data_files", data,
             "--max_steps", "12", "--learning_rate", "1e-3", "--output_path", str(out / "ft"), env=env)
    assert (out / "ft" / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "ft" / "model" / "model.safetensors").stat().st_ino == (out / "awq" / "model.safetensors").stat().st_ino
    edgewise("auto-opt", "--model_name_or_path", str(out / "ft" / "model"), "--adapter_path", str(out / "ft" / "adapter"),
             "--device", "cpu", "--provider", "CPUExecutionProvider", "--use_ort_genai",
             "--output_path", str(out / "onnx"), "--register", "ft-for-travel", env=env)
    # the lab's last step: the registered version, pulled elsewhere, is the model and adapter that were exported
    edgewise("registry", "pull", "ft-for-travel@1", "--to", str(tmp_path / "pulled"), env=env)
    model = tmp_path / "pulled" / "model"
    adapter = model / "adapter_weights.onnx_adapter"
    assert adapter.is_file() and (model / "genai_config.json").is_file()
    question = ["--prompt", "What's a must-see in Paris?", "--max_new_tokens", "40"]
    base = edgewise("generate", "--model", str(model), *question, env=env).stdout.strip()
    tuned = edgewise("generate", "--model", str(model), "--adapter", f"travel={adapter}", *question, env=env).stdout
    assert base and tuned.strip() and tuned.strip() != base
    again = edgewise("quantize", "--algorithm", "awq", "--num_samples", "4", "--output_path", str(out / "awq"), env=env)
    assert "cached" in again.stderr
    shown = json.loads(edgewise("registry", "show", "ft-for-travel", "--json", env=env).stdout)
    assert [step["pass"] for step in shown["lineage"]] == ["quantize", "finetune", "export"]
    assert shown["source"] == "SmolLM2-135M-Instruct (embedded)"
    _serve_with_limits(model, adapter)


def _serve_with_limits(model, adapter):
    """One slot and a queue of one on the real model: a third request gets 429 with Retry-After; a streaming client
    that goes away frees its slot at once, so the waiting request runs; /metrics counts each outcome."""
    import signal
    import urllib.request

    import openai
    from helpers import openai_client, start_server

    proc, url = start_server(model, {"travel": adapter}, "--max_batch", "1", "--max_queue", "1")
    try:
        client = openai_client(url)
        chat = dict(messages=[{"role": "user", "content": "Tell me a long story about Paris."}], temperature=0)
        first = client.chat.completions.create(model="base", max_tokens=1500, stream=True, **chat)
        arriving = iter(first)
        for _ in range(3):
            next(arriving)  # running: its slot is taken
        second = client.chat.completions.create(model="travel", max_tokens=5, stream=True, **chat)  # queued
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="base", max_tokens=5, **chat)
        assert info.value.response.headers["retry-after"] == "1"
        assert info.value.body["code"] == "rate_limit_exceeded"
        first.close()  # the client goes away mid-stream (closes the HTTP response)
        chunks = list(second)
        assert chunks[-1].choices[0].finish_reason == "length"
        metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
        for line in ('edgewise_requests_total{model="base",outcome="rejected"} 1.0',
                     'edgewise_requests_total{model="base",outcome="cancelled"} 1.0',
                     'edgewise_requests_total{model="travel",outcome="length"} 1.0', "edgewise_queue_depth 0.0"):
            assert line in metrics.splitlines(), metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
