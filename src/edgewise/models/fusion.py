"""Exact graph fusions the model builder leaves out.

A decoder layer's gate and up projections read the same activation. One matrix product over both (their weights side
by side, the result split in two) gives the same numbers as two, and on the CPU it is cheaper: one pass over the
activation (MatMulNBits quantizes it once, not twice) and one parallel region instead of two. The fused node is named
as a checkpoint's own packed `gate_up_proj` (Phi-3's), so LoRA layouts and adapters treat both alike."""
from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

_GATE = re.compile(r"^/model/layers\.\d+/mlp/gate_proj/(MatMul(?:NBits)?(?:_Q\d+)?)$")


def fuse_gate_up(model: onnx.ModelProto) -> int:
    """Fuse every layer's gate/up pair in place (weights must be loaded); the number of layers fused."""
    graph = model.graph
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 13:
        return 0  # Split takes its sizes as an input from opset 13
    inits = {i.name: i for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    fused = 0
    for gate in list(graph.node):
        up = nodes.get(gate.name.replace("/gate_proj/", "/up_proj/")) if _GATE.match(gate.name) else None
        pair = _fused_pair(gate, up, inits) if up is not None else None
        if pair is None:
            continue
        node, split, new_inits = pair
        at = list(graph.node).index(gate)
        graph.node.remove(gate)
        graph.node.remove(up)
        graph.node.insert(at, split)
        graph.node.insert(at, node)
        graph.initializer.extend(new_inits)
        fused += 1
    if fused:
        used = {name for n in graph.node for name in n.input}
        keep = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return fused


def _fused_pair(gate, up, inits):
    """(the fused projection, the Split that restores both outputs, its new initializers), or None where the two
    nodes differ in kind, input or settings, or where their weights are not constants."""
    if gate.op_type != up.op_type or gate.input[0] != up.input[0] or len(gate.input) != len(up.input):
        return None
    g_attrs, u_attrs = ({a.name: helper.get_attribute_value(a) for a in n.attribute} for n in (gate, up))
    name = gate.name.replace("/gate_proj/", "/gate_up_proj/")
    prefix = name.rsplit("/", 1)[0]
    if gate.op_type == "MatMulNBits":
        if {k: v for k, v in g_attrs.items() if k != "N"} != {k: v for k, v in u_attrs.items() if k != "N"}:
            return None
        # B, scales, zero points and bias are stored column (N) major: side by side is one concatenation on axis 0
        axes = {1: 0, 2: 0, 3: 0, 5: 0}
        widths = [g_attrs["N"], u_attrs["N"]]
        attrs = {**g_attrs, "N": sum(widths)}
    elif gate.op_type == "MatMul" and not g_attrs:
        axes = {1: 1}  # a float weight [K, N]
        widths = None
        attrs = {}
    else:
        return None
    inputs, new_inits = [gate.input[0]], []
    for i, (a, b) in enumerate(zip(gate.input[1:], up.input[1:]), start=1):
        if not a and not b:
            inputs.append("")
            continue
        if a not in inits or b not in inits:
            return None
        wa, wb = numpy_helper.to_array(inits[a]), numpy_helper.to_array(inits[b])
        if i not in axes:  # g_idx: the same for both, or no fusion
            if not np.array_equal(wa, wb):
                return None
            inputs.append(a)
            continue
        if widths is None:
            widths = [wa.shape[1], wb.shape[1]]
        merged = a.replace("gate_proj", "gate_up_proj") if "gate_proj" in a else f"{name}/input_{i}"
        new_inits.append(numpy_helper.from_array(np.concatenate([wa, wb], axes[i]), merged))
        inputs.append(merged)
    sizes = f"{prefix}/split_sizes"
    new_inits.append(numpy_helper.from_array(np.array(widths, np.int64), sizes))
    out = f"{name}/output_0"
    node = helper.make_node(gate.op_type, inputs, [out], name=name, domain=gate.domain or None, **attrs)
    split = helper.make_node("Split", [out, sizes], [gate.output[0], up.output[0]], name=f"{prefix}/Split", axis=-1)
    return node, split, new_inits
