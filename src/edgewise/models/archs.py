"""Per-architecture facts, keyed by Hugging Face `model_type`. Passes read this table; nothing else branches on it."""
from __future__ import annotations

from dataclasses import dataclass

from edgewise.core.errors import EdgewiseError


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

# Packed projections, in a Hugging Face checkpoint (Phi-3's qkv_proj, gate_up_proj) or in the graph the ONNX Runtime
# GenAI builder emits for every family (its fused qkv_proj), and the projections they hold, in output order.
PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}

ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", _LLAMA_GROUPS, _QV),
    "mistral": Arch("mistral", _LLAMA_GROUPS, _QV),
    "qwen2": Arch("qwen2", _LLAMA_GROUPS, _QV),
    "qwen3": Arch("qwen3", _LLAMA_GROUPS, _QV),
    "gemma": Arch("gemma", _LLAMA_GROUPS, _QV, norm_offset=1.0),
    "phi3": Arch("phi3", _PHI3_GROUPS, ("qkv_proj", "o_proj"), repairs=(_plain_rope_window,)),
}


def arch_for(config) -> Arch:
    """The table entry for a transformers config, or one clear error naming what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        supported = ", ".join(sorted(ARCHS))
        raise EdgewiseError(f"unsupported architecture '{model_type}': edgewise supports {supported}")
    return ARCHS[model_type]


def repair_config(config: dict) -> list[str]:
    """Apply the architecture's config repairs in place; one note per change."""
    arch = ARCHS.get(config.get("model_type"))
    return [note for repair in (arch.repairs if arch else ()) if (note := repair(config))]


def unpacked(projection: str) -> tuple[str, ...]:
    """The projections a (possibly packed) projection holds: qkv_proj -> q_proj, k_proj, v_proj."""
    return PACKED.get(projection, (projection,))


def projection_sizes(config) -> dict[str, int]:
    """Output width of each projection of a decoder layer, from a transformers config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return {"q_proj": config.num_attention_heads * head_dim, "k_proj": kv * head_dim, "v_proj": kv * head_dim,
            "o_proj": config.hidden_size, "gate_proj": config.intermediate_size,
            "up_proj": config.intermediate_size, "down_proj": config.hidden_size}
