"""The serving engine on the tiny Llama export: rows of one batch, each with its own adapter (ranks 4 and 8, zero-
padded) or none, decode exactly as if each ran alone and as onnxruntime-genai runs them; the engine thread admits,
queues, rejects, cancels and times out requests; sampling is seeded per request."""
import json
import queue
import threading

import numpy as np
import pytest
from conftest import RECORDS, counting

from edgewise.core.errors import EdgewiseError
from edgewise.models.onnx_lora import LAYOUT, write_adapter
from edgewise.serve.batching import Batcher, Decoder, Finished, Job, QueueFull
from edgewise.serve.decoder import SlotDecoder
from edgewise.serve.kv_copies import KVCopies
from edgewise.serve.prompt_cache import PromptCache, piece_keys, pieces
from edgewise.runtime.genai import Runtime
from edgewise.runtime.sampling import Sampler, Sampling

N = 10


@pytest.fixture(scope="module")
def served(tiny_onnx, tmp_path_factory):
    """The export's adapters plus 'wide', a random rank-8 adapter (the others are rank 4)."""
    layout = json.loads((tiny_onnx.model / LAYOUT).read_text())
    rng = np.random.default_rng(0)
    tensors = {}
    for prefix, entry in layout.items():
        tensors[f"{prefix}.lora_A"] = rng.normal(0, 0.5, (entry["in"], 8)).astype(np.float32)
        tensors[f"{prefix}.lora_B"] = rng.normal(0, 0.5, (8, entry["out"])).astype(np.float32)
    wide = write_adapter(tensors, tmp_path_factory.mktemp("wide") / "wide.onnx_adapter")
    return tiny_onnx.model, {**tiny_onnx.adapters, "wide": wide}


@pytest.fixture(scope="module")
def runtime(served):
    return Runtime(*served)


def _prompts(runtime):
    return [runtime.prompt_ids([{"role": "user", "content": r["prompt"]}]) for r in RECORDS[:4]]


def _genai(runtime, ids, adapter):
    return [t for t, _ in runtime.stream_tokens(ids, adapter, Sampling(max_new_tokens=N))]


def _greedy_alone(decoder, ids, adapter):
    decoder.assign(0, adapter)
    out, length = [int(decoder.prefill(0, ids).argmax())], len(ids)
    while len(out) < N:
        out.append(int(decoder.decode(np.array([out[-1]]), np.array([length]))[0].argmax()))
        length += 1
    return out


def test_both_decoders_are_what_the_batcher_drives(served):
    from edgewise.serve.one_slot import OneSlot

    for decoder in (SlotDecoder(*served, slots=2, context=64), OneSlot(*served, 64)):
        assert isinstance(decoder, Decoder)
        assert set(decoder.adapters) == set(served[1]) and decoder.context == 64
        decoder.assign(0, "one")
        first = decoder.prefill(0, [3, 4, 5])
        assert decoder.decode(np.array([int(first.argmax())]), np.array([3])).shape == (1, first.shape[-1])


def test_rows_with_different_adapters_decode_as_if_alone(served, runtime):
    decoder = SlotDecoder(*served, slots=6, context=128)
    prompts = _prompts(runtime)
    cases = [(prompts[i % 4], adapter) for i, adapter in enumerate([None, "one", "two", "wide", "one", None])]
    alone = [_greedy_alone(decoder, ids, adapter) for ids, adapter in cases]
    for (ids, adapter), tokens in zip(cases, alone):
        reference = _genai(runtime, ids, adapter)
        assert tokens[:len(reference)] == reference  # the runtime stops at end-of-sequence; the decoder runs on
    assert len({tuple(t) for t in alone[:4]}) == 4  # the adapters really differ
    outs, lengths = [], []
    for slot, (ids, adapter) in enumerate(cases):
        decoder.assign(slot, adapter)
        outs.append([int(decoder.prefill(slot, ids).argmax())])
        lengths.append(len(ids))
    for _ in range(N - 1):
        logits = decoder.decode(np.array([o[-1] for o in outs]), np.array(lengths))
        for slot, out in enumerate(outs):
            out.append(int(logits[slot].argmax()))
            lengths[slot] += 1
    assert outs == alone


def test_an_unknown_adapter_and_a_mismatched_one_are_refused(served, tmp_path):
    model, adapters = served
    decoder = SlotDecoder(model, {"one": adapters["one"]}, slots=1, context=64)
    with pytest.raises(EdgewiseError, match="unknown adapter 'nope'"):
        decoder.assign(0, "nope")
    layout = json.loads((model / LAYOUT).read_text())
    prefix, entry = next(iter(layout.items()))
    bad = write_adapter({f"{prefix}.lora_A": np.zeros((entry["in"] + 1, 4), np.float32)}, tmp_path / "bad.onnx_adapter")
    with pytest.raises(EdgewiseError, match="lora_A is float"):
        SlotDecoder(model, {"bad": bad}, slots=1, context=64)


