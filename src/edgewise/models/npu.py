"""The NPU target's graphs: the builder's CPU model rewritten as an ONNX Runtime GenAI decoder pipeline for Qualcomm
HTP (onnxruntime's QNN execution provider), with the same MatMulNBits integers and LoRA inputs as the CPU model.

    embeddings (CPU)  input_ids -> fp16 inputs_embeds   the int8/float table and its Gather stay on the CPU
    context    (HTP)  a window of `window` prompt tokens  static shapes: [1, window] in, KV [1, kv_heads, context, D]
    iterator   (HTP)  one generated token               the same body at [1, 1]
    lm_head    (CPU)  fp16 hidden -> logits             a 49k-row head does not fit HTP's memory

The body is fp16 throughout (inputs, cache, LoRA inputs, scales and norms): HTP computes in fp16, and fp16 at the
boundary halves the cache and what crosses between CPU and NPU.

The body takes `past_sequence_length` ([1, 1], the last position's index) and `total_sequence_length` ([1]) straight
into GroupQueryAttention, as onnxruntime-genai feeds them to a windowed pipeline (no attention mask; the cache is
shared in place). What HTP lacks is rewritten: SkipSimplifiedLayerNormalization becomes Add + SimplifiedLayerNorm.
LoRA inputs get a fixed rank (HTP compiles static shapes): smaller adapters are zero-padded to it. Padding tokens
take the id `vocab_size`, which no text encodes to (a chat prompt contains the tokenizer's own pad, e.g. SmolLM2's
<|im_end|>); the embeddings graph clamps it to a real row, and causal attention keeps it out of every real token."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgewise.core.errors import EdgewiseError
from edgewise.models.rope import require_short_rope, small_constants

ON_HTP = ("context", "iterator")
IDS, PAST, TOTAL = "input_ids", "past_sequence_length", "total_sequence_length"


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def _slice(graph, outputs: list[str], stops: set[str]) -> list:
    """The nodes that compute `outputs` from `stops` (and initializers), in the graph's order."""
    producers, keep, todo = _producers(graph), set(), list(outputs)
    while todo:
        node = producers.get(todo.pop())
        if node is not None and id(node) not in keep and not set(node.output) & stops:
            keep.add(id(node))
            todo.extend(name for name in node.input if name and name not in stops)
    return [node for node in graph.node if id(node) in keep]


def _for_htp(nodes: list, constants: dict) -> list:
    """Operators HTP lacks, decomposed: Skip(Simplified)LayerNormalization -> Add (its residual output, its bias) +
    the norm; Pow(x, 2) (squared ReLU, an int32 exponent) -> Mul(x, x)."""
    out = []
    for node in nodes:
        if node.op_type == "Pow" and np.array_equal(constants.get(node.input[1], ()), [2]):
            out.append(helper.make_node("Mul", [node.input[0]] * 2, list(node.output), name=node.name))
        elif node.op_type in ("SkipSimplifiedLayerNormalization", "SkipLayerNormalization"):
            out.extend(_skip_norm(node))
        else:
            out.append(node)
    return out


def _skip_norm(node) -> list:
    total = node.output[3] if len(node.output) > 3 and node.output[3] else f"{node.name}/residual"
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-6)
    inputs = list(node.input) + [""] * (5 - len(node.input))  # input, skip, gamma, beta, bias
    nodes = [helper.make_node("Add", inputs[:2], [total if not inputs[4] else f"{node.name}/sum"],
                              name=f"{node.name}/Add")]
    if inputs[4]:
        nodes.append(helper.make_node("Add", [f"{node.name}/sum", inputs[4]], [total], name=f"{node.name}/AddBias"))
    if node.op_type == "SkipSimplifiedLayerNormalization":
        norm = helper.make_node("SimplifiedLayerNormalization", [total, inputs[2]], [node.output[0]],
                                name=f"{node.name}/Norm", axis=-1, epsilon=eps, stash_type=1)
    else:
        norm = helper.make_node("LayerNormalization", [total, inputs[2]] + ([inputs[3]] if inputs[3] else []),
                                [node.output[0]], name=f"{node.name}/Norm", axis=-1, epsilon=eps)
    return [*nodes, norm]


def full_attention_within(graph) -> int | None:
    """The narrowest sliding window of the graph's attention (None: every layer attends to the whole context)."""
    windows = [a.i for n in graph.node if n.op_type == "GroupQueryAttention" for a in n.attribute
               if a.name == "local_window_size" and a.i >= 0]
    return min(windows) if windows else None


