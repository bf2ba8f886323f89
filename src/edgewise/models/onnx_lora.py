"""LoRA as runtime-switchable inputs of an ONNX Runtime GenAI model, and PEFT adapters as `.onnx_adapter` files.

For every projection node the builder emitted (fused ones such as qkv_proj included) that covers a LoRA target, the
graph gets   y = base(x) + (x @ A) @ B   with A [in, rank] and B [rank, out] as graph inputs whose defaults are empty
(rank 0), or one column of zeros where the target's runtime takes no empty tensors: without an adapter the model is
the base; the rank is symbolic, so adapters of any rank load. A PEFT adapter becomes A = concat(A_i^T) and B = block
rows of (alpha/r) B_i^T placed at each projection's output offset, so separate q/k/v adapters and packed qkv adapters
(Phi-3) both map onto the same inputs. `lora_layout.json` beside the model records which projections each input
covers."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgewise.core.errors import EdgewiseError
from edgewise.models.archs import projection_sizes, unpacked

LAYOUT = "lora_layout.json"
ADAPTER_FILE = "adapter_weights.onnx_adapter"
# The builder names a projection /model/layers.N/attn|mlp/NAME/MatMul, MatMulNBits when the checkpoint was already
# int4, and MatMul_Q4 (a MatMulNBits node) when it quantizes an fp checkpoint itself.
_NODE = re.compile(r"^/model/layers\.(\d+)/(attn|mlp)/(\w+_proj|fc\d)/MatMul(?:NBits)?(?:_Q\d+)?$")


def _weight_shape(node, inits) -> tuple[int, int]:
    if node.op_type == "MatMulNBits":
        attrs = {a.name: a.i for a in node.attribute}
        return attrs["K"], attrs["N"]
    return tuple(inits[node.input[1]].dims)


def type_name(elem_type: int) -> str:
    """An onnx element type as onnx names it: float, float16, bfloat16."""
    return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()


def activation_dtype(node, inits) -> int:
    """The element type of a projection's input activation (an onnx TensorProto type): MatMulNBits' scales share
    it (T1), a float MatMul's weight has it."""
    return inits[node.input[2] if node.op_type == "MatMulNBits" else node.input[1]].data_type


