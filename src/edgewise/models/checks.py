"""Checks of an exported model folder that need no accelerator: the graph's types and shapes (ONNX shape inference,
and the graph resolved by onnxruntime's CPU session, which knows the runtime's own operators), each LoRA input's
type against the activation at its node, and every `.onnx_adapter` against the model's inputs by name, type and
shape. Whatever fails is one line naming the tensor."""
from __future__ import annotations

import json
from pathlib import Path

import onnx

from edgewise.core.errors import EdgewiseError
from edgewise.models import npu, onnx_lora

_ORT_TYPES = {"tensor(float)": "float", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16"}


def lora_inputs(graph) -> dict[str, tuple[str, list]]:
    """LoRA input name -> (element type, dims with None where symbolic)."""
    found = {}
    for value in graph.input:
        if value.name.endswith((".lora_A", ".lora_B")):
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            found[value.name] = (onnx_lora.type_name(tensor.elem_type), dims)
    return found


def check_lora_types(graph) -> None:
    """Each LoRA input has the type of the activation it multiplies (fp32 inputs in an fp16 graph do not load)."""
    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    inputs = lora_inputs(graph)
    for node in graph.node:
        if node.name.endswith("/lora/Add"):
            prefix = node.name.removesuffix("/lora/Add")
            projection = producers[node.input[0]]
            wanted = onnx_lora.type_name(onnx_lora.activation_dtype(projection, inits))
            for tensor in (f"{prefix}.lora_A", f"{prefix}.lora_B"):
                if inputs[tensor][0] != wanted:
                    raise EdgewiseError(f"LoRA input {tensor} is {inputs[tensor][0]}, but the activation at "
                                        f"{projection.name} is {wanted}")


def check_adapter(path: Path, inputs: dict[str, tuple[str, list]]) -> None:
    """Every tensor of an .onnx_adapter is a LoRA input of the model, with its type and shape."""
    import onnxruntime as ort

    try:
        adapter = ort.AdapterFormat.read_adapter(str(path))  # its parameters alias its memory: keep it while reading
        params = adapter.get_parameters()
    except Exception as exc:  # onnxruntime reports unreadable FlatBuffers as RuntimeError, after its source location
        reason = str(exc).splitlines()[0].rsplit(") ", 1)[-1] if str(exc) else type(exc).__name__
        raise EdgewiseError(f"cannot load adapter {path}: not a readable .onnx_adapter ({reason})") from exc
    for name, value in params.items():
        if name not in inputs:
            raise EdgewiseError(f"adapter {path.name}: tensor {name} is not an input of the model")
        dtype, dims = inputs[name]
        got = _ORT_TYPES.get(value.data_type(), value.data_type())
        shape = list(value.shape())
        if got != dtype or len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
            raise EdgewiseError(f"adapter {path.name}: tensor {name} is {got} {shape}, the model's input is {dtype} "
                                f"{['rank' if d is None else d for d in dims]}")


def check_graph(model_path: Path) -> None:
    """Types and shapes: ONNX shape inference (operators it does not know are skipped), then the graph resolved by an
    onnxruntime CPU session, which binds every type (this is where fp32 LoRA inputs in an fp16 graph fail)."""
    import onnxruntime as ort

    try:
        onnx.shape_inference.infer_shapes(onnx.load(model_path, load_external_data=False), check_type=True)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnx raises InferenceError, onnxruntime Fail/InvalidGraph with the node's name
        text = str(exc).strip().splitlines()[0]
        if "Could not find an implementation" not in text:  # a missing CPU kernel: the types did resolve
            raise EdgewiseError(f"the exported graph does not check: {text}") from exc


def _genai(model_dir: Path) -> dict:
    path = Path(model_dir) / "genai_config.json"
    return json.loads(path.read_text()) if path.is_file() else {"model": {}}


def lora_graph(model_dir: Path):
    """The graph whose inputs an adapter must match: model.onnx, or a decoder pipeline's prompt (context) graph."""
    genai = _genai(model_dir)
    name = "model.onnx"
    if npu.is_pipeline(genai):
        name = genai["model"]["decoder"]["pipeline"][0]["context"]["filename"]
    return onnx.load(Path(model_dir) / name, load_external_data=False).graph


def check_pipeline(model_dir: Path, genai: dict) -> list[str]:
    """A decoder pipeline: its CPU graphs resolve, each compiled graph has its context binaries, the LoRA inputs
    have the activations' type (the cache's) and every adapter matches them."""
    parts = genai["model"]["decoder"]["pipeline"][0]
    compiled = {}
    for name, part in parts.items():
        path = Path(model_dir) / part["filename"]
        if not part["session_options"]["provider_options"]:
            check_graph(path)
            continue
        graph = onnx.load(path, load_external_data=False).graph
        for node in graph.node:
            for attr in (a for a in node.attribute if a.name == "ep_cache_context"):
                if not (path.parent / attr.s.decode()).is_file():
                    raise EdgewiseError(f"{path.name}: its context binary {attr.s.decode()} is missing")
        compiled[name] = graph
    graph = compiled["context"]  # the graph adapters match (lora_graph's)
    inputs = lora_inputs(graph)
    cache = onnx_lora.type_name(graph.input[0].type.tensor_type.elem_type)  # the input embeddings
    wrong = [name for name, (dtype, _) in inputs.items() if dtype != cache]
    if wrong:
        raise EdgewiseError(f"LoRA input {wrong[0]} is {inputs[wrong[0]][0]}, the activations are {cache}")
    adapters = sorted(Path(model_dir).glob("*.onnx_adapter"))
    for adapter in adapters:
        check_adapter(adapter, inputs)
    ranks = sorted({dims[1] for name, (_, dims) in inputs.items() if name.endswith(".lora_A")})
    return [f"graphs: {', '.join(n for n in parts if n not in compiled)} resolved by onnxruntime (CPU); "
            f"{', '.join(compiled)} compiled for HTP with CPU fallback disabled, context binaries present: passed",
            f"LoRA inputs: {len(inputs)}, {cache}, fixed rank {ranks[0] if ranks else '-'}: passed",
            f"adapters: {len(adapters)} match the model's inputs by name, type and shape: passed"]


def check_export(model_dir: Path) -> list[str]:
    """Run every structural check on an exported folder; the lines say what was checked."""
    genai = _genai(model_dir)
    if npu.is_pipeline(genai):
        return check_pipeline(model_dir, genai)
    model_path = Path(model_dir) / "model.onnx"
    check_graph(model_path)
    graph = onnx.load(model_path, load_external_data=False).graph
    check_lora_types(graph)
    inputs = lora_inputs(graph)
    adapters = sorted(Path(model_dir).glob("*.onnx_adapter"))
    for adapter in adapters:
        check_adapter(adapter, inputs)
    types = sorted({dtype for dtype, _ in inputs.values()})
    return ["graph types and shapes: passed (onnx shape inference, onnxruntime graph resolution)",
            f"LoRA inputs: {len(inputs)}, {', '.join(types) or 'none'}, each the type of its activation: passed",
            f"adapters: {len(adapters)} match the model's inputs by name, type and shape: passed"]
