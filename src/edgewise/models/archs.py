"""Per-architecture facts, keyed by Hugging Face `model_type`. Passes read this table; nothing else branches on it."""
from __future__ import annotations

from dataclasses import dataclass

from edgewise.core.errors import EdgewiseError
from edgewise.models.encoders import is_encoder


@dataclass(frozen=True)
class InputGroup:
    """Linears of a decoder layer that read the same input; AWQ scales them together.

    `prev` is the module whose output feeds them (a norm or a linear) so the inverse scale can be folded into it;
    `prev_rows` selects the slice of a packed linear's output rows that feeds them ("second_half" for gate_up);
    `block` is the token-wise module whose output AWQ's scale search scores (the MLP: an error in `up` matters as much
    as the gate lets it through); None scores the linears' own outputs.
    """

    linears: tuple[str, ...]
    prev: str | None = None
    prev_rows: str | None = None
    block: str | None = None


@dataclass(frozen=True)
class Arch:
    model_type: str
    groups: tuple[InputGroup, ...]
    lora_targets: tuple[str, ...]
    layers: str = "model.layers"  # the module list of decoder layers
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + weight)
    no_clip: tuple[str, ...] = ("q_proj", "k_proj", "qkv_proj")  # AWQ skips clipping where softmax follows
    repairs: tuple = ()  # config.json fixes the model builder needs, each f(config dict) -> note or None
    known: str = ""  # checkpoints of the family people run on devices (README's list)

    def linears(self) -> tuple[str, ...]:
        return tuple(name for group in self.groups for name in group.linears)