def _engine(served, slots=2, max_queue=8, context=128, cache_bytes=256 * 2**20, chunk=None, ort_copies=False):
    """An engine on the tiny export; `chunk` sets smaller prompt pieces, so that short prompts have several;
    `ort_copies` saves and loads the prompt cache through onnxruntime, as on a GPU."""
    decoder = SlotDecoder(*served, slots=slots, context=context)
    if chunk:
        decoder.prefill_chunk = chunk
    if ort_copies:
        decoder._copies = KVCopies(decoder.kv, "CPUExecutionProvider")
    return Batcher(decoder, eos=set(), max_queue=max_queue, cache_bytes=cache_bytes)


class Ends:
    """A job's output that also notes, in `ended`, when the job finished: the engine thread's own order."""

    def __init__(self, name: str, ended: list):
        self.items, self.name, self.ended = queue.SimpleQueue(), name, ended

    def put(self, item):
        if isinstance(item, Finished):
            self.ended.append(self.name)
        self.items.put(item)

    def get(self):
        return self.items.get()


class Gate:
    """A job's output that holds the engine thread at the job's first token until the test opens it: meanwhile the
    job is running and the engine does nothing else, so what the test does then happens while the job runs, however
    fast the machine is."""

    def __init__(self):
        self.items, self.reached, self.opened = queue.SimpleQueue(), threading.Event(), threading.Event()

    def put(self, item):
        self.items.put(item)
        self.reached.set()
        assert self.opened.wait(60), "the test never opened the gate"

    def get(self):
        return self.items.get()


def _held(engine, job):
    """Submit `job` with a Gate as its output and return once the engine holds at its first token."""
    job.out = Gate()
    engine.submit(job)
    assert job.out.reached.wait(60)
    return job


def test_the_engine_batches_requests_and_each_gets_its_own_answer(served, runtime):
    decoder_alone = SlotDecoder(*served, slots=1, context=128)
    prompts = _prompts(runtime)
    cases = [(prompts[i % 4], (None, "one", "two", "wide")[i % 4 if i < 4 else (i * 3) % 4]) for i in range(9)]
    engine = _engine(served, slots=3, max_queue=16)
    try:
        jobs = [engine.submit(Job(ids, adapter, Sampling(max_new_tokens=N))) for ids, adapter in cases]
        answers = [list(job.results()) for job in jobs]
    finally:
        engine.close()
    assert answers == [_greedy_alone(decoder_alone, ids, adapter) for ids, adapter in cases]
    assert all(job.end.reason == "length" for job in jobs)


def test_queue_bound_cancellation_and_timeout(served, runtime):
    ids = _prompts(runtime)[0]
    engine = _engine(served, slots=1, max_queue=1, context=256)  # the long job has room for ~220 tokens
    try:
        long = _held(engine, Job(ids, "one", Sampling(max_new_tokens=200)))
        assert engine.batch_size == 1
        waiting = engine.submit(Job(ids, None, Sampling(max_new_tokens=3)))
        with pytest.raises(QueueFull, match="bound is 1"):
            engine.submit(Job(ids, None, Sampling(max_new_tokens=3)))
        long.cancel()  # the slot frees at the next step and the waiting job runs
        long.out.opened.set()
        assert len(list(waiting.results())) == 3 and waiting.end.reason == "length"
        assert long.end.reason == "cancelled" and long.produced < 200
        late = engine.submit(Job(ids, None, Sampling(max_new_tokens=100), timeout=0.0))
        list(late.results())
        assert late.end.reason == "timeout"
        with pytest.raises(EdgewiseError, match="unknown adapter"):
            engine.submit(Job(ids, "nope", Sampling()))
        running = _held(engine, Job(ids, None, Sampling(max_new_tokens=200)))
        gone = engine.submit(Job(ids, None, Sampling()))
        gone.cancel()  # a client that left while waiting gives its place in the queue back at once
        engine.submit(Job(ids, None, Sampling(max_new_tokens=1)))
        assert gone.end.reason == "cancelled"
        running.cancel()
        running.out.opened.set()
    finally:
        engine.close()


def test_a_prompt_that_fails_fails_only_its_own_request(served, runtime):
    ids = _prompts(runtime)[0]
    engine = _engine(served, slots=2)
    try:
        other = engine.submit(Job(ids, "one", Sampling(max_new_tokens=30)))
        too_long = engine.submit(Job(list(ids) * 20, None, Sampling()))  # past the decoder's context of 128
        list(too_long.results())
        assert too_long.end.reason == "error" and "context" in too_long.end.detail
        assert len(list(other.results())) == 30 and other.end.reason == "length"
    finally:
        engine.close()


