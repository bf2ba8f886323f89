"""Config repairs for the model builder (per-architecture, in models/archs.py): a Phi-3 without rope scaling keeps
transformers' default original_max_position_embeddings (4096), which the builder takes for LongRoPE and crashes on
(KeyError 'multi_cache'). The repair makes it plain RoPE; a real LongRoPE config is left alone. The tiny Phi-3 of
conftest.py has exactly that config, so every Phi-3 export test goes through the repair."""
from edgewise.models.archs import repair_config


def test_a_phi3_without_rope_scaling_gets_its_window_as_original():
    config = {"model_type": "phi3", "max_position_embeddings": 2048, "original_max_position_embeddings": 4096,
              "rope_scaling": None}
    assert repair_config(config) == [
        "original_max_position_embeddings 4096 -> 2048 (no rope scaling: a plain-RoPE model)"]
    assert config["original_max_position_embeddings"] == 2048


def test_longrope_and_consistent_configs_are_left_alone():
    longrope = {"model_type": "phi3", "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                "rope_scaling": {"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}}
    longrope_v5 = {"model_type": "phi3", "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                   "rope_parameters": {"rope_type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}}
    plain = {"model_type": "phi3", "max_position_embeddings": 4096, "original_max_position_embeddings": 4096}
    llama = {"model_type": "llama", "max_position_embeddings": 2048, "original_max_position_embeddings": 4096}
    for config in (longrope, longrope_v5, plain, llama):  # transformers 5 writes rope_parameters
        before = dict(config)
        assert repair_config(config) == [] and config == before
