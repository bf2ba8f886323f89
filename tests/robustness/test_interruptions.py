"""SIGINT and SIGKILL at a random point of each pass: the interrupted command leaves no partial output, SIGINT exits
130 with one line, and the rerun (same cache) resumes and ends with exactly the files of an uninterrupted run."""
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ledger import record

from edgewise.core.fsutil import MANIFEST

PASSES = {
    "quantize": ["quantize", "--algorithm", "awq", "--num_samples", "4", "--seq_len", "64"],
    "finetune": ["finetune", "--max_steps", "1000", "--save_steps", "50", "--lora_r", "4", "--lora_dropout", "0.1"],
    "auto-opt": ["auto-opt", "--precision", "int4"],
}
# Where each pass's work begins on stderr. Finetune's is its progress bar past step 0: the random point then falls
# within the training, where checkpoints are, not within the start-up that holds most of a tiny model's pass.
WORK_BEGINS = {"quantize": re.compile(r": running$"), "finetune": re.compile(r"^finetune: .*\b[1-9]\d*/\d+ \["),
               "auto-opt": re.compile(r": running$")}


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file but the manifests (they hold timestamps and durations)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _as_in_a_terminal() -> None:
    """Ctrl-C reaches a command run in a terminal; a job started in the background of a script (as CI may run the
    tests) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], cache: Path, out: Path) -> tuple[subprocess.Popen, dict]:
    """The command in its own process group; `seen['running']` is set when the pass starts its real work (stderr is
    read in universal-newline mode, so each redraw of a progress bar is a line)."""
    proc = subprocess.Popen([sys.executable, "-m", "edgewise", *args, "-o", str(out), "--cache_dir", str(cache)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_as_in_a_terminal)
    seen = {"lines": [], "running": threading.Event(), "done": threading.Event()}

    def read():
        for line in proc.stderr:
            seen["lines"].append(line)
            if WORK_BEGINS[args[0]].search(line.strip()):
                seen["running"].set()
            if ": done in" in line:
                seen["done"].set()

    seen["thread"] = threading.Thread(target=read, daemon=True)
    seen["thread"].start()
    return proc, seen


def run_whole(args, cache, out) -> float:
    """An uninterrupted run; returns the seconds the pass itself took (from 'running' to 'done')."""
    proc, seen = start(args, cache, out)
    seen["running"].wait(300)
    begun = time.time()
    seen["done"].wait(600)
    seconds = time.time() - begun
    assert proc.wait(600) == 0, "".join(seen["lines"])[-3000:]
    return seconds


@pytest.fixture(scope="module")
def inputs(tiny_llama, tiny_data, tmp_path_factory):
    """Each pass's input and its uninterrupted output and duration."""
    root = tmp_path_factory.mktemp("interrupt")
    ref = {}
    src = {"quantize": tiny_llama, "finetune": tiny_llama, "auto-opt": root / "finetune-ref"}
    for name, args in PASSES.items():
        full = args + ["--model_name_or_path", str(src[name])] + (["--data_files", str(tiny_data)]
                                                                  if name != "auto-opt" else [])
        seconds = run_whole(full, root / f"cache-{name}", root / f"{name}-ref")
        ref[name] = (full, digests(root / f"{name}-ref"), seconds)
    return root, ref


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("name", list(PASSES))
def test_interrupted_pass_resumes_to_the_same_output(inputs, name, sig, tmp_path):
    root, ref = inputs
    args, expected, seconds = ref[name]
    fraction = random.Random(f"{name}-{sig.name}").uniform(0.1, 0.7)  # a random point, the same on every run
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc, seen = start(args, cache, out)
    assert seen["running"].wait(300), "".join(seen["lines"])
    time.sleep(seconds * fraction)
    assert proc.poll() is None, "the signal must land inside the pass"
    os.killpg(proc.pid, sig)  # the command and any workers it started
    code = proc.wait(120)
    seen["thread"].join(10)
    stderr = "".join(seen["lines"])
    # Output is published atomically: an interrupted command leaves none, or (signal after the publish) a whole one.
    assert not out.exists() or digests(out) == expected, "an interrupted command left a partial output"
    if sig == signal.SIGINT:
        # 130, or death by SIGINT when the interrupt landed inside an exec() (CPython then re-raises the signal at
        # exit, having printed our line): a shell shows 130 for both. 0 if it came after the work was done.
        # After the publish ("wrote ...") it may land in the interpreter's shutdown, past our handler: then CPython
        # dies by SIGINT with no line of ours, the whole output in place.
        assert code in (0, 130, -signal.SIGINT), stderr[-2000:]
        published = "[edgewise] wrote " in stderr
        assert stderr.count("edgewise: interrupted") == (code != 0) or published and code == -signal.SIGINT, \
            stderr[-2000:]
    else:
        assert code == -signal.SIGKILL
    checkpoints = len(list(cache.glob("work/*/checkpoint.pt")))
    again, again_seen = start(args, cache, out)
    assert again.wait(600) == 0, "".join(again_seen["lines"])[-3000:]
    again_seen["thread"].join(10)
    resumed = any("resuming" in line for line in again_seen["lines"])
    same = digests(out) == expected
    record("interruption", f"{name} {sig.name} at {fraction:.0%} of the pass", "pass" if same else "FAIL",
           exit=code, resumed_from_checkpoint=resumed, checkpoints=checkpoints, files=len(expected))
    assert same, {k: (expected.get(k), v) for k, v in digests(out).items() if expected.get(k) != v}
    assert resumed == (checkpoints > 0), "a checkpoint left by the interrupted run must be resumed from"
    assert not list(cache.glob("runs/.*tmp-*")) or sig == signal.SIGKILL  # SIGINT cleans its temporary folder
    pruned = subprocess.run([sys.executable, "-m", "edgewise", "cache", "prune", "--max_size", "1T", "--cache_dir",
                             str(cache)], capture_output=True, text=True)
    assert pruned.returncode == 0 and not list(cache.glob("runs/.*")), "prune sweeps what a killed run left"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["pass"] == ("export" if name == "auto-opt" else name)
