"""onnxruntime-genai 0.18's model builder, run with the fixes edgewise owns for the families where it misreads a
transformers 5 checkpoint or builds another function than the model's. Each was found by comparing an fp32 export's
logits with PyTorch's on a tiny model, and tests/test_families.py keeps checking that. Run exactly as the builder:
`python -m edgewise.models.builder_fixes -i HF_DIR -o OUT -p int4 -e cpu ...`.

- Gemma 3: transformers 5 nests the rotary settings per layer type; the builder reads one flat entry (KeyError
  'rope_type') and `rope_local_base_freq`, and then builds the sliding layers' cache with the global layers'
  scaling (linear x8 on Gemma 3 4B and larger) where transformers uses plain RoPE.
- OLMo: its norms are LayerNorms without weights at eps 1e-5; the builder emits RMSNorms at 1e-6 (wrong logits, no
  error) and ignores `clip_qkv`.
- SmolLM3: on its NoPE layers the builder turns RoPE off inside attention only and then adds rotary nodes that need
  a position_ids input the graph lacks (KeyError 'position_ids').
- Phi (2): the loader of quantized checkpoints knows neither Phi's final_layernorm nor its dense, fc1 and fc2 (it
  stops on 'final_layernorm' read as a layer number); they are read under the names it knows and handed to the Phi
  builder as fc1/fc2.

The fixes wrap the builder's classes by name in this process only; the installed package is not touched."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _gemma3_flat_rope(config) -> None:
    """The nested per-layer-type rotary settings, also as the flat entry and local theta the builder reads."""
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope and "rope_type" not in rope:
        config.rope_parameters = {**rope, **rope["full_attention"]}
        config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]


def _fix_gemma3(model_class, base_class) -> None:
    init = model_class.__init__

    def __init__(self, config, *args, **kwargs):
        if type(self) is model_class:  # Gemma 4 derives from it and reads the nested form itself
            _gemma3_flat_rope(config)
        init(self, config, *args, **kwargs)

    def make_rotary_embedding_multi_cache(self):
        self.cos_cache_global_name, self.sin_cache_global_name = "cos_cache_global", "sin_cache_global"
        base_class.make_rotary_embedding_caches(self, cos_cache_name="cos_cache_global",
                                                sin_cache_name="sin_cache_global")
        # the sliding layers: their own theta and no scaling (transformers' default RoPE there)
        self.rope_attrs.update(create_caches=True, theta=self.rope_local_theta, rescale_factors=1, mscale=1)
        self.rope_attrs.pop("rescale_inv_freq", None)
        self.cos_cache_local_name, self.sin_cache_local_name = "cos_cache_local", "sin_cache_local"
        base_class.make_rotary_embedding_caches(self, cos_cache_name="cos_cache_local",
                                                sin_cache_name="sin_cache_local")

    model_class.__init__ = __init__
    model_class.make_rotary_embedding_multi_cache = make_rotary_embedding_multi_cache


def _fix_olmo(model_class, base_class) -> None:
    init = model_class.__init__

    def __init__(self, config, *args, **kwargs):
        init(self, config, *args, **kwargs)
        self.layernorm_attrs.update(simple=False, epsilon=1e-5)  # LayerNorm (mean removed), not RMSNorm
        self.clip_qkv = getattr(config, "clip_qkv", None)

    def make_attention_input_proj(self, layer_id, attention, root_input, **kwargs):
        base_class.make_attention_input_proj(self, layer_id, attention, root_input, **kwargs)
        if self.clip_qkv is None:
            return
        dtype = self.to_str_dtype(self.io_dtype)
        low, high = (f"/model/constants/{dtype}/{v}" for v in (-float(self.clip_qkv), float(self.clip_qkv)))
        packed = not self.attention_attrs["k_path"]
        widths = {"q_path": self.q_size + 2 * self.kv_size if packed else self.q_size, "k_path": self.kv_size,
                  "v_path": self.kv_size}
        for key, width in widths.items():
            if self.attention_attrs[key]:
                name = f"/model/layers.{layer_id}/attn/{key[0]}_clip/Clip"
                self.make_clip(name, [self.attention_attrs[key], low, high], self.io_dtype,
                               ["batch_size", "sequence_length", width])
                self.attention_attrs[key] = f"{name}/output_0"

    model_class.__init__ = __init__
    model_class.make_attention_input_proj = make_attention_input_proj


def _fix_smollm3(model_class, base_class) -> None:
    make_attention = model_class.make_attention

    def fixed(self, layer_id, attention, root_input, **kwargs):
        rope = self.attention_attrs["rope"]
        self.attention_attrs["rope"] = bool(self.no_rope_layers[layer_id])  # no rotary nodes on a NoPE layer
        try:
            make_attention(self, layer_id, attention, root_input, **kwargs)
        finally:
            self.attention_attrs["rope"] = rope

    model_class.make_attention = fixed


_PHI_NAMES = (("model.final_layernorm.", "model.norm."), (".self_attn.dense.", ".self_attn.o_proj."),
              (".mlp.fc1.", ".mlp.up_proj."), (".mlp.fc2.", ".mlp.down_proj."))


def _fix_phi(model_class, base_class) -> None:
    load_weights = model_class.load_weights

    def fixed(self, input_path):
        if self.quant_type is None:
            return load_weights(self, input_path)
        from loaders.base import QuantizedModel  # the module the builder itself imports

        QuantizedModel.weight_name_replacements = _PHI_NAMES
        try:
            model = load_weights(self, input_path)
        finally:
            del QuantizedModel.weight_name_replacements
        for layer in model.layers:
            layer.mlp.fc1, layer.mlp.fc2 = layer.mlp.up_proj, layer.mlp.down_proj
        return model

    model_class.load_weights = fixed


FIXES = {"Gemma3Model": _fix_gemma3, "OLMoModel": _fix_olmo, "SmolLM3Model": _fix_smollm3, "PhiModel": _fix_phi}


def main() -> None:
    import onnxruntime_genai.models.builder as builder  # puts the builder's own modules on sys.path

    for name, fix in FIXES.items():
        fix(getattr(builder, name), builder.Model)
    _run_cli(builder)


def _run_cli(builder) -> None:
    """The builder's own `__main__`, with the classes fixed."""
    args = builder.get_args()
    extra = builder.parse_extra_options(
        args.model_name, args.input, args.output, args.precision, args.execution_provider, args.cache_dir,
        args.extra_options, builder_config_version=args.builder_config_version, target_options=args.target_options,
        drafter_options=args.drafter_options, speculative_options=args.speculative_options,
        runtime_config=args.runtime_config, search=args.search)
    builder.create_model(args.model_name, args.input, args.output, args.precision, args.execution_provider,
                         args.cache_dir, **extra)


if __name__ == "__main__":
    main()
