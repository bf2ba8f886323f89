"""Config repairs for the model builder (per-architecture, in models/archs.py): a Phi-3 without rope scaling keeps
transformers' default original_max_position_embeddings (4096), which the builder takes for LongRoPE and crashes on
(KeyError 'multi_cache'). The repair makes it plain RoPE; a real LongRoPE config is left alone, but for the `type`
that the builder reads and transformers 5 no longer writes (KeyError 'type'). The tiny Phi-3 of conftest.py has
exactly the first config, so every Phi-3 export test goes through the repair; the norm epsilon of Phi and Nemotron
goes under the builder's name."""
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
    hub_v5 = {"model_type": "phi3", "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
              "rope_parameters": {"rope_type": "longrope", "type": "longrope", "long_factor": [1.0],
                                  "short_factor": [1.0]}}
    plain = {"model_type": "phi3", "max_position_embeddings": 4096, "original_max_position_embeddings": 4096}
    llama = {"model_type": "llama", "max_position_embeddings": 2048, "original_max_position_embeddings": 4096}
    for config in (longrope, hub_v5, plain, llama):
        before = dict(config)
        assert repair_config(config) == [] and config == before


def test_a_longrope_written_by_transformers_5_gets_the_type_the_builder_reads():
    config = {"model_type": "phi3", "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
              "rope_parameters": {"rope_type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}}
    assert repair_config(config) == ["rope_parameters.type = 'longrope' (the builder reads `type`)"]
    assert config["rope_parameters"]["type"] == "longrope" and config["original_max_position_embeddings"] == 4096


def test_the_norm_epsilon_goes_under_the_builders_name():
    for key, model_type in (("layer_norm_eps", "phi"), ("norm_eps", "nemotron")):
        config = {"model_type": model_type, key: 1e-5}
        assert repair_config(config) == ["rms_norm_eps = 1e-05 (the builder's name for the norms' epsilon)"]
        assert config["rms_norm_eps"] == 1e-5 and repair_config(config) == []
