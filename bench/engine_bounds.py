"""Where the serve engine's CPU speed is bound (issue 14): what onnxruntime's own kernels cost, measured apart from
edgewise's code, next to the alternatives that onnxruntime offers.

1. The decode step of an exported model (SlotDecoder) at 1 row and at 16 rows (half of them on the adapter), at the
   positions of a fresh prompt and of a late answer: 16 x step(1) / step(16) is the most 16 clients can get over 1
   before any HTTP, sampling or prompt work.
2. The output head's product (vocabulary x hidden of the default model) at 1 and 16 rows: the export's MatMulNBits
   (int8, blocks of 32), an int4 one, and onnxruntime's DynamicQuantizeMatMul (int8 weights per column, the
   activations quantized per tensor), with whether a row's result depends on the other rows of its batch.
3. One LoRA target (hidden -> qkv of the default model, rank 32) at 1 and 16 rows: the engine's batch-major form
   (every row multiplies its own A and B) and a stacked form (one copy of each adapter, a per-row mask selects it),
   with the same row check.

Each microbenchmark session runs with spinning off so that one session's idle threads do not take the cores from
the next; medians of interleaved rounds. Usage: python bench/engine_bounds.py MODEL_DIR ADAPTER_FILE [--rounds 5]
Prints Markdown tables."""
import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgewise.serve.decoder import SlotDecoder

HIDDEN, VOCAB, QKV, RANK = 576, 49152, 960, 32


def session(nodes, inputs, initializers=()):
    graph = helper.make_graph(nodes, "bound", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(initializers))
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def microseconds(run, repeats: int = 50) -> float:
    run()
    began = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - began) / repeats * 1e6


def row_dependence(sess, feeds: dict, per_row: set) -> float:
    """Largest difference between row 0 computed in the batch and alone (0 means rows are independent); `per_row`
    names the feeds whose first dimension is the batch."""
    together = sess.run(None, feeds)[0][:1]
    alone = sess.run(None, {k: v[:1] if k in per_row else v for k, v in feeds.items()})[0]
    return float(np.abs(together - alone).max())


def head_variants(rng):
    blocks = HIDDEN // 32
    scales = numpy_helper.from_array(np.full(VOCAB * blocks, 0.01, np.float32), "s")
    int8 = numpy_helper.from_array(rng.integers(0, 255, (VOCAB, blocks, 32), dtype=np.uint8), "w8")
    int4 = numpy_helper.from_array(rng.integers(0, 255, (VOCAB, blocks, 16), dtype=np.uint8), "w4")
    per_column = [numpy_helper.from_array(rng.integers(-127, 127, (HIDDEN, VOCAB), dtype=np.int8), "q"),
                  numpy_helper.from_array(np.full(VOCAB, 0.01, np.float32), "qs")]
    x = [("x", ["rows", HIDDEN])]
    nbits = dict(domain="com.microsoft", K=HIDDEN, N=VOCAB, block_size=32, accuracy_level=4)
    return {
        "MatMulNBits int8, blocks of 32 (the export's head)": session(
            [helper.make_node("MatMulNBits", ["x", "w8", "s"], ["y"], bits=8, **nbits)], x, [int8, scales]),
        "MatMulNBits int4, blocks of 32": session(
            [helper.make_node("MatMulNBits", ["x", "w4", "s"], ["y"], bits=4, **nbits)], x, [int4, scales]),
        "DynamicQuantizeMatMul, int8 per column": session(
            [helper.make_node("DynamicQuantizeMatMul", ["x", "q", "qs"], ["y"], domain="com.microsoft")], x, per_column),
    }


