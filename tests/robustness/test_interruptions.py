"""SIGINT and SIGKILL at a random point of each pass: the interrupted command leaves no partial output, SIGINT exits
130 with one line, and the rerun (same cache) resumes and ends with exactly the files of an uninterrupted run.

The points are ones the pass announces on stderr (its steps, its progress bar), chosen at random up front (the same
on every run). The command is frozen (SIGSTOP) the moment its point appears and signalled while frozen, so the signal
lands inside the pass however fast or loaded the machine is."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import digests
from ledger import record

from edgewise.core.fsutil import MANIFEST

PASSES = {
    "quantize": ["quantize", "--algorithm", "awq", "--num_samples", "4", "--seq_len", "64"],
    "finetune": ["finetune", "--max_steps", "1000", "--save_steps", "50", "--lora_r", "4", "--lora_dropout", "0.1"],
    "auto-opt": ["auto-opt", "--precision", "int4"],
}
# What each pass announces before the end of its work, in order (the lines after these have seconds of work behind
# them: loading, the last layer and the save; the load-and-generate check and the publish).
ANNOUNCED = {"quantize": [r": running$", r"awq int4, group 32", r"^awq int4:\s+0%"],
             "auto-opt": [r": running$", r"building the ONNX model", r"check graph types", r"check LoRA inputs",
                          r"check adapters"]}
STEP = re.compile(r"^finetune: .*\b(\d+)/1000 \[")


def point(name: str, sig: signal.Signals):
    """A random announced point of the pass (seeded by the case): its description and a test on a stderr line.
    Finetune's is a step of its training, past its first checkpoint (step 50), so that the rerun resumes."""
    rng = random.Random(f"{name}-{sig.name}")
    if name == "finetune":
        step = rng.randrange(51, 600)
        return f"step {step} of 1000", lambda line: (m := STEP.search(line)) is not None and int(m[1]) >= step
    pattern = rng.choice(ANNOUNCED[name])
    return f"'{pattern}'", lambda line: re.search(pattern, line) is not None


def _as_in_a_terminal() -> None:
    """Ctrl-C reaches a command run in a terminal; a job started in the background of a script (as CI may run the
    tests) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], cache: Path, out: Path, stop_at=None) -> tuple[subprocess.Popen, dict]:
    """The command in its own process group, its stderr read line by line (universal newlines: each redraw of a
    progress bar is a line). With `stop_at` (a test on a line), the group is frozen by SIGSTOP at the first line it
    accepts and `seen['frozen']` is set; it is also set at the end of stderr, which the caller then finds unfrozen."""
    proc = subprocess.Popen([sys.executable, "-m", "edgewise", *args, "-o", str(out), "--cache_dir", str(cache)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_as_in_a_terminal)
    seen = {"lines": [], "frozen": threading.Event()}

    def read():
        for line in proc.stderr:
            seen["lines"].append(line)
            if stop_at and not seen["frozen"].is_set() and stop_at(line.strip()):
                os.killpg(proc.pid, signal.SIGSTOP)
                seen["frozen"].set()
        seen["frozen"].set()

    seen["thread"] = threading.Thread(target=read, daemon=True)
    seen["thread"].start()
    return proc, seen


def run_whole(args, cache, out) -> None:
    proc, seen = start(args, cache, out)
    assert proc.wait(600) == 0, "".join(seen["lines"])[-3000:]


@pytest.fixture(scope="module")
def inputs(tiny_llama, tiny_data, tmp_path_factory):
    """Each pass's input and its uninterrupted output."""
    root = tmp_path_factory.mktemp("interrupt")
    ref = {}
    src = {"quantize": tiny_llama, "finetune": tiny_llama, "auto-opt": root / "finetune-ref"}
    for name, args in PASSES.items():
        full = args + ["--model_name_or_path", str(src[name])] + (["--data_files", str(tiny_data)]
                                                                  if name != "auto-opt" else [])
        run_whole(full, root / f"cache-{name}", root / f"{name}-ref")
        ref[name] = (full, digests(root / f"{name}-ref"))
    return root, ref


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("name", list(PASSES))
def test_interrupted_pass_resumes_to_the_same_output(inputs, name, sig, tmp_path):
    root, ref = inputs
    args, expected = ref[name]
    where, stop_at = point(name, sig)
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc, seen = start(args, cache, out, stop_at)
    assert seen["frozen"].wait(600), "".join(seen["lines"])[-3000:]
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the command ended before {where}: " + "".join(seen["lines"])[-3000:]
    os.killpg(proc.pid, sig)  # the command and any workers it started, while frozen
    if sig != signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGCONT)  # the SIGINT is handled once the group runs again
    code = proc.wait(120)
    seen["thread"].join(10)
    stderr = "".join(seen["lines"])
    assert not out.exists(), "an interrupted command left an output"  # it is published only at the end
    if sig == signal.SIGINT:
        # 130, or death by SIGINT when the interrupt landed inside an exec() (CPython then re-raises the signal at
        # exit, having printed our line): a shell shows 130 for both.
        assert code in (130, -signal.SIGINT), stderr[-2000:]
        assert stderr.count("edgewise: interrupted") == 1, stderr[-2000:]
    else:
        assert code == -signal.SIGKILL
    checkpoints = len(list(cache.glob("work/*/checkpoint.pt")))
    again, again_seen = start(args, cache, out)
    assert again.wait(600) == 0, "".join(again_seen["lines"])[-3000:]
    again_seen["thread"].join(10)
    resumed = any("resuming" in line for line in again_seen["lines"])
    same = digests(out) == expected
    record("interruption", f"{name} {sig.name} at {where}", "pass" if same else "FAIL",
           exit=code, resumed_from_checkpoint=resumed, checkpoints=checkpoints, files=len(expected))
    assert same, {k: (expected.get(k), v) for k, v in digests(out).items() if expected.get(k) != v}
    assert resumed == (checkpoints > 0), "a checkpoint left by the interrupted run must be resumed from"
    assert not list(cache.glob("runs/.*tmp-*")) or sig == signal.SIGKILL  # SIGINT cleans its temporary folder
    pruned = subprocess.run([sys.executable, "-m", "edgewise", "cache", "prune", "--max_size", "1T", "--cache_dir",
                             str(cache)], capture_output=True, text=True)
    assert pruned.returncode == 0 and not list(cache.glob("runs/.*")), "prune sweeps what a killed run left"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["pass"] == ("export" if name == "auto-opt" else name)
