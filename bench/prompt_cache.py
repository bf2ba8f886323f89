"""Time to first token along a conversation, with and without the server's prompt cache: `edgewise serve` twice
(`--prompt_cache 256` and `0`), one conversation of TURNS questions on the travel adapter, each turn sending the whole
history (as chat clients do), greedy, 48 tokens an answer; streamed, TTFT = time to the first content chunk. Both
servers answer every turn with the same text (checked). Rounds interleave the two servers (order reversed every
other round); medians per turn.

Usage: python bench/prompt_cache.py MODEL_DIR ADAPTER_FILE [--rounds 4]"""
import argparse
import statistics
import time

import openai
from serve_load import Edgewise, start

QUESTIONS = ["What's a must-see in Paris?", "And where should I eat there?", "Is the metro easy to use?",
             "What about a day trip from Paris?", "How many days should I plan?", "Any tips for the museums?"]


def conversation(url: str) -> list[tuple[int, float, str]]:
    """(prompt tokens, TTFT s, answer) for each turn."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
    messages, turns = [], []
    for question in QUESTIONS:
        messages.append({"role": "user", "content": question})
        began, first, parts, usage = time.perf_counter(), None, [], None
        for chunk in client.chat.completions.create(model="travel", messages=messages, max_tokens=48, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - began
                parts.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        answer = "".join(parts)
        turns.append((usage.prompt_tokens if usage else -1, first, answer))
        messages.append({"role": "assistant", "content": answer})
    return turns


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("adapter")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    servers = [Edgewise(args.model, args.adapter, 16, flags=("--prompt_cache", str(mib))) for mib in (256, 0)]
    results = {s.name: [] for s in servers}
    for r in range(args.rounds):
        for server in servers[::-1] if r % 2 else servers:
            proc, url = start(server)
            try:
                results[server.name].append(conversation(url))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    cached, plain = (results[s.name] for s in servers)
    same = all(a[2] == b[2] for x, y in zip(cached, plain) for a, b in zip(x, y))
    print(f"answers equal with and without the cache: {same}\n")
    print("| turn | prompt tokens | TTFT ms, cache on | TTFT ms, cache off | off / on |\n| --- | --- | --- | --- | --- |")
    for t in range(len(QUESTIONS)):
        on = statistics.median(run[t][1] for run in cached) * 1e3
        off = statistics.median(run[t][1] for run in plain) * 1e3
        print(f"| {t + 1} | {cached[0][t][0]} | {on:.0f} | {off:.0f} | {off / on:.2f}x |")


if __name__ == "__main__":
    main()