def add_lora_inputs(model: onnx.ModelProto, targets: set[str], config, default_rank: int = 0) -> dict:
    """Add LoRA inputs for the canonical projections in `targets`, their defaults zeros of `default_rank`; returns
    the layout to save beside the model."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    sizes = projection_sizes(config)
    layout, new_nodes = {}, []
    for node in list(graph.node):
        match = _NODE.match(node.name)
        if not match:
            continue
        layer, block, proj = int(match[1]), match[2], match[3]
        covered = unpacked(proj)
        if not targets.intersection(covered):
            continue
        k, n = _weight_shape(node, inits)
        offsets, start = {}, 0
        for name in covered:
            offsets[name] = [start, sizes[name]]
            start += sizes[name]
        if start != n:
            raise EdgewiseError(f"{node.name}: {n} outputs, but the config gives {start} for {covered}")
        prefix = f"model.layers.{layer}.{block}.{proj}"
        dtype = activation_dtype(node, inits)
        new_nodes.append((node, _lora_nodes(graph, node, prefix, k, n, dtype, default_rank)))
        layout[prefix] = {"layer": layer, "in": k, "out": n, "covers": offsets,
                          "dtype": type_name(dtype)}
    if not layout:
        raise EdgewiseError(f"the exported graph has no projection for LoRA targets {sorted(targets)}")
    _insert_after(graph, new_nodes)
    return layout


def _lora_nodes(graph, node, prefix: str, k: int, n: int, dtype: int, rank0: int) -> list:
    """The LoRA branch of one projection, its A and B inputs in the activation's type, zeros of rank `rank0` by
    default (0: empty)."""
    a, b = f"{prefix}.lora_A", f"{prefix}.lora_B"
    rank = f"{prefix}.lora_rank"
    graph.input.extend([helper.make_tensor_value_info(a, dtype, [k, rank]),
                        helper.make_tensor_value_info(b, dtype, [rank, n])])
    graph.initializer.extend([helper.make_tensor(a, dtype, [k, rank0], [0] * (k * rank0)),
                              helper.make_tensor(b, dtype, [rank0, n], [0] * (rank0 * n))])
    out = node.output[0]
    base = f"{out}/base"
    node.output[0] = base
    low, delta = f"{prefix}/lora/xA", f"{prefix}/lora/xAB"
    return [helper.make_node("MatMul", [node.input[0], a], [low], name=f"{prefix}/lora/MatMul_A"),
            helper.make_node("MatMul", [low, b], [delta], name=f"{prefix}/lora/MatMul_B"),
            helper.make_node("Add", [base, delta], [out], name=f"{prefix}/lora/Add")]


def _insert_after(graph, pairs) -> None:
    """Keep the node list topologically sorted: each LoRA branch right after its projection."""
    extra = {id(node): nodes for node, nodes in pairs}
    ordered = []
    for node in graph.node:
        ordered.append(node)
        ordered.extend(extra.get(id(node), []))
    del graph.node[:]
    graph.node.extend(ordered)


# --- adapters ------------------------------------------------------------------------------------------------------

_PEFT_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj|fc\d|dense)\.lora_([AB])(?:\.default)?\.weight$")


def peft_pieces(adapter_dir: Path, config) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """(layer, canonical projection) -> (A [r, in], scaled B [out, r]); packed PEFT modules are split by rows."""
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    cfg_path, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise EdgewiseError(f"{adapter_dir} is not a PEFT adapter folder (adapter_config.json + "
                            "adapter_model.safetensors)")
    cfg = json.loads(cfg_path.read_text())
    try:
        tensors = load_file(weights)
    except Exception as exc:  # safetensors reports truncation and corruption with its own error types
        raise EdgewiseError(f"cannot read {weights}: {exc}") from exc
    raw: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _PEFT_KEY.search(key)
        if match:
            raw.setdefault((int(match[1]), match[2]), {})[match[3]] = value.astype(np.float32)
    if not raw:
        raise EdgewiseError(f"{adapter_dir}: no LoRA weights of decoder-layer projections found")
    sizes = projection_sizes(config)
    pieces = {}
    for (layer, module), ab in raw.items():
        names = unpacked(module)
        expected = sum(sizes.get(n, 0) for n in names)
        if set(ab) != {"A", "B"} or any(n not in sizes for n in names) or ab["B"].shape[0] != expected:
            raise EdgewiseError(f"{adapter_dir}: its layer {layer} {module} does not fit the model (outputs "
                                f"{ab['B'].shape[0] if 'B' in ab else '?'} vs {expected}): it belongs to another base "
                                "model")
        rank = ab["A"].shape[0]
        scale = cfg["lora_alpha"] / (rank ** 0.5 if cfg.get("use_rslora") else rank)
        row = 0
        for name in names:
            pieces[(layer, name)] = (ab["A"], ab["B"][row:row + sizes[name]] * scale)
            row += sizes[name]
    return pieces


def combined_rank(adapter_dir: Path, layout: dict, config) -> int:
    """The widest LoRA input an adapter fills: a fused projection (qkv) stacks its pieces' ranks when they have
    their own A (separate q/k/v adapters)."""
    return max(a.shape[1] for name, a in _adapter_tensors(adapter_dir, layout, config).items()
               if name.endswith(".lora_A"))


def _fixed(tensors: dict[str, np.ndarray], layout: dict) -> dict[str, np.ndarray]:
    """For a model compiled at a fixed LoRA rank (the NPU's): every input present, zero-padded to that rank."""
    out = {}
    for prefix, entry in layout.items():
        rank = entry["rank"]
        a = tensors.get(f"{prefix}.lora_A", np.zeros((entry["in"], 0), np.float32))
        b = tensors.get(f"{prefix}.lora_B", np.zeros((0, entry["out"]), np.float32))
        if a.shape[1] > rank:
            raise EdgewiseError(f"the adapter's rank {a.shape[1]} at {prefix} exceeds the model's fixed LoRA rank "
                                f"{rank}: re-export with --lora_rank {a.shape[1]}")
        out[f"{prefix}.lora_A"] = np.pad(a, ((0, 0), (0, rank - a.shape[1])))
        out[f"{prefix}.lora_B"] = np.pad(b, ((0, rank - b.shape[0]), (0, 0)))
    return out


def adapter_tensors(adapter_dir: Path, layout: dict, config) -> dict[str, np.ndarray]:
    tensors = _adapter_tensors(adapter_dir, layout, config)
    return _fixed(tensors, layout) if any("rank" in entry for entry in layout.values()) else tensors


def _adapter_tensors(adapter_dir: Path, layout: dict, config) -> dict[str, np.ndarray]:
    pieces = peft_pieces(adapter_dir, config)
    covered = {(entry["layer"], name) for entry in layout.values() for name in entry["covers"]}
    missing = sorted({name for (_, name) in pieces} - {name for (_, name) in covered})
    if missing:
        have = sorted({name for (_, name) in covered})
        raise EdgewiseError(f"the adapter trains {missing}, but the model has LoRA inputs only for {have}: "
                            "re-export with --lora_targets")
    tensors = {}
    for prefix, entry in layout.items():
        parts = [(pieces[(entry["layer"], name)], entry["covers"][name]) for name in entry["covers"]
                 if (entry["layer"], name) in pieces]
        if parts:
            tensors[f"{prefix}.lora_A"], tensors[f"{prefix}.lora_B"] = _combine(parts, entry, prefix)
    return tensors


def _combine(parts, entry, prefix):
    """One A [in, R] and one B [R, out] for a (possibly fused) projection; pieces sharing an A share its rows."""
    blocks: list[tuple[np.ndarray, list]] = []
    for (a, b), (offset, size) in parts:
        if a.shape[1] != entry["in"]:
            raise EdgewiseError(f"adapter input width {a.shape[1]} does not match the model's {entry['in']} at "
                                f"{prefix}: it belongs to another base model")
        if blocks and blocks[-1][0] is a:
            blocks[-1][1].append((b, offset))
        else:
            blocks.append((a, [(b, offset)]))
    rank = sum(a.shape[0] for a, _ in blocks)
    big_a = np.concatenate([a.T for a, _ in blocks], axis=1)
    big_b = np.zeros((rank, entry["out"]), np.float32)
    row = 0
    for a, outs in blocks:
        for b, offset in outs:
            big_b[row:row + a.shape[0], offset:offset + b.shape[0]] = b.T
        row += a.shape[0]
    return np.ascontiguousarray(big_a), big_b


def _ort_value(array: np.ndarray, dtype: str):
    """An OrtValue of `array` in the model's type (bf16 has no numpy type: its bits go in as uint16)."""
    import onnxruntime as ort

    if dtype == "bfloat16":
        bits = (np.ascontiguousarray(array, np.float32).view(np.uint32) + 0x8000 >> 16).astype(np.uint16)
        return bits, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, TensorProto.BFLOAT16)
    value = np.ascontiguousarray(array, dtype=np.dtype(dtype))
    return value, ort.OrtValue.ortvalue_from_numpy(value)


def write_adapter(tensors: dict[str, np.ndarray], path: Path, dtype: str = "float") -> Path:
    """An .onnx_adapter with `tensors` in `dtype` (the model's LoRA input type: float, float16 or bfloat16)."""
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    pairs = {k: _ort_value(v, "float32" if dtype == "float" else dtype) for k, v in tensors.items()}
    fmt.set_parameters({k: value for k, (_, value) in pairs.items()})  # the OrtValues alias the arrays kept in pairs
    tmp = Path(str(path) + ".tmp")
    fmt.export_adapter(str(tmp))
    tmp.replace(path)
    return path


def convert_adapter(adapter_dir: Path, model_dir: Path, out_file: Path, config) -> Path:
    layout_path = Path(model_dir) / LAYOUT
    if not layout_path.is_file():
        raise EdgewiseError(f"{model_dir} has no LoRA inputs: export it with an adapter or --lora_targets")
    layout = json.loads(layout_path.read_text())
    dtypes = {entry.get("dtype", "float") for entry in layout.values()}
    return write_adapter(adapter_tensors(adapter_dir, layout, config), out_file, dtypes.pop())
