"""Server throughput and latency under mixed base/adapter traffic: `edgewise serve` next to llama.cpp's
`llama-server` (optional; built from source for the benchmark only), driven by the openai client at several client
counts (greedy chat requests of 64 tokens, half on the base model and half on the adapter) for a fixed time each.
Every round starts the servers afresh, and they take turns level by level (the order reversed in every other
round); medians over rounds, and each llama-server's ratio as the median of per-round ratios. Every answer under
load is compared with the same request served alone.

Usage: python bench/serve_load.py MODEL_DIR ADAPTER_FILE [--clients 1 4 16] [--seconds 10] [--rounds 6]
         [--max_batch 16] [--baseline MODEL_DIR] [--uncached]
         [--llama_server BIN --gguf Q4_0.gguf --lora LORA.gguf [--llama_parallel 4 16]]
Prints a Markdown table per round and the medians over rounds."""
import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai

PROMPTS = ["What's a must-see in Paris?", "Best way to get around Tokyo?", "Where should I eat in Rome?",
           "Is Lisbon good in winter?"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Edgewise:
    def __init__(self, model, adapter, max_batch, label="", flags=()):
        self.name = f"edgewise serve --max_batch {max_batch}{' ' + ' '.join(flags) if flags else ''}{label}"
        self.cmd = [sys.executable, "-m", "edgewise", "serve", model, "--adapter", f"travel={adapter}",
                    "--max_batch", str(max_batch), *flags]

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
            "p99": q[98], "tokens": statistics.mean(tokens) if tokens else 0, "errors": len(errors), "wrong": len(wrong)}


def reference_answers(server, url) -> dict:
    """Each (prompt, adapter) pair served alone: what every answer under load is compared with."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
    alone = {}
    for n in range(8):
        key, text, _ = ask(server, client, n)
        alone[key] = text
    return alone


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("adapter")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max_batch", type=int, default=16)
    parser.add_argument("--baseline", help="a second export to serve alongside (A/B), with its adapter file inside")
    parser.add_argument("--uncached", action="store_true",
                        help="also serve the same export with --prompt_cache 0 (A/B of the prompt cache)")
    parser.add_argument("--llama_server")
    parser.add_argument("--gguf")
    parser.add_argument("--lora")
    parser.add_argument("--llama_parallel", type=int, nargs="+", default=[4])
    args = parser.parse_args()
    servers = [Edgewise(args.model, args.adapter, args.max_batch)]
    if args.baseline:
        servers.append(Edgewise(args.baseline, f"{args.baseline}/adapter_weights.onnx_adapter", args.max_batch,
                                f" ({Path(args.baseline).name} baseline)"))
    if args.uncached:
        servers.append(Edgewise(args.model, args.adapter, args.max_batch, flags=("--prompt_cache", "0")))
    if args.llama_server:
        servers += [LlamaServer(args.llama_server, args.gguf, args.lora, p) for p in args.llama_parallel]
    # each round starts every server afresh (a server's answers may depend on what it served before), then visits
    # the levels one by one, every server in turn at each level (the order reversed in every other round), so that
    # the machine's drifting speed falls on all of them alike
    results = {s.name: [] for s in servers}
    for r in range(args.rounds):
        print(f"\nround {r + 1}\n\n| server | clients | requests | tok/s | p50 s | p99 s | tokens/answer | errors | "
              "differ from alone |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        order = servers[::-1] if r % 2 else servers
        running = []
        try:
            for server in order:
                running.append(start(server))
            alone = [reference_answers(s, url) for s, (_, url) in zip(order, running)]
            figures = {s.name: {} for s in servers}
            for c in args.clients:
                for server, (_, url), reference in zip(order, running, alone):
                    f = figures[server.name][c] = load(server, url, c, args.seconds, reference)
                    print(f"| {server.name} | {c} | {f['requests']} | {f['tps']:.1f} | {f['p50']:.2f} | "
                          f"{f['p99']:.2f} | {f['tokens']:.1f} | {f['errors']} | {f['wrong']} |", flush=True)
        finally:
            for proc, _ in running:
                proc.terminate()
                proc.wait(timeout=60)
        for name, f in figures.items():
            results[name].append(f)
    report(servers, results, args.clients)


def report(servers, results, clients) -> None:
    print(f"\nmedians over {len(results[servers[0].name])} rounds\n\n| server | clients | tok/s | p50 s | p99 s | "
          "errors | differ from alone | edgewise tok/s / its tok/s, median of rounds |\n| --- | --- | --- | --- | --- | --- | "
          "--- | --- |")
    ours = results[servers[0].name]
    for server in servers:
        rounds = results[server.name]
        for c in clients:
            med = {k: statistics.median(r[c][k] for r in rounds) for k in ("tps", "p50", "p99")}
            bad = {k: sum(r[c][k] for r in rounds) for k in ("errors", "wrong")}
            ratio = statistics.median(o[c]["tps"] / r[c]["tps"] for o, r in zip(ours, rounds))
            print(f"| {server.name} | {c} | {med['tps']:.1f} | {med['p50']:.2f} | {med['p99']:.2f} | {bad['errors']} | "
                  f"{bad['wrong']} | {'' if server is servers[0] else f'{ratio:.2f}x'} |")
    for c in clients[1:]:
        ratio = statistics.median(r[c]["tps"] / r[clients[0]]["tps"] for r in ours)
        print(f"\nedgewise at {c} clients / at {clients[0]}: {ratio:.2f}x (median of rounds)")


if __name__ == "__main__":
    main()
