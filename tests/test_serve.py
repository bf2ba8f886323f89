"""The OpenAI-compatible server, started as a real process and driven by the official `openai` client: models,
chat and text completions (plain and streamed), stop sequences, errors with the right status, an API key, a bounded
load test with mixed adapters, and a clean exit on SIGTERM."""
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import openai
import pytest
from conftest import RECORDS
from helpers import http, openai_client, start_server

from edgewise.runtime.genai import Runtime
from edgewise.runtime.sampling import Sampling

QUESTIONS = [r["prompt"] for r in RECORDS[:4]]


@pytest.fixture(scope="module")
def model_dir(tiny_onnx):
    return tiny_onnx.model, tiny_onnx.adapters


@pytest.fixture(scope="module")
def server(model_dir):
    proc, url = start_server(*model_dir)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # SIGTERM is a clean shutdown


@pytest.fixture(scope="module")
def expected(model_dir):
    """Greedy answers computed in-process, without the server."""
    runtime = Runtime(*model_dir)
    return {(q, a): runtime.generate(q, a, Sampling(max_new_tokens=12)) for q in QUESTIONS for a in (None, "one", "two")}


def _ask(client, model, question, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                          max_tokens=12, temperature=0, **kw)


def test_models_and_answers_match_the_runtime(server, expected):
    client = openai_client(server)
    assert [m.id for m in client.models.list()] == ["base", "one", "two"]
    for model, adapter in (("base", None), ("one", "one"), ("two", "two")):
        reply = _ask(client, model, QUESTIONS[0])
        assert reply.choices[0].message.content == expected[(QUESTIONS[0], adapter)]
        assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 12
    assert len({expected[(QUESTIONS[0], a)] for a in (None, "one", "two")}) == 3  # the adapters really differ


def test_streaming_equals_the_plain_answer(server, expected):
    client = openai_client(server)
    stream = _ask(client, "two", QUESTIONS[1], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected[(QUESTIONS[1], "two")]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    completion = client.completions.create(model="base", prompt="Visit the old", max_tokens=6, temperature=0,
                                           stream=True)
    streamed = "".join(c.choices[0].text for c in completion)
    plain = client.completions.create(model="base", prompt="Visit the old", max_tokens=6, temperature=0)
    assert streamed == plain.choices[0].text and plain.choices[0].finish_reason == "length"
    counted = list(_ask(client, "two", QUESTIONS[1], stream=True, stream_options={"include_usage": True}))
    assert counted[-1].choices == [] and counted[-1].usage is not None  # OpenAI's usage chunk ends the stream
    plain = _ask(client, "two", QUESTIONS[1])
    assert counted[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in counted[:-1]) and all(c.usage is None for c in chunks)


def test_stop_sequence_cuts_the_answer(server, expected):
    full = expected[(QUESTIONS[2], "one")]
    stop = full.strip()[3:5]
    reply = _ask(openai_client(server), "one", QUESTIONS[2], stop=[stop])
    assert reply.choices[0].message.content == full[:full.find(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_bad_requests_get_openai_errors(server):
    client = openai_client(server)
    with pytest.raises(openai.NotFoundError) as info:
        _ask(client, "nope", "hi")
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        _ask(client, "base", "word " * 5000)
    assert info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="base", messages=[], max_tokens=4)
    for body in (b"{not json", b'{"model": "base"}', b'{"model": "base", "prompt": "a", "max_tokens": -1}'):
        status, reply = http("POST", f"{server}/v1/completions", body)
        assert status == 400 and "message" in reply["error"], reply
    spec = http("GET", f"{server}/openapi.json")[1]
    assert {"/v1/models", "/v1/chat/completions", "/v1/completions"} <= set(spec["paths"])


def test_metrics_count_requests_tokens_and_the_batch(server):
    client = openai_client(server)
    for model in ("base", "one", "two"):
        _ask(client, model, QUESTIONS[0])
    with urllib.request.urlopen(f"{server}/metrics") as response:
        assert response.headers["content-type"].startswith("text/plain; version=")  # the Prometheus text format
        lines = response.read().decode().splitlines()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}
    served = {m: sum(v for k, v in values.items() if k.startswith(f'edgewise_requests_total{{model="{m}"'))
              for m in ("base", "one", "two")}
    assert all(n >= 1 for n in served.values()), served
    assert values["edgewise_completion_tokens_total"] >= 3 and values["edgewise_prompt_tokens_total"] > 0
    assert values["edgewise_queue_depth"] == 0 and values["edgewise_batch_size"] == 0
    assert values["edgewise_request_latency_seconds_count"] == sum(
        v for k, v in values.items() if k.startswith("edgewise_requests_total") and ('"stop"' in k or '"length"' in k))
    assert values["edgewise_decode_step_requests_count"] > 0


def test_server_limits_are_checked_before_loading(model_dir):
    done = subprocess.run([sys.executable, "-m", "edgewise", "serve", str(model_dir[0]), "--max_batch", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].endswith("--max_batch must be positive")
    done = subprocess.run([sys.executable, "-m", "edgewise", "serve", str(model_dir[0]), "--max_batch", "10000000"],
                          capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "cannot allocate the KV cache" in last and "lower --max_batch" in last, last


def test_a_port_in_use_is_one_clear_line_before_the_model_loads(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "edgewise", "serve", str(model_dir[0]), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"edgewise: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "serving" not in done.stderr


def test_api_key_is_required_when_set(model_dir):
    proc, url = start_server(*model_dir, "--api_key", "s3cret")
    try:
        with pytest.raises(openai.AuthenticationError):
            openai_client(url, "wrong").models.list()
        assert [m.id for m in openai_client(url, "s3cret").models.list()][0] == "base"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_sixteen_concurrent_clients_mixing_adapters(server, expected):
    """16 clients each send 4 requests at once with varying adapters: no errors, no adapter bleeding."""
    errors, answers = [], []

    def client_loop(i):
        client = openai_client(server)
        for n in range(i, i + 4):
            question, adapter = QUESTIONS[n % len(QUESTIONS)], (None, "one", "two")[n % 3]
            try:
                reply = _ask(client, adapter or "base", question)
                answers.append(((question, adapter), reply.choices[0].message.content))
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                errors.append(repr(exc))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(answers) == 64
    wrong = [(key, got) for key, got in answers if got != expected[key]]
    assert not wrong, wrong[:3]


def test_chat_keeps_the_conversation_and_switches_adapter(model_dir, expected):
    model, adapters = model_dir
    script = f"{QUESTIONS[0]}\n/adapter two\n{QUESTIONS[0]}\n/adapter nope\n/reset\n/exit\n"
    cmd = [sys.executable, "-m", "edgewise", "chat", str(model), "--max_new_tokens", "12"]
    for name, path in adapters.items():
        cmd += ["--adapter", f"{name}={path}"]
    done = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == expected[(QUESTIONS[0], "one")]  # the first adapter starts active
    assert len(lines) == 2 and "adapter: two" in done.stderr and "unknown adapter 'nope'" in done.stderr


def test_sampling_with_a_seed_is_reproducible(server):
    client = openai_client(server)
    replies = [client.chat.completions.create(model="one", messages=[{"role": "user", "content": QUESTIONS[3]}],
                                              max_tokens=12, temperature=1.5, top_p=0.95, seed=seed)
               .choices[0].message.content for seed in (7, 7, 8, 9, 10)]
    assert replies[0] == replies[1]
    assert len(set(replies[1:])) > 1  # other seeds sample other answers