def _attention_for_htp(graph, context: int, head_size: int) -> None:
    """What HTP's attention cannot express, refused in one line; sliding windows that cover the whole context
    dropped (they change nothing there)."""
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    attributes = {(a.name, a.i if a.type == onnx.AttributeProto.INT else a.f) for n in attention for a in n.attribute}
    if ("rotary_interleaved", 1) in attributes:
        raise EdgewiseError("this model rotates interleaved pairs of channels (rotary_interleaved), which HTP's "
                            "attention lacks: the NPU target does not take it yet")
    if any(name == "softcap" and value for name, value in attributes):
        raise EdgewiseError("this model soft-caps its attention scores (attn_logit_softcapping), which HTP's "
                            "attention lacks: the NPU target does not take it yet")
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    if any(len(n.input) > 7 and shapes.get(n.input[7], [0, head_size // 2])[-1] * 2 < head_size for n in attention):
        raise EdgewiseError("this model rotates only part of each head (partial rotary), which HTP's attention "
                            "does not compute as the CPU model does (measured: the logits differ): the NPU target "
                            "does not take it yet")
    if any(n.op_type == "RotaryEmbedding" for n in graph.node):
        raise EdgewiseError("this model applies its rotary embedding outside the attention (norms after RoPE), "
                            "which the NPU pipeline does not feed yet: the NPU target does not take it yet")
    window = full_attention_within(graph)
    if window is not None and context > window:
        raise EdgewiseError(f"this model's sliding-window layers attend to the last {window} tokens, which HTP's "
                            f"attention cannot express: use --context_length {window} or less")
    for node in attention:
        for attr in node.attribute:
            if attr.name == "local_window_size":
                attr.i = -1


def _model(source, nodes, inputs, outputs, name: str, initializers=()) -> onnx.ModelProto:
    inits = {i.name: i for i in source.graph.initializer}
    used = {name for node in nodes for name in node.input} - {value.name for value in inputs}
    graph = helper.make_graph(nodes, name, inputs, outputs, [inits[n] for n in sorted(used) if n in inits]
                              + list(initializers))
    return helper.make_model(graph, opset_imports=source.opset_import, ir_version=source.ir_version)


def _tensor(name: str, elem: int, shape: list):
    return helper.make_tensor_value_info(name, elem, shape)


class Layout:
    """Where the builder's graph is cut: the embeddings' output, the final norm's output, the attention's length
    inputs, the cache names and the LoRA inputs."""

    def __init__(self, model: onnx.ModelProto, decoder: dict):
        graph = model.graph
        heads = [n for n in graph.node if n.name.startswith("/lm_head/") and n.op_type in ("MatMul", "MatMulNBits")]
        attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
        first_norm = [n for n in graph.node if n.name.startswith("/model/layers.0/input_layernorm/")]
        if len(heads) != 1 or not attention or not first_norm:
            raise EdgewiseError("the NPU pipeline needs the builder's decoder graph (one lm_head, GroupQueryAttention"
                                " layers); this export has another layout")
        self.logits = "logits"  # after the head's bias, scaling or soft-capping, if any
        self.embeds, self.hidden = first_norm[0].input[0], heads[0].input[0]
        self.lengths = set(attention[0].input[5:7])
        layers = decoder["num_hidden_layers"]
        self.past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        self.present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        self.lora = [i for i in graph.input if i.name.endswith((".lora_A", ".lora_B"))]
        self.elem = graph.input[[i.name for i in graph.input].index(self.past[0])].type.tensor_type.elem_type
        self.hidden_size = decoder["hidden_size"]
        self.kv_shape = [decoder["num_key_value_heads"], decoder["head_size"]]


def _lora_shape(value, rank: int) -> list[int]:
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
    return [dims[0], rank] if value.name.endswith(".lora_A") else [rank, dims[1]]


def split(model: onnx.ModelProto, decoder: dict, vocab: int, window: int, context: int, rank: int) -> dict:
    """The four pipeline graphs (embeddings, context, iterator, lm_head) from the builder's CPU model (with edgewise's LoRA inputs, if any)."""
    require_short_rope(model.graph, context)
    _attention_for_htp(model.graph, context, decoder["head_size"])
    cut = Layout(model, decoder)
    constants = small_constants(model.graph)
    graph = model.graph
    parts = {"embeddings": _embeddings(model, cut, vocab), "lm_head": _head(model, cut, vocab)}
    body = _slice(graph, [cut.hidden, *cut.present], {cut.embeds, *cut.lengths, *cut.past})
    lora = {value.name: _lora_shape(value, rank) for value in cut.lora}
    for name, length in (("context", window), ("iterator", 1)):
        nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in _for_htp(body, constants)]
        for node in nodes:
            if node.op_type == "GroupQueryAttention":
                node.input[5], node.input[6] = PAST, TOTAL  # seqlens_k and total length, as the runtime feeds them
        kv = [1, cut.kv_shape[0], context, cut.kv_shape[1]]
        inputs = [_tensor(cut.embeds, cut.elem, [1, length, cut.hidden_size]),
                  _tensor(PAST, TensorProto.INT32, [1, 1]), _tensor(TOTAL, TensorProto.INT32, [1]),
                  *[_tensor(p, cut.elem, kv) for p in cut.past],
                  *[_tensor(n, cut.elem, shape) for n, shape in lora.items()]]
        outputs = [_tensor(cut.hidden, cut.elem, [1, length, cut.hidden_size]),
                   *[_tensor(p, cut.elem, kv) for p in cut.present]]
        parts[name] = _half(_model(model, nodes, inputs, outputs, name))
    return parts


def _half(model: onnx.ModelProto) -> onnx.ModelProto:
    """The body in fp16, inputs, cache and weights' scales included (HTP computes in fp16 anyway; fp16 at the
    boundary halves the cache and what crosses to the NPU); the int4 integers are untouched."""
    graph = model.graph
    floats = [i for i in graph.initializer if i.data_type == TensorProto.FLOAT]
    for init in floats:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    for value in (*graph.input, *graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    return model


def _head(model, cut: Layout, vocab: int) -> onnx.ModelProto:
    """fp16 hidden states -> logits: the head stays in the CPU model's type."""
    nodes = [onnx.NodeProto.FromString(n.SerializeToString())
             for n in _slice(model.graph, [cut.logits], {cut.hidden})]
    for node in nodes:
        node.input[:] = [f"{cut.hidden}/float" if name == cut.hidden else name for name in node.input]
    cast = helper.make_node("Cast", [cut.hidden], [f"{cut.hidden}/float"], name="/npu/hidden_to_float", to=cut.elem)
    return _model(model, [cast, *nodes], [_tensor(cut.hidden, TensorProto.FLOAT16, [1, "sequence_length",
                                                                                      cut.hidden_size])],
                  [_tensor("logits", cut.elem, [1, "sequence_length", vocab])], "lm_head")


def _embeddings(model, cut: Layout, vocab: int) -> onnx.ModelProto:
    """input_ids -> fp16 inputs_embeds, the padding id (vocab) clamped to a real row first."""
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in _slice(model.graph, [cut.embeds], {IDS})]
    for node in nodes:
        node.input[:] = ["input_ids/clamped" if name == IDS else name for name in node.input]
        node.output[:] = [f"{cut.embeds}/float" if name == cut.embeds else name for name in node.output]
    clamp = helper.make_node("Min", [IDS, "input_ids/last"], ["input_ids/clamped"], name="/npu/clamp_padding")
    half = helper.make_node("Cast", [f"{cut.embeds}/float"], [cut.embeds], name="/npu/embeds_to_fp16",
                            to=TensorProto.FLOAT16)
    last = numpy_helper.from_array(np.array(vocab - 1, np.int64), "input_ids/last")
    return _model(model, [clamp, *nodes, half], [_tensor(IDS, TensorProto.INT64, [1, "sequence_length"])],
                  [_tensor(cut.embeds, TensorProto.FLOAT16, [1, "sequence_length", cut.hidden_size])], "embeddings",
                  [last])


def genai_config(cpu_config: dict, parts: dict, files: dict, window: int, context: int, htp_options: dict) -> dict:
    """The CPU model's genai_config.json turned into the decoder pipeline over `files` (part -> file name)."""
    config = {**cpu_config, "model": dict(cpu_config["model"]), "search": dict(cpu_config["search"])}
    model = config["model"]
    decoder = {k: v for k, v in model["decoder"].items() if k not in ("filename", "inputs", "session_options")}
    cut = parts["context"].graph
    embeds, hidden = cut.input[0].name, cut.output[0].name
    body_inputs = [value.name for value in cut.input]
    present = [value.name for value in cut.output[1:]]
    cpu = {"log_id": "onnxruntime-genai", "provider_options": []}
    htp = {"log_id": "onnxruntime-genai", "provider_options": [{"QNN": htp_options}]}
    decoder.update(
        session_options=htp,
        inputs={"input_ids": IDS, "past_sequence_length": PAST, "total_sequence_length": TOTAL,
                "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        sliding_window={"window_size": window, "pad_value": 0, "alignment": "left", "slide_key_value_cache": False},
        pipeline=[{
            "embeddings": {"filename": files["embeddings"], "inputs": [IDS], "outputs": [embeds],
                           "session_options": cpu},
            "context": {"filename": files["context"], "inputs": body_inputs, "outputs": [hidden, *present],
                        "session_options": htp, "run_on_token_gen": False},
            "iterator": {"filename": files["iterator"], "inputs": body_inputs, "outputs": [hidden, *present],
                         "session_options": htp, "run_on_prompt": False},
            "lm_head": {"filename": files["lm_head"], "inputs": [hidden], "outputs": ["logits"],
                        "session_options": cpu, "is_lm_head": True},
        }])
    model.update(type="decoder-pipeline", decoder=decoder, context_length=context, pad_token_id=model["vocab_size"])
    config["search"]["max_length"] = context
    return config


def is_pipeline(genai: dict) -> bool:
    return genai["model"].get("type") == "decoder-pipeline"


def window_of(genai: dict) -> int:
    return int(genai["model"]["decoder"].get("sliding_window", {}).get("window_size", 1))


def padded_length(prompt: int, window: int) -> int:
    """Tokens a prompt takes in the pipeline's sequence: padded to whole windows."""
    return -(-prompt // window) * window