def lora_variants():
    batch_major = session([helper.make_node("MatMul", ["x", "A"], ["t"]), helper.make_node("MatMul", ["t", "B"], ["d"]),
                           helper.make_node("Add", ["y0", "d"], ["y"])],
                          [("x", ["rows", 1, HIDDEN]), ("A", ["rows", HIDDEN, RANK]), ("B", ["rows", RANK, QKV]),
                           ("y0", ["rows", 1, QKV])])
    stacked = session([helper.make_node("MatMul", ["x", "A"], ["t"]), helper.make_node("Mul", ["t", "mask"], ["tm"]),
                       helper.make_node("MatMul", ["tm", "B"], ["d"]), helper.make_node("Add", ["y0", "d"], ["y"])],
                      [("x", ["rows", 1, HIDDEN]), ("A", [HIDDEN, RANK]), ("mask", ["rows", 1, RANK]),
                       ("B", [RANK, QKV]), ("y0", ["rows", 1, QKV])])
    return {"batch-major, A and B per row (the engine's)": (batch_major, True),
            "stacked, one A and B, a mask per row": (stacked, False)}


def kernels(rounds: int) -> None:
    rng = np.random.default_rng(0)
    heads, loras = head_variants(rng), lora_variants()
    times, rows_dep = {}, {}
    for _ in range(rounds):
        for rows in (1, 16):
            x = rng.standard_normal((rows, HIDDEN)).astype(np.float32)
            for name, sess in heads.items():
                times.setdefault((name, rows), []).append(microseconds(lambda: sess.run(None, {"x": x}), 20))
            for name, (sess, per_row) in loras.items():
                feeds = lora_feeds(rng, rows, per_row)
                times.setdefault((name, rows), []).append(microseconds(lambda: sess.run(None, feeds), 200))
    for name, sess in heads.items():  # once: the check is exact, not timed
        rows_dep[name] = row_dependence(sess, {"x": rng.standard_normal((16, HIDDEN)).astype(np.float32)}, {"x"})
    for name, (sess, per_row) in loras.items():
        rows_dep[name] = row_dependence(sess, lora_feeds(rng, 16, per_row),
                                        {"x", "y0", *(("A", "B") if per_row else ("mask",))})
    print("\n| operation | 1 row us | 16 rows us | 16 rows / 1 row | row 0 in a batch of 16 vs alone, max diff |\n"
          "| --- | --- | --- | --- | --- |")
    for name in [*heads, *loras]:
        one, sixteen = (statistics.median(times[(name, r)]) for r in (1, 16))
        print(f"| {name} | {one:.0f} | {sixteen:.0f} | {sixteen / one:.2f}x | {rows_dep[name]:.1e} |")


def lora_feeds(rng, rows: int, per_row: bool) -> dict:
    lead = (rows,) if per_row else ()
    feeds = {"x": rng.standard_normal((rows, 1, HIDDEN)).astype(np.float32),
             "A": rng.standard_normal((*lead, HIDDEN, RANK)).astype(np.float32),
             "B": rng.standard_normal((*lead, RANK, QKV)).astype(np.float32),
             "y0": rng.standard_normal((rows, 1, QKV)).astype(np.float32)}
    if not per_row:
        feeds["mask"] = np.ones((rows, 1, RANK), np.float32)
    return feeds


def decoder_steps(model: str, adapter: str, rounds: int) -> None:
    decoder = SlotDecoder(model, {"travel": adapter}, 16, 2048)
    for slot in range(16):
        decoder.assign(slot, "travel" if slot % 2 else None)
    times = {}
    for _ in range(rounds):
        for position in (10, 80):
            for rows in (1, 16):
                began = time.perf_counter()
                for i in range(20):
                    decoder.decode(np.full(rows, 5), np.full(rows, position + i))
                times.setdefault((position, rows), []).append((time.perf_counter() - began) / 20 * 1e3)
    print("\n| position | 1 row ms | 16 rows ms | 16 x step(1) / step(16) |\n| --- | --- | --- | --- |")
    for position in (10, 80):
        one, sixteen = (statistics.median(times[(position, r)]) for r in (1, 16))
        print(f"| {position}-{position + 19} | {one:.2f} | {sixteen:.2f} | {16 * one / sixteen:.2f}x |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("adapter")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    decoder_steps(args.model, args.adapter, args.rounds)
    kernels(args.rounds)


if __name__ == "__main__":
    main()
