"""Graph edits of the builder's rotary embeddings that hold for a bounded context."""
from __future__ import annotations

import math

import onnx

from edgewise.core.errors import EdgewiseError


def small_constants(graph, limit: int = 16) -> dict:
    """Constant tensors of at most `limit` elements by name: Constant nodes and initializers (never the weights,
    whether their data was loaded into the graph or not)."""
    found = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer
             if i.data_location != onnx.TensorProto.EXTERNAL and math.prod(i.dims) <= limit}
    found.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    return found


def short_rope_only(graph, context: int) -> bool:
    """The builder's LongRoPE chooses between its short and long cos/sin caches with an If on the sequence length
    (Greater than the original context). A decoder whose context never passes that length takes the short branch
    once and for all: the If goes (onnxruntime captures no CUDA graph of a model with control flow). False where an
    If stays."""
    producers = {out: node for node in graph.node for out in node.output}
    constants = small_constants(graph)
    for node in [n for n in graph.node if n.op_type == "If"]:
        test = producers.get(node.input[0])
        limit = constants.get(test.input[1]) if test is not None and test.op_type == "Greater" else None
        if limit is None or limit.size != 1 or context > int(limit):
            return False
        branch = next(a.g for a in node.attribute if a.name == "else_branch")
        at = list(graph.node).index(node)
        inlined = [*branch.node, *(onnx.helper.make_node("Identity", [b.name], [o], name=f"{node.name}/short/{o}")
                                   for b, o in zip(branch.output, node.output))]
        graph.node.remove(node)
        for offset, new in enumerate(inlined):
            graph.node.insert(at + offset, new)
        graph.initializer.extend(branch.initializer)
        if not any(test.output[0] in n.input for n in graph.node):
            graph.node.remove(test)
    return True


def require_short_rope(graph, context: int) -> None:
    """A graph bounded to `context` tokens must lose its control flow (HTP compiles one path; CUDA graphs need none):
    the LongRoPE If inlined to its short branch, or one line saying why it cannot be."""
    if not short_rope_only(graph, context) or any(n.op_type in ("If", "Loop") for n in graph.node):
        raise EdgewiseError(f"this model's rotary embedding switches to its long factors within --context_length "
                            f"{context}: a bounded model keeps one path; use a context up to its "
                            "original_max_position_embeddings, or 0")