_LLAMA_GROUPS = (
    InputGroup(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), prev="input_layernorm"),
    InputGroup(("self_attn.o_proj",)),
    InputGroup(("mlp.gate_proj", "mlp.up_proj"), prev="post_attention_layernorm", block="mlp"),
    InputGroup(("mlp.down_proj",), prev="mlp.up_proj"),
)
_PHI3_GROUPS = (
    InputGroup(("self_attn.qkv_proj",), prev="input_layernorm"),
    InputGroup(("self_attn.o_proj",)),
    InputGroup(("mlp.gate_up_proj",), prev="post_attention_layernorm", block="mlp"),
    InputGroup(("mlp.down_proj",), prev="mlp.gate_up_proj", prev_rows="second_half"),
)
# Gemma 2 and 3 norm each block's output too (post_attention_layernorm, post_feedforward_layernorm) and feed the MLP
# from pre_feedforward_layernorm.
_GEMMA2_GROUPS = (
    InputGroup(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), prev="input_layernorm"),
    InputGroup(("self_attn.o_proj",)),
    InputGroup(("mlp.gate_proj", "mlp.up_proj"), prev="pre_feedforward_layernorm", block="mlp"),
    InputGroup(("mlp.down_proj",), prev="mlp.up_proj"),
)
# OLMo's LayerNorm has no weights: nothing to fold a scale into before attention or the MLP.
_OLMO_GROUPS = (
    InputGroup(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    InputGroup(("self_attn.o_proj",)),
    InputGroup(("mlp.gate_proj", "mlp.up_proj"), block="mlp"),
    InputGroup(("mlp.down_proj",), prev="mlp.up_proj"),
)
# Phi (2): attention and MLP run in parallel on one LayerNorm (with bias); the MLP has no gate, and GELU between fc1
# and fc2 lets no scale through.
_PHI_GROUPS = (
    InputGroup(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc1"), prev="input_layernorm"),
    InputGroup(("self_attn.dense",)),
    InputGroup(("mlp.fc2",)),
)
# Nemotron: LayerNorm1P (scale 1 + w, with bias); the MLP is up -> relu^2 -> down, no gate.
_NEMOTRON_GROUPS = (
    InputGroup(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), prev="input_layernorm"),
    InputGroup(("self_attn.o_proj",)),
    InputGroup(("mlp.up_proj",), prev="post_attention_layernorm", block="mlp"),
    InputGroup(("mlp.down_proj",)),
)
_QV = ("q_proj", "v_proj")


def _plain_rope_window(config: dict) -> str | None:
    """A Phi-3 without rope scaling is a plain-RoPE model, but transformers fills original_max_position_embeddings
    with 4096 and the builder treats any difference from max_position_embeddings as LongRoPE (and then fails on the
    missing factors: KeyError 'multi_cache'). transformers 5 writes the scaling as rope_parameters, older versions
    as rope_scaling: a LongRoPE model has long factors under either."""
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    original, window = config.get("original_max_position_embeddings"), config.get("max_position_embeddings")
    if scaling.get("long_factor") or original in (None, window):
        return None
    config["original_max_position_embeddings"] = window
    return f"original_max_position_embeddings {original} -> {window} (no rope scaling: a plain-RoPE model)"


def _longrope_type(config: dict) -> str | None:
    """transformers 5 writes a LongRoPE model's scaling with `rope_type` only; the builder reads `type` (KeyError
    'type' in make_rope_init), which hub configs such as Phi-4-mini's carry."""
    scaling = config.get("rope_parameters")
    if not isinstance(scaling, dict) or not scaling.get("long_factor") or "type" in scaling:
        return None
    scaling["type"] = scaling.get("rope_type", "longrope")
    return f"rope_parameters.type = {scaling['type']!r} (the builder reads `type`)"


def _layer_norm_eps(config: dict) -> str | None:
    """The builder reads every norm's epsilon from rms_norm_eps (1e-6 when absent), but Phi keeps it as
    layer_norm_eps and Nemotron as norm_eps (1e-5): the export would drift by ~1e-3 in the logits, with no error."""
    eps = config.get("layer_norm_eps", config.get("norm_eps"))
    if eps is None or config.get("rms_norm_eps") == eps:
        return None
    config["rms_norm_eps"] = eps
    return f"rms_norm_eps = {eps} (the builder's name for the norms' epsilon)"


# Packed projections, in a Hugging Face checkpoint (Phi-3's qkv_proj, gate_up_proj) or in the graph the ONNX Runtime
# GenAI builder emits for every family (its fused qkv_proj), and the projections they hold, in output order.
PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
# Checkpoint names of projections that the builder's graph (and so the LoRA inputs) calls otherwise: Phi's `dense`
# is the attention output, o_proj.
ALIASES = {"dense": "o_proj"}


def _arch(model_type: str, groups=_LLAMA_GROUPS, lora_targets=_QV, **facts) -> Arch:
    return Arch(model_type, groups, lora_targets, **facts)


ARCHS: dict[str, Arch] = {a.model_type: a for a in (
    _arch("llama", known="Llama 3.x, SmolLM2, TinyLlama"),
    _arch("mistral", known="Mistral 7B, Ministral"),
    _arch("qwen2", known="Qwen2, Qwen2.5"),
    _arch("qwen3", known="Qwen3 dense"),  # q/k norms sit after the projections: the table does not change
    _arch("gemma", norm_offset=1.0, known="Gemma"),
    _arch("gemma2", _GEMMA2_GROUPS, norm_offset=1.0, known="Gemma 2"),
    _arch("gemma3_text", _GEMMA2_GROUPS, norm_offset=1.0, known="Gemma 3 270M, 1B (text)"),
    _arch("phi3", _PHI3_GROUPS, ("qkv_proj", "o_proj"), repairs=(_plain_rope_window, _longrope_type),
          known="Phi-3, Phi-3.5-mini, Phi-4-mini (partial rotary)"),
    _arch("phi", _PHI_GROUPS, repairs=(_layer_norm_eps,), known="Phi-1.5, Phi-2"),
    # multipliers on embeddings, attention, residuals and logits: none sits between a norm and its linears
    _arch("granite", known="Granite 3.x"),
    _arch("smollm3", known="SmolLM3"),  # NoPE every fourth layer: a graph fact, not a weight one
    _arch("olmo", _OLMO_GROUPS, known="OLMo 1B/7B"),
    _arch("nemotron", _NEMOTRON_GROUPS, norm_offset=1.0, repairs=(_layer_norm_eps,), known="Nemotron-Mini, Minitron"),
    _arch("ernie4_5", known="ERNIE 4.5 0.3B"),
    _arch("hunyuan_v1_dense", known="Hunyuan 0.5B-7B dense"),  # q/k norms after RoPE: the table does not change
)}


def families_markdown() -> str:
    """README's table of supported families, made from this table (tests/test_families.py checks that it is)."""
    rows = ["| `model_type` | models | AWQ input groups (scaled where a producer is named) | LoRA default |",
            "| --- | --- | --- | --- |"]
    for arch in ARCHS.values():
        groups = "; ".join("/".join(n.split(".")[-1] for n in g.linears) + (f" ← {g.prev.split('.')[-1]}" if g.prev
                                                                              else "") for g in arch.groups)
        rows.append(f"| `{arch.model_type}` | {arch.known} | {groups} | {', '.join(arch.lora_targets)} |")
    return "\n".join(rows) + "\n"


_MOE = "a mixture of experts: which experts AWQ calibrates and where LoRA goes are not decided yet"
# Families the builder (or transformers) takes that edgewise refuses, and why: one line before any work.
REFUSED = {
    "gpt_oss": _MOE + "; the builder's int4 needs the original MXFP4 tensors",
    "phimoe": _MOE + "; the builder does not read transformers 5's PhimoeForCausalLM",
    "qwen3_moe": _MOE, "mixtral": _MOE, "granitemoe": _MOE,
    "granitemoehybrid": "Mamba layers, which the builder does not export (and it drops experts without an error)",
    "lfm2": "a hybrid of convolution and attention layers: AWQ and LoRA over its convolutions are not built yet",
    "olmo2": "onnxruntime-genai 0.18's builder has no OLMo 2 (norms after attention and MLP, full-width q/k norms)",
    "internlm2": "its model code ships with the checkpoint (remote code), not with transformers 5",
    **dict.fromkeys(("gemma3", "phi4_multimodal", "qwen2_5_vl", "qwen3_vl", "mistral3", "lfm2_vl"),
                    "a vision-language model: edgewise takes text decoders (carrying the vision part through the "
                    "chain unchanged is not built yet)"),
}


def refuse_known(model_type: str | None) -> None:
    """One line saying why, for a family edgewise knows it does not take (checked on config.json, before loading)."""
    if model_type in REFUSED:
        raise EdgewiseError(f"architecture '{model_type}' is not supported: {REFUSED[model_type]}")


def arch_for(config) -> Arch:
    """The table entry for a transformers config, or one clear error naming what is supported."""
    model_type = getattr(config, "model_type", None)
    refuse_known(model_type)
    if is_encoder(model_type):
        raise EdgewiseError(f"'{model_type}' is an encoder: quantize and finetune take decoders so far; auto-opt "
                            "exports it (int8 or fp32 for the CPU)")
    if model_type not in ARCHS:
        supported = ", ".join(sorted(ARCHS))
        raise EdgewiseError(f"unsupported architecture '{model_type}': edgewise supports {supported}")
    return ARCHS[model_type]


def repair_config(config: dict) -> list[str]:
    """Apply the architecture's config repairs in place; one note per change."""
    arch = ARCHS.get(config.get("model_type"))
    return [note for repair in (arch.repairs if arch else ()) if (note := repair(config))]


def unpacked(projection: str) -> tuple[str, ...]:
    """The graph's projections a checkpoint's (possibly packed or aliased) projection holds: qkv_proj -> q_proj,
    k_proj, v_proj; dense -> o_proj."""
    return PACKED.get(projection, (ALIASES.get(projection, projection),))


def projection_sizes(config) -> dict[str, int]:
    """Output width of each projection of a decoder layer, from a transformers config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return {"q_proj": config.num_attention_heads * head_dim, "k_proj": kv * head_dim, "v_proj": kv * head_dim,
            "o_proj": config.hidden_size, "gate_proj": config.intermediate_size,
            "up_proj": config.intermediate_size, "down_proj": config.hidden_size,
            "fc1": config.intermediate_size, "fc2": config.hidden_size}
