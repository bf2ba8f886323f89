"""Server throughput and latency under mixed base/adapter traffic: `edgewise serve` next to llama.cpp's
`llama-server` (optional; built from source for the benchmark only), driven by the openai client at several client
counts (greedy chat requests of 64 tokens, half on the base model and half on the adapter) for a fixed time each,
the servers interleaved round by round. Every answer under load is compared with the same request served alone.

Usage: python bench/serve_load.py MODEL_DIR ADAPTER_FILE [--clients 1 4 16] [--seconds 20] [--rounds 2]
         [--max_batch 16] [--llama_server BIN --gguf Q4_0.gguf --lora LORA.gguf [--llama_parallel 4 16]]
Prints a Markdown table per round and the medians over rounds."""
import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import openai

PROMPTS = ["What's a must-see in Paris?", "Best way to get around Tokyo?", "Where should I eat in Rome?",
           "Is Lisbon good in winter?"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Edgewise:
    def __init__(self, model, adapter, max_batch):
        self.name = f"edgewise serve --max_batch {max_batch}"
        self.cmd = [sys.executable, "-m", "edgewise", "serve", model, "--adapter", f"travel={adapter}",
                    "--max_batch", str(max_batch)]

    def request(self, adapter: bool) -> dict:
        return {"model": "travel" if adapter else "base"}


class LlamaServer:
    def __init__(self, binary, gguf, lora, parallel):
        self.name = f"llama-server -t 2 --parallel {parallel}"
        self.cmd = [binary, "-m", gguf, "--lora", lora, "--lora-init-without-apply", "-t", "2", "-tb", "2",
                    "--parallel", str(parallel), "-c", str(2048 * parallel), "--host", "127.0.0.1"]

    def request(self, adapter: bool) -> dict:
        return {"model": "smollm2", "extra_body": {"lora": [{"id": 0, "scale": 1.0 if adapter else 0.0}]}}


def start(server):
    port = _port()
    proc = subprocess.Popen([*server.cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{server.name} did not start")


def ask(server, client, n):
    reply = client.chat.completions.create(messages=[{"role": "user", "content": PROMPTS[n % 4]}], max_tokens=64,
                                           temperature=0, **server.request((n // 4) % 2 == 1))
    return (n % 8), reply.choices[0].message.content, reply.usage.completion_tokens


def load(server, url, clients, seconds, alone):
    latencies, tokens, errors, wrong, deadline = [], [], [], [], time.time() + seconds

    def loop(i):
        client, n = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300), i
        while time.time() < deadline:
            began = time.perf_counter()
            try:
                key, text, count = ask(server, client, n)
                latencies.append(time.perf_counter() - began)
                tokens.append(count)
                if alone.setdefault(key, text) != text:
                    wrong.append(key)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(repr(exc))
            n += 1

    began = time.time()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - began
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"requests": len(latencies), "tps": sum(tokens) / elapsed, "p50": statistics.median(latencies),
            "p99": q[98], "errors": len(errors), "wrong": len(wrong)}


def measure(server, clients_list, seconds):
    proc, url = start(server)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
        alone = {}
        for n in range(8):  # each (prompt, adapter) pair served alone first: the reference answers
            key, text, _ = ask(server, client, n)
            alone[key] = text
        return {c: load(server, url, c, seconds, alone) for c in clients_list}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("adapter")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max_batch", type=int, default=16)
    parser.add_argument("--llama_server")
    parser.add_argument("--gguf")
    parser.add_argument("--lora")
    parser.add_argument("--llama_parallel", type=int, nargs="+", default=[4])
    args = parser.parse_args()
    servers = [Edgewise(args.model, args.adapter, args.max_batch)]
    if args.llama_server:
        servers += [LlamaServer(args.llama_server, args.gguf, args.lora, p) for p in args.llama_parallel]
    results = {s.name: [] for s in servers}
    for r in range(args.rounds):
        order = servers if r % 2 == 0 else servers[::-1]
        print(f"\nround {r + 1}\n\n| server | clients | requests | tok/s | p50 s | p99 s | errors | differ from alone |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for server in order:
            figures = measure(server, args.clients, args.seconds)
            results[server.name].append(figures)
            for c, f in figures.items():
                print(f"| {server.name} | {c} | {f['requests']} | {f['tps']:.1f} | {f['p50']:.2f} | {f['p99']:.2f} | "
                      f"{f['errors']} | {f['wrong']} |", flush=True)
    print("\nmedians over rounds\n\n| server | clients | tok/s | p50 s | p99 s | errors | differ from alone |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rounds in results.items():
        for c in args.clients:
            med = {k: statistics.median(r[c][k] for r in rounds) for k in ("tps", "p50", "p99")}
            bad = {k: sum(r[c][k] for r in rounds) for k in ("errors", "wrong")}
            print(f"| {name} | {c} | {med['tps']:.1f} | {med['p50']:.2f} | {med['p99']:.2f} | {bad['errors']} | "
                  f"{bad['wrong']} |")


if __name__ == "__main__":
    main()