def test_sampling_is_seeded_per_request_and_greedy_at_the_limits():
    logits = np.random.default_rng(1).normal(size=500).astype(np.float32)

    def draws(n=20, **options):
        sampler = Sampler(Sampling(**{"temperature": 1.0, **options}))
        return [sampler(logits) for _ in range(n)]

    assert draws(seed=3) == draws(seed=3) != draws(seed=4)
    assert draws(1, top_k=1) == [int(logits.argmax())] == draws(1, top_p=1e-9)
    assert Sampler(Sampling(temperature=0))(logits) == int(logits.argmax())
    assert draws(3, temperature=5e-324) == [int(logits.argmax())] * 3  # a denormal temperature is greedy, not NaN
    top5 = set(draws(200, top_k=5, seed=0))
    assert top5 <= set(np.argsort(-logits)[:5].tolist()) and len(top5) > 1


def _answers(engine, cases, order, close=True):
    try:
        return {i: list(engine.submit(Job(*cases[i], Sampling(max_new_tokens=N))).results()) for i in order}
    finally:
        if close:
            engine.close()


@pytest.mark.parametrize("ort_copies", [False, True], ids=["host-copies", "onnxruntime-copies"])
def test_the_prompt_cache_reuses_pieces_and_changes_nothing(served, runtime, ort_copies):
    prompts = _prompts(runtime)
    n = next(i for i, (x, y) in enumerate(zip(prompts[0], prompts[1])) if x != y)
    assert n > 4  # the chat template's head
    cases = [(prompts[i % 4], (None, "one", "wide")[i % 3]) for i in range(6)]

    def engine(slots, cache=2**20):
        e = counting(_engine(served, slots, cache_bytes=cache, chunk=4, ort_copies=ort_copies and cache > 0))
        e.prefix = prompts[0][:n]
        return e

    warm = engine(2)
    got = _answers(warm, cases, range(6), close=False)
    first = warm.computed
    assert _answers(warm, cases, range(6)) == got  # the same prompts again: nothing computed, the same answers
    assert warm.computed == first
    # every (prompt, adapter) pair differs, so only the template head is shared: computed once per adapter (3)
    assert first == sum(len(pieces(ids, prompts[0][:n], 4)) for ids, _ in cases) - (6 - 3)
    for i in range(6):  # each request alone on an engine without a cache: the same answer
        assert _answers(engine(1, cache=0), cases, [i]) == {i: got[i]}


def test_onnxruntime_copies_save_a_slots_tokens_and_write_back_only_where_they_go(served):
    """The prompt cache's copies on a GPU (run here on the CPU provider): a Slice per KV buffer saves one slot's tokens
    start..end exactly; a ScatterND bound in place writes them at another slot and position and touches nothing else."""
    decoder = SlotDecoder(*served, slots=3, context=64)
    buffers = [b for pair in decoder.kv for b in pair]
    rng = np.random.default_rng(0)
    for b in buffers:
        b.host[...] = rng.standard_normal(b.host.shape)
    copies = KVCopies(decoder.kv, "CPUExecutionProvider")
    copies.check()  # what a GPU engine runs before it keeps a prompt cache
    saved = copies.save(1, 5, 17)  # per layer [key, value], as the prompt cache keeps it
    flat = [rows for pair in saved for rows in pair]
    assert [len(pair) for pair in saved] == [2] * len(decoder.kv)
    assert [p.shape for p in flat] == [(1, *buffers[0].shape[1:2], 12, buffers[0].shape[3])] * len(buffers)
    assert all(np.array_equal(p.value.numpy()[0], b.host[1, :, 5:17]) for p, b in zip(flat, buffers))
    before = [b.host.copy() for b in buffers]
    copies.load(2, 40, saved)
    for p, b, old in zip(flat, buffers, before):
        assert np.array_equal(b.host[2, :, 40:52], p.value.numpy()[0])
        b.host[2, :, 40:52] = old[2, :, 40:52]
        assert np.array_equal(b.host, old)  # nothing else moved


def test_a_conversation_reuses_its_history(served, runtime):
    first = [{"role": "user", "content": RECORDS[0]["prompt"]}]
    turn = runtime.prompt_ids(first + [{"role": "assistant", "content": RECORDS[0]["response"]},
                                       {"role": "user", "content": RECORDS[1]["prompt"]}])
    asked = runtime.prompt_ids(first)
    assert turn[:len(asked)] == asked
    cases = [(asked, "one"), (turn, "one")]
    warm = counting(_engine(served, slots=1, context=256, chunk=8))
    got = _answers(warm, cases, [0], close=False)
    before = warm.computed
    got |= _answers(warm, cases, [1])
    spans = pieces(turn, [], 8)
    assert warm.computed - before == len(spans) - len(asked) // 8  # the first turn's whole blocks were copied
    assert _answers(_engine(served, slots=1, context=256, cache_bytes=0, chunk=8), cases, [1]) == {1: got[1]}


