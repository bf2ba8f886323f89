"""One pipeline under every command: a command and its saved workflow give the same folder and cache entries; every
check runs before any work; presets (qlora) apply in workflows too; the search never runs a configuration twice and
picks the best by the rule it states; tables refuse duplicate names."""
import json

import pytest
import yaml
from helpers import assert_user_error, edgewise

UNREACHABLE = {"model_name_or_path": "nobody/no-such-model"}  # reaching for it fails: checks must come first


def write(tmp_path, flow: dict):
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
                                    **flow}))
    return path


def cache_entries(cache) -> list[str]:
    done = edgewise("cache", "ls", "--json", "--cache_dir", str(cache))
    return sorted(e["path"] for e in json.loads(done.stdout))


def test_a_command_and_its_saved_workflow_give_the_same_folder_and_cache(tiny_llama, tiny_data, tmp_path):
    cache = tmp_path / "cache"
    done = edgewise("finetune", "-m", str(tiny_llama), "--data_files", str(tiny_data), "--max_steps", "2",
                    "--lora_r", "2", "--output_path", str(tmp_path / "cmd"), "--cache_dir", str(cache),
                    "--save_config", str(tmp_path / "flow.yaml"), "--json")
    assert done.returncode == 0, done.stderr
    entries = cache_entries(cache)
    ran = edgewise("run", "--config", str(tmp_path / "flow.yaml"), f"output_dir={tmp_path / 'wf'}", "--json")
    assert ran.returncode == 0, ran.stderr
    assert "finetune: cached" in ran.stderr and cache_entries(cache) == entries

    def files(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert files(tmp_path / "cmd") == files(tmp_path / "wf")
    assert (tmp_path / "cmd" / "adapter" / "adapter_model.safetensors").is_file()
    as_command, as_workflow = json.loads(done.stdout), json.loads(ran.stdout)
    assert {k: v for k, v in as_command.items() if k != "output_path"} == \
        {k: v for k, v in as_workflow.items() if k != "output_path"}


def test_qlora_in_a_workflow_quantizes_first(tiny_llama, tiny_data, tmp_path):
    """`method: qlora` used to train plain LoRA in a workflow: only the command's preset read it."""
    flow = {"input_model": {"model_name_or_path": str(tiny_llama)},
            "passes": [{"type": "finetune", "method": "qlora", "data_files": str(tiny_data), "max_steps": 2,
                        "lora_r": 2}]}
    done = edgewise("run", "--config", str(write(tmp_path, flow)), "--json")
    assert done.returncode == 0, done.stderr
    lineage = json.loads((tmp_path / "out" / "edgewise.json").read_text())["lineage"]
    assert [s["pass"] for s in lineage] == ["quantize", "finetune"]
    assert lineage[0]["config"]["data_files"] == str(tiny_data) and lineage[0]["config"]["algorithm"] == "awq"
    assert "quantization_config" in json.loads((tmp_path / "out" / "model" / "config.json").read_text())


def test_a_bad_data_file_stops_the_run_before_any_work(tiny_data, tmp_path):
    """It used to become a 'failed candidate', after the source was fetched and the reference measured."""
    flow = {"input_model": UNREACHABLE,
            "passes": [{"type": "quantize", "algorithm": ["rtn", "gptq"]},
                       {"type": "finetune", "data_files": str(tmp_path / "missing.jsonl")}],
            "evaluators": [{"type": "size"}]}
    assert_user_error(edgewise("run", "--config", str(write(tmp_path, flow))), "data file not found",
                      tmp_path / "out")
    flow["passes"] = [{"type": "quantize", "group_size": [32, 0]}]  # a bad searched value, not only the first
    assert_user_error(edgewise("run", "--config", str(write(tmp_path, flow))), "--group_size must be at least 1",
                      tmp_path / "out")
    flow["passes"], flow["evaluators"] = [{"type": "quantize"}], [{"type": "quality", "data_files": str(tiny_data),
                                                                   "prompt_column": "question"}]
    assert_user_error(edgewise("run", "--config", str(write(tmp_path, flow))), "has no column 'question'",
                      tmp_path / "out")


def test_the_register_name_is_checked_before_the_search(tmp_path):
    flow = {"input_model": UNREACHABLE, "passes": [{"type": "quantize", "algorithm": ["rtn", "gptq"]}],
            "evaluators": [{"type": "size"}], "register": "no spaces allowed"}
    assert_user_error(edgewise("run", "--config", str(write(tmp_path, flow))), "invalid model name", tmp_path / "out")


def test_evaluator_parameters_are_not_searched(tmp_path):
    flow = {"passes": [{"type": "quantize"}], "evaluators": [{"type": "perplexity", "max_samples": [4, 8]}]}
    assert_user_error(edgewise("run", "--config", str(write(tmp_path, flow))),
                      "evaluators[0].max_samples: evaluator parameters take one value", tmp_path / "out")


def test_random_search_never_spends_a_trial_on_a_configuration_it_has(tiny_llama, tiny_data, tmp_path):
    flow = {"input_model": {"model_name_or_path": str(tiny_llama)},
            "passes": [{"type": "quantize", "algorithm": ["rtn", "gptq"], "num_samples": 2, "seq_len": 32}],
            "evaluators": [{"type": "size"}], "objectives": ["size_mb"],
            "search": {"strategy": "random", "max_trials": 5, "seed": 0}}
    done = edgewise("run", "--config", str(write(tmp_path, flow)), "--json")
    assert done.returncode == 0, done.stderr
    params = [c["params"]["quantize.algorithm"] for c in json.loads(done.stdout)["candidates"]]
    assert sorted(params) == ["gptq", "rtn"]  # the space holds two: five trials were asked for
    assert done.stderr.count("quantize: running") == 2


def candidates(*rows):
    from edgewise.engine.search import Candidate

    return [Candidate(i, params, metrics=metrics) for i, (params, metrics) in enumerate(rows)]


def test_sizes_within_the_tolerance_count_equal_and_the_next_objective_decides():
    """The search report of issue 16: gptq/128 (14.13, 170.8 MB) had won over awq/64 (13.05, 171.3 MB) for 0.5 MB."""
    from edgewise.engine.plugins import load_all
    from edgewise.engine.selection import objectives_of, rule, select
    from edgewise.engine.workflow import Objective, Settings, Workflow

    load_all()  # the evaluators say which way each metric improves, and their tolerances

    found = candidates(({"q": "gptq/128"}, {"size_mb": 170.8, "perplexity": 14.13}),
                       ({"q": "awq/64"}, {"size_mb": 171.3, "perplexity": 13.05}),
                       ({"q": "rtn/32"}, {"size_mb": 190.0, "perplexity": 12.0}))
    objectives = objectives_of(Workflow([], [], Settings(objectives=[Objective("size_mb"), Objective("perplexity")])))
    assert [o.tolerance for o in objectives] == [0.01, 0.0]
    winner, why = select(found, objectives)
    assert winner.params == {"q": "awq/64"}
    assert why[1].startswith("size_mb: best 170.8; trials 0, 1 at it and within 1% of it")
    assert rule(objectives) == ("goals first, then lowest size_mb (within 1% counted equal), then lowest perplexity, "
                                "then the earliest trial")
    strict = objectives_of(Workflow([], [], Settings(objectives=[Objective("size_mb", 0.0), Objective("perplexity")])))
    assert select(found, strict)[0].params == {"q": "gptq/128"}  # a stated tolerance of 0: size alone decides


def test_the_report_states_the_rule_and_plots_speed_when_latency_ran():
    from edgewise.engine.report import charts, page

    report = {"workflow": "w.yaml", "created": "now", "objectives": ["size_mb", "perplexity"], "goals": [],
              "rule": "goals first, then lowest size_mb", "selection": ["2 of 2 candidates met every goal"],
              "reference": {}, "best": 1, "candidates": [
                  {"trial": i, "params": {"q": i}, "status": "ok", "reason": "", "pareto": True, "lineage": [],
                   "metrics": {"size_mb": 100.0 + i, "perplexity": 14.0 - i, "decode_tok_s": 120.0 + 10 * i}}
                  for i in range(2)]}
    assert charts(report) == [("size_mb", "perplexity", "decode_tok_s"), ("size_mb", "decode_tok_s", None)]
    html = page(report)
    assert html.count("<svg") == 2 and ">decode_tok_s</text>" in html and "Rule: goals first" in html
    del report["candidates"][0]["metrics"]["decode_tok_s"], report["candidates"][1]["metrics"]["decode_tok_s"]
    assert charts(report) == [("size_mb", "perplexity", None)]


def test_tables_refuse_a_second_entry_of_the_same_name():
    from edgewise.core.errors import EdgewiseError
    from edgewise.passes import PASSES, register

    @register("dup-test", dict)
    def first(artifact, config, out, work):
        return {}

    with pytest.raises(EdgewiseError, match="pass 'dup-test' is registered twice"):
        @register("dup-test", dict)
        def second(artifact, config, out, work):
            return {}

    assert PASSES["dup-test"].fn is first
    del PASSES["dup-test"]
