"""`edgewise run --config`: workflow validation, exhaustive/random/TPE search with goals that prune, the report, the
cache (rerun, corruption, ls/prune), --save_config round trips, evaluators on ONNX and PyTorch, and plugins."""
import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import assert_user_error, edgewise


def write_flow(tmp_path, flow: dict, name="flow.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(flow) if name.endswith(".yaml") else json.dumps(flow))
    return path


def base_flow(tiny_llama, tiny_data, tmp_path, **extra):
    flow = {
        "input_model": {"model_name_or_path": str(tiny_llama)},
        "data": {"held": {"data_files": str(tiny_data), "data_split": "50%:"}},
        "passes": [{"type": "quantize", "algorithm": ["rtn", "gptq"], "group_size": [16, 32], "num_samples": 4,
                    "seq_len": 64}],
        "evaluators": [{"type": "size"}, {"type": "perplexity", "data": "held", "max_samples": 6}],
        "goals": [{"metric": "perplexity", "max_degradation": 0.5}],
        "objectives": ["size_mb", "perplexity"],
        "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
    }
    flow.update(extra)
    return flow


def run_flow(path, *overrides):
    return edgewise("run", "--config", str(path), *overrides, "--json")


def test_exhaustive_search_report_and_cached_rerun(tiny_llama, tiny_data, tmp_path):
    path = write_flow(tmp_path, base_flow(tiny_llama, tiny_data, tmp_path))
    done = run_flow(path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    params = [(c["params"]["quantize.algorithm"], c["params"]["quantize.group_size"]) for c in report["candidates"]]
    assert sorted(params) == [("gptq", 16), ("gptq", 32), ("rtn", 16), ("rtn", 32)]
    assert all(c["status"] == "ok" and c["lineage"][0]["pass"] == "quantize" for c in report["candidates"])
    assert report["reference"]["perplexity"] > 0 and any(c["pareto"] for c in report["candidates"])
    sizes = {p: c["metrics"]["size_mb"] for p, c in zip(params, report["candidates"])}
    assert sizes[("rtn", 32)] < sizes[("rtn", 16)]  # fewer scales
    out = tmp_path / "out"
    best = report["candidates"][report["best"]]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["group_size"] == \
        best["params"]["quantize.group_size"]
    page = (out / "report.html").read_text()
    assert "<svg" in page and page.count("<circle") == 4 and "Pareto" in page
    again = run_flow(path)  # the same run again: every pass and evaluation from the cache
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("quantize: cached") == 4 and "running" not in again.stderr
    assert [c["metrics"] for c in json.loads(again.stdout)["candidates"]] == [c["metrics"] for c in report["candidates"]]


def test_goal_prunes_before_later_evaluators_and_no_winner_fails(tiny_llama, tiny_data, tmp_path):
    flow = base_flow(tiny_llama, tiny_data, tmp_path, goals=[{"metric": "size_mb", "max": 0.001}])
    done = run_flow(write_flow(tmp_path, flow), "passes.0.algorithm=rtn")
    assert done.returncode == 2 and "no candidate met the goals" in done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["status"] for c in report["candidates"]] == ["pruned", "pruned"]
    assert all("perplexity" not in c["metrics"] and "size_mb" in c["reason"] for c in report["candidates"])
    assert not (tmp_path / "out" / "config.json").exists()  # the report alone: no model to take


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_random_and_tpe_are_seeded(tiny_llama, tiny_data, tmp_path, strategy):
    flow = base_flow(tiny_llama, tiny_data, tmp_path, search={"strategy": strategy, "max_trials": 3, "seed": 7})
    flow["passes"][0].update(algorithm="rtn", group_size={"low": 16, "high": 64, "step": 16}, zero_point=[True, False])
    path = write_flow(tmp_path, flow)
    runs = [run_flow(path, f"output_dir={tmp_path / f'out{i}'}") for i in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    trials = [[c["params"] for c in json.loads(r.stdout)["candidates"]] for r in runs]
    assert len(trials[0]) == 3 and trials[0] == trials[1]
    assert all(p["quantize.group_size"] in (16, 32, 48, 64) for p in trials[0])


def test_pass_by_pass_fixes_each_stage_best(tiny_llama, tiny_data, tmp_path):
    flow = base_flow(tiny_llama, tiny_data, tmp_path, search={"mode": "pass_by_pass"}, objectives=["perplexity"])
    flow["passes"] = [{"type": "quantize", "algorithm": ["rtn", "gptq"], "num_samples": 4, "seq_len": 64},
                      {"type": "finetune", "data_files": str(tiny_data), "lora_r": [2, 4], "max_steps": 2}]
    done = run_flow(write_flow(tmp_path, flow))
    assert done.returncode == 0, done.stderr
    cands = json.loads(done.stdout)["candidates"]
    assert len(cands) == 3  # stage 2 draws stage 1's winner again (lora_r 2): it is not built or measured twice
    first = min(cands[:2], key=lambda c: c["metrics"]["perplexity"])
    assert cands[2]["params"] == {**first["params"], "finetune.lora_r": 4}
    assert [s["pass"] for s in cands[2]["lineage"]] == ["quantize", "finetune"]
    assert done.stderr.count("finetune: running") == 3


BAD = [
    ({"pases": []}, "unknown key 'pases'; allowed: "),
    ({"passes": [{"type": "quantise"}]}, "passes[0].type: unknown pass 'quantise'; available: export, finetune, quantize"),
    ({"passes": [{"type": "quantize", "algoritm": "rtn"}]}, "passes[0]: unknown key 'algoritm'; allowed: algorithm"),
    ({"passes": [{"type": "quantize", "group_size": "big"}]}, "passes[0].group_size: expected int, got str 'big'"),
    ({"passes": [{"type": "quantize", "algorithm": ["rtn", "fast"]}]}, "'fast' is not one of awq, gptq, rtn"),
    ({"passes": [{"type": "quantize", "bits": {"low": 2}}]}, "a range needs a numeric parameter and both low and high"),
    ({"passes": []}, "'passes' must be a non-empty list"),
    ({"passes": [{"type": "quantize", "data": "nope"}]}, "no dataset 'nope'"),
    ({"passes": [{"type": "quantize"}], "search": {"strategy": "grid"}}, "search.strategy: 'grid' is not one of"),
    ({"passes": [{"type": "quantize"}], "search": {"max_trials": 2.5}}, "search.max_trials: expected int"),
    ({"passes": [{"type": "quantize"}], "goals": [{"max": 3}]}, "goals[0]: 'metric' is required"),
    ({"passes": [{"type": "quantize"}], "evaluators": [{"type": "size"}], "goals": [{"metric": "speed", "max": 1}]},
     "unknown metric 'speed'"),
    ({"passes": [{"type": "quantize", "algorithm": ["rtn", "gptq"]}]}, "a search needs evaluators"),
]


@pytest.mark.parametrize("flow,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_workflows_name_the_key(tmp_path, flow, message):
    flow = {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), **flow}
    assert_user_error(run_flow(write_flow(tmp_path, flow, "flow.json")), message, tmp_path / "out")


def test_override_beats_the_file_and_bad_files(tiny_llama, tmp_path):
    flow = {"input_model": {"model_name_or_path": str(tiny_llama)}, "passes": [{"type": "quantize"}],
            "output_dir": str(tmp_path / "out")}
    path = write_flow(tmp_path, flow)
    assert_user_error(run_flow(path, "passes.0.algorithm=fast"), "'fast' is not one of", tmp_path / "out")
    assert_user_error(run_flow(path, "search.strategy"), "use KEY=VALUE", tmp_path / "out")
    (tmp_path / "broken.yaml").write_text("passes: [type: quantize\n")
    assert_user_error(run_flow(tmp_path / "broken.yaml"), "not valid YAML", tmp_path / "out")
    assert_user_error(run_flow(tmp_path / "missing.yaml"), "workflow file not found", tmp_path / "out")


def test_save_config_round_trips_to_the_same_model(tiny_llama, tmp_path):
    cache = ["--cache_dir", str(tmp_path / "cache")]
    done = edgewise("quantize", "-m", str(tiny_llama), "--algorithm", "rtn", "--group_size", "16",
                    "--output_path", str(tmp_path / "q"), "--save_config", str(tmp_path / "flow.yaml"), *cache)
    assert done.returncode == 0, done.stderr
    flow = yaml.safe_load((tmp_path / "flow.yaml").read_text())
    assert flow["passes"] == [{"type": "quantize", "algorithm": "rtn", "group_size": 16}]
    dry = edgewise("quantize", "-m", str(tiny_llama), "--output_path", str(tmp_path / "never"), "--dry_run")
    assert dry.returncode == 0 and yaml.safe_load(dry.stdout)["passes"] == [{"type": "quantize"}]
    assert not (tmp_path / "never").exists()
    ran = run_flow(tmp_path / "flow.yaml", f"output_dir={tmp_path / 'again'}")
    assert ran.returncode == 0, ran.stderr and "quantize: cached" in ran.stderr
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == \
        (tmp_path / "q" / "model.safetensors").read_bytes()


def test_evaluators_on_onnx_match_pytorch(tiny_llama, tiny_data, tmp_path):
    """A finetuned model exported in fp32: perplexity through onnxruntime-genai (adapter active) equals PyTorch's
    (PEFT adapter applied); latency and quality run on the export."""
    from edgewise import engine
    from edgewise.engine.evaluate import evaluate
    from edgewise.evaluators.latency import LatencyConfig
    from edgewise.evaluators.perplexity import PerplexityConfig
    from edgewise.evaluators.quality import QualityConfig
    from edgewise.passes.export import ExportConfig
    from edgewise.passes.finetune import FinetuneConfig

    cache = tmp_path / "cache"
    ft = engine.run_pass("finetune", engine.folder_artifact(tiny_llama),
                         FinetuneConfig(data_files=str(tiny_data), max_steps=6, lora_r=4, learning_rate=0.02), cache)
    onnx = engine.run_pass("export", engine.folder_artifact(ft.path / "model"),
                           ExportConfig(adapter_path=str(ft.path / "adapter"), precision="fp32"), cache)
    ppl = PerplexityConfig(data_files=str(tiny_data), max_samples=6)
    torch_ppl = evaluate(ft, "perplexity", ppl, cache)["perplexity"]
    onnx_ppl = evaluate(onnx, "perplexity", ppl, cache)["perplexity"]
    base_ppl = evaluate(onnx, "perplexity", PerplexityConfig(data_files=str(tiny_data), max_samples=6, adapter=False),
                        cache)["perplexity"]
    assert abs(onnx_ppl - torch_ppl) / torch_ppl < 1e-3 and abs(base_ppl - onnx_ppl) > 1e-2
    speed = evaluate(onnx, "latency", LatencyConfig(prompt_tokens=16, gen_tokens=8, runs=1), cache)
    assert speed["decode_tok_s"] > 0 and speed["ttft_ms"] > 0
    quality = evaluate(onnx, "quality", QualityConfig(data_files=str(tiny_data), max_samples=3, max_new_tokens=8),
                       cache)
    assert quality["answers"] == 3 and 0 <= quality["rouge_l"] <= 1


def test_rouge_l():
    from edgewise.evaluators.quality import rouge_l

    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("the cat sat on the mat", "the dog sat on a mat") == pytest.approx(2 * 4 / 12)
    assert rouge_l("", "x") == 0.0


def test_cache_corruption_is_rebuilt_then_ls_and_prune(tiny_llama, tmp_path):
    cache = ["--cache_dir", str(tmp_path / "cache")]
    args = ["quantize", "-m", str(tiny_llama), "--algorithm", "rtn", *cache]
    assert edgewise(*args, "--output_path", str(tmp_path / "a")).returncode == 0
    listed = json.loads(edgewise("cache", "ls", "--json", *cache).stdout)
    entry = next(e for e in listed if e["pass"] == "quantize")
    weights = os.path.join(entry["path"], "model.safetensors")
    good = open(weights, "rb").read()
    os.chmod(weights, 0o644)
    with open(weights, "r+b") as handle:  # flip bytes in place: the published copy is the same file
        handle.seek(len(good) // 2)
        handle.write(b"\xff" * 64)
    done = edgewise(*args, "--output_path", str(tmp_path / "b"))
    assert done.returncode == 0 and "corrupted" in done.stderr
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == good
    pruned = edgewise("cache", "prune", "--max_size", "0", "--json", *cache)
    assert pruned.returncode == 0 and len(json.loads(pruned.stdout)) >= 1
    assert json.loads(edgewise("cache", "ls", "--json", *cache).stdout) == []
    assert_user_error(edgewise("cache", "prune", "--max_size", "lots", *cache), "size 'lots'", tmp_path / "none")


PLUGIN = '''
from dataclasses import dataclass, field
from edgewise.passes import register
from edgewise.evaluators import evaluator
from edgewise.core.fsutil import link_tree


@dataclass(frozen=True)
class StampConfig:
    stamp: str = field(default="x", metadata={"help": "text written to STAMP"})


@register("stamp", StampConfig)
def run(artifact, config, out, work):
    link_tree(artifact.path, out)
    (out / "STAMP").write_text(config.stamp)
    return {"stamped": config.stamp}


@dataclass(frozen=True)
class StampLengthConfig:
    pass


@evaluator("stamp_length", StampLengthConfig, better={"stamp_length": "higher"})
def measure(model, config):
    return {"stamp_length": len((model.folder / "STAMP").read_text())}
'''


def test_third_party_pass_and_evaluator_through_entry_points(tiny_llama, tmp_path):
    site = tmp_path / "site"
    (site / "edgewise_stamp-0.1.dist-info").mkdir(parents=True)
    (site / "edgewise_stamp.py").write_text(PLUGIN)
    (site / "edgewise_stamp-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: edgewise-stamp\n"
                                                                     "Version: 0.1\n")
    (site / "edgewise_stamp-0.1.dist-info" / "entry_points.txt").write_text(
        "[edgewise.passes]\nstamp = edgewise_stamp:run\n\n[edgewise.evaluators]\nstamp_length = edgewise_stamp:measure\n")
    flow = {"input_model": {"model_name_or_path": str(tiny_llama)},
            "passes": [{"type": "stamp", "stamp": ["ab", "abcd"]}], "evaluators": [{"type": "stamp_length"}],
            "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "edgewise", "run", "--config", str(write_flow(tmp_path, flow)),
                           "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "STAMP").read_text() == "abcd"
    assert json.loads(done.stdout)["candidates"][0]["lineage"][0]["metrics"] in ({"stamped": "ab"}, {"stamped": "abcd"})


def test_two_runs_sharing_one_cache(tiny_llama, tiny_data, tmp_path):
    flow = base_flow(tiny_llama, tiny_data, tmp_path)
    path = write_flow(tmp_path, flow)
    procs = [subprocess.Popen([sys.executable, "-m", "edgewise", "run", "--config", str(path),
                               f"output_dir={tmp_path / f'out{i}'}", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), results[0][1][-2000:]
    reports = [json.loads(out) for out, _ in results]
    assert [c["metrics"] for c in reports[0]["candidates"]] == [c["metrics"] for c in reports[1]["candidates"]]
    ran = sum(err.count("quantize: running") for _, err in results)
    assert ran == 4  # each candidate built once, by whichever run took its lock first


def test_finetune_then_export_ships_the_adapter(tiny_llama, tiny_data, tmp_path):
    """The lab chain as a workflow: export takes the finetune output's base and adapter, and quality is measured
    through the adapter on the exported model."""
    flow = base_flow(tiny_llama, tiny_data, tmp_path, passes=[
        {"type": "finetune", "data": "train", "max_steps": 4, "lora_r": 4, "learning_rate": 0.02},
        {"type": "export", "precision": "fp32"}], goals=[], objectives=["size_mb"])
    flow["data"]["train"] = {"data_files": str(tiny_data), "data_split": ":50%"}
    flow["evaluators"] = [{"type": "size"}, {"type": "quality", "data": "held", "max_samples": 2}]
    done = run_flow(write_flow(tmp_path, flow))
    assert done.returncode == 0, done.stderr[-3000:]
    best = tmp_path / "out" / "model"
    assert (best / "adapter_weights.onnx_adapter").is_file() and (best / "lora_layout.json").is_file()
    report = json.loads(done.stdout)
    assert [step["pass"] for step in report["candidates"][0]["lineage"]] == ["finetune", "export"]
    assert "rouge_l" in report["candidates"][0]["metrics"]
