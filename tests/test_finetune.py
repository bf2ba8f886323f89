"""Held-out loss during finetuning: reported before and after training (before = the base model's own response loss,
since LoRA starts at zero), every --eval_steps, from --eval_split or a file of its own (a workflow's `eval_data`);
--early_stopping stops on it and keeps the best adapter."""
import json
import math

import pytest

from edgewise import engine
from edgewise.core.errors import EdgewiseError
from edgewise.engine import workflow
from edgewise.evaluators import perplexity
from edgewise.evaluators.models import TorchModel
from edgewise.evaluators.perplexity import PerplexityConfig
from edgewise.passes.finetune import FinetuneConfig

UNRELATED = [{"prompt": f"Name a colour number {i}.", "response": f"Purple, green and orange, said robot {i}."}
             for i in range(6)]


def _response_loss(model: TorchModel, path) -> float:
    """The mean response-token loss, computed apart from training: the perplexity evaluator's, as its log."""
    return math.log(perplexity.run(model, PerplexityConfig(data_files=str(path)))["perplexity"])


@pytest.fixture
def unrelated(tmp_path):
    path = tmp_path / "held.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in UNRELATED))
    return path


def test_held_out_loss_before_is_the_base_models_and_training_lowers_it(tiny_llama, tiny_data, cache):
    config = FinetuneConfig(data_files=str(tiny_data), max_steps=8, lora_r=4, learning_rate=1e-2, eval_split=0.25,
                            eval_steps=4)
    metrics = engine.run_pass("finetune", engine.folder_artifact(tiny_llama), config, cache).manifest["metrics"]
    assert [step for step, _ in metrics["eval_history"]] == [0, 4, 8]
    assert metrics["eval_loss"] == metrics["eval_history"][-1][1] < metrics["eval_loss_before"]
    assert metrics["examples"] == 9  # 12 records, 3 held out


def test_early_stopping_keeps_the_best_adapter(tiny_llama, tiny_data, unrelated, cache):
    """Trained on travel answers at a high rate, the loss on unrelated answers soon rises: training stops and the
    saved adapter is the best one, whose loss (recomputed from the files) is the one reported."""
    config = FinetuneConfig(data_files=str(tiny_data), eval_data_files=str(unrelated), max_steps=40, lora_r=4,
                            learning_rate=5e-2, eval_steps=2, early_stopping=2)
    out = engine.run_pass("finetune", engine.folder_artifact(tiny_llama), config, cache)
    metrics = out.manifest["metrics"]
    history = metrics["eval_history"]
    best_step, best = min(history, key=lambda h: h[1])
    assert metrics["steps"] < 40 and history[-1][0] == metrics["steps"]
    assert metrics["eval_step"] == best_step and metrics["eval_loss"] == pytest.approx(best, abs=1e-5)
    assert sum(1 for step, _ in history if step > best_step) == 2
    base = _response_loss(TorchModel(tiny_llama, None), unrelated)
    assert metrics["eval_loss_before"] == pytest.approx(base, abs=1e-4)
    kept = _response_loss(TorchModel(out.path / "model", out.path / "adapter"), unrelated)
    assert kept == pytest.approx(best, abs=1e-4)


def test_early_stopping_needs_held_out_records(tiny_data):
    with pytest.raises(EdgewiseError, match="needs held-out records"):
        FinetuneConfig(data_files=str(tiny_data), early_stopping=2).check()


def test_a_workflows_eval_data_becomes_the_finetunes_held_out_file(tiny_data, unrelated):
    flow = workflow.from_dict({
        "data": {"train": {"data_files": str(tiny_data)}, "held": {"data_files": str(unrelated), "data_split": ":4"}},
        "passes": [{"type": "finetune", "data": "train", "eval_data": "held", "early_stopping": 1}]}, "test")
    fixed = flow.passes[0].fixed
    assert fixed["eval_data_files"] == str(unrelated) and fixed["eval_data_split"] == ":4"
    with pytest.raises(EdgewiseError, match="quantize takes no held-out data"):
        workflow.from_dict({"data": {"held": {"data_files": str(unrelated)}},
                            "passes": [{"type": "quantize", "eval_data": "held"}]}, "test")


def test_the_command_line_reports_the_held_out_loss(tiny_llama, tiny_data, tmp_path):
    from helpers import edgewise

    done = edgewise("finetune", "-m", str(tiny_llama), "--data_files", str(tiny_data), "--eval_split", "0.25",
                    "--max_steps", "4", "--lora_r", "4", "--output_path", str(tmp_path / "ft"), "--cache_dir",
                    str(tmp_path / "cache"), "--json")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)["metrics"]
    before, after = metrics["eval_loss_before"], metrics["eval_loss"]
    assert f"held-out response loss {before:.3f} -> {after:.3f} ({after / before:.3f}x)" in done.stderr
    assert "eval=" in done.stderr  # on the progress bar
