"""Server throughput and latency: `edgewise serve` on an exported model with one adapter, driven by the openai client
at 1, 4 and 16 concurrent clients (greedy chat requests of 64 tokens, adapters alternating) for a fixed time each.
Prints a Markdown table. Usage: python bench/serve_load.py MODEL_DIR ADAPTER_FILE [--seconds 30] [--max_batch 16]"""
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


def start(model, adapter, max_batch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgewise", "serve", model, "--adapter", f"travel={adapter}",
                             "--port", str(port), "--max_batch", str(max_batch)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def load(url, clients, seconds):
    latencies, tokens, errors, deadline = [], [], [], time.time() + seconds

    def loop(i):
        client, n = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0), i
        while time.time() < deadline:
            start = time.perf_counter()
            try:
                reply = client.chat.completions.create(
                    model=("base", "travel")[n % 2], messages=[{"role": "user", "content": PROMPTS[n % 4]}],
                    max_tokens=64, temperature=0)
                latencies.append(time.perf_counter() - start)
                tokens.append(reply.usage.completion_tokens)
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
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return len(latencies), sum(tokens) / elapsed, statistics.median(latencies), q[98], len(errors)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("adapter")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max_batch", type=int, default=16)
    args = parser.parse_args()
    proc, url = start(args.model, args.adapter, args.max_batch)
    try:
        print(f"| clients | requests | tokens/s (all clients) | p50 latency s | p99 latency s | errors |")
        print("| --- | --- | --- | --- | --- | --- |")
        for clients in (1, 4, 16):
            n, tps, p50, p99, errors = load(url, clients, args.seconds)
            print(f"| {clients} | {n} | {tps:.1f} | {p50:.2f} | {p99:.2f} | {errors} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