def test_a_prompt_prefilled_over_several_turns_is_not_disturbed_by_the_rows_decoding(served, runtime):
    """B's prompt takes several turns (pieces of 4 tokens, no cache) in slot 0 while A decodes in slot 1: the decode
    steps of those turns span slot 0 too, and must not write into the part of its cache that B has filled."""
    prompts = _prompts(runtime)

    alone = _answers(_engine(served, cache_bytes=0, chunk=4), [(prompts[2], "one")], [0])[0]
    busy, ended = _engine(served, cache_bytes=0, chunk=4), []
    try:
        with busy.cond:  # all three queued before the engine admits any: the overlap is the engine's own order
            x = busy.submit(Job(prompts[0], None, Sampling(max_new_tokens=1)))  # slot 0, done at its prompt's end
            a = busy.submit(Job(prompts[1], "wide", Sampling(max_new_tokens=60), out=Ends("a", ended)))  # slot 1
            b = busy.submit(Job(prompts[2], "one", Sampling(max_new_tokens=N), out=Ends("b", ended)))  # then slot 0
        list(x.results())
        assert list(b.results()) == alone
        list(a.results())
        assert ended == ["b", "a"]  # B's prompt and answer ran while A was decoding, in the engine's own order
    finally:
        busy.close()


def test_the_prompt_cache_keeps_to_its_bound_least_recently_used_first():
    cache = PromptCache(max_bytes=3000)
    kv = [[np.zeros(100, np.float32), np.zeros(100, np.float32)]]  # 800 bytes
    for key in (b"a", b"b", b"c"):
        cache.put(key, kv, None)
    assert cache.get(b"a", last=False) is not None  # a is now the most recent
    assert cache.get(b"a", last=True) is None  # no logits: not a prompt's end
    cache.put(b"d", kv, np.zeros(10, np.float32))  # 840 bytes: b goes
    assert list(cache.entries) == [b"c", b"a", b"d"] and cache.nbytes == 2440 <= 3000
    assert cache.get(b"d", last=True).logits.shape == (10,)
    cache.put(b"big", [[np.zeros(1000, np.float32)] * 2], None)  # larger than the whole bound: not kept
    assert b"big" not in cache.entries and cache.nbytes == 2440
    assert piece_keys("one", [1, 2, 3], [(0, 2), (2, 3)])[0] != piece_keys(None, [1, 2, 3], [(0, 2)])[0]
    assert piece_keys(None, [1, 2, 3], [(0, 2), (2, 3)])[1] != piece_keys(None, [1, 9, 3], [(0, 2), (2, 3)])[1]


def _longrope_graph():
    """The builder's LongRoPE choice in miniature: If(total length > 4) picks the long or the short cache."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(name, value):
        const = helper.make_node("Constant", [], [f"{name}_cache"], value=numpy_helper.from_array(
            np.full((2, 3), value, np.float32)))
        return helper.make_graph([const], name, [], [helper.make_tensor_value_info(f"{name}_cache", TensorProto.FLOAT,
                                                                                    [2, 3])])
    nodes = [helper.make_node("Shape", ["mask"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
             helper.make_node("Greater", ["length", "limit"], ["long"]),
             helper.make_node("If", ["long"], ["cache"], then_branch=branch("large", 2.0),
                              else_branch=branch("small", 1.0), name="/model/rope_caches_subgraph/If"),
             helper.make_node("Add", ["cache", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "rope", [helper.make_tensor_value_info("mask", TensorProto.INT64, [1, "n"]),
                        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array(4, np.int64), "limit")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_the_short_rope_branch_is_inlined_only_when_the_context_stays_short():
    import onnxruntime as ort

    from edgewise.models.rope import short_rope_only

    def run(model, n):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"mask": np.ones((1, n), np.int64), "x": np.zeros((2, 3), np.float32)})[0]

    long_context = _longrope_graph()
    assert not short_rope_only(long_context.graph, context=5)  # past the short range: the If must stay
    assert [n.op_type for n in long_context.graph.node].count("If") == 1
    short = _longrope_graph()
    assert short_rope_only(short.graph, context=4)
    assert "If" not in [n.op_type for n in short.graph.node] and "Greater" not in [n.op_type for n in short.graph.node]
    for n in (1, 4):
        assert np.array_equal(run(short, n), run(_longrope_graph(), n))
    assert run(_longrope_graph(), 5)[0, 0] == 2.0  # the original takes the long branch past the limit
