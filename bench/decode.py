"""Decode speed of the default model's lab-chain export (AWQ int4, LoRA travel adapter), adapter off and on, against
the same checkpoint exported without LoRA inputs and against the plain onnxruntime-genai builder's own int4 model.
--model takes another source (a folder or .gguf); where the plain builder cannot export it (Gemma 3 as transformers 5
writes it), the baseline is the builder with edgewise's fixes and its own defaults, and the table says so.
Prints a Markdown table. Usage: python bench/decode.py [--model PATH] [--prompt_tokens 128] [--gen_tokens 128] [--runs 5]"""
import argparse
import gc
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgewise import engine
from edgewise.models.onnx_lora import ADAPTER_FILE
from edgewise.passes.export import ExportConfig, set_threads
from edgewise.passes.finetune import FinetuneConfig
from edgewise.passes.quantize import QuantizeConfig
from edgewise.runtime.benchmark import measure
from edgewise.runtime.genai import Runtime
from edgewise.sources import model as sources

ROOT = Path(__file__).resolve().parents[1]


def chain_models(cache: Path, model: str | None, template: str | None) -> dict[str, Path]:
    """The demo's chain (same configs, so a previous `make demo` is reused from the cache)."""
    base = engine.folder_artifact(sources.resolve(model, cache))
    awq = engine.run_pass("quantize", base, QuantizeConfig(), cache)
    ft = engine.run_pass("finetune", awq, FinetuneConfig(data_files=str(ROOT / "examples" / "travel.jsonl"),
                                                         text_template=template), cache)
    with_lora = engine.run_pass("export", engine.folder_artifact(ft.path / "model"), ExportConfig(adapter_path=str(ft.path / "adapter")), cache)
    without = engine.run_pass("export", awq, ExportConfig(), cache)
    return {"base": base.path, "lora": with_lora.path / "model", "plain_export": without.path / "model"}


def builder_default(hf_folder: Path, out: Path) -> tuple[Path, str]:
    """`python -m onnxruntime_genai.models.builder -p int4 -e cpu` with its defaults, as a user would run it (or, where
    it fails, the same through edgewise's builder fixes); the folder and how it was built."""
    for module, label in (("onnxruntime_genai.models.builder", "plain builder int4 (its defaults)"),
                          ("edgewise.models.builder_fixes", "builder + edgewise's fixes, int4 (its defaults)")):
        shutil.rmtree(out, ignore_errors=True)  # what a failed first try left
        cmd = [sys.executable, "-m", module, "-i", str(hf_folder), "-o", str(out), "-p", "int4", "-e", "cpu",
               "-c", str(out.parent / "builder_cache")]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            set_threads(out, 0)  # same threads as edgewise's export (this machine's cores)
            return out, label
    raise SystemExit(f"the builder cannot export {hf_folder}")


def size_mb(model_dir: Path) -> float:
    return sum(p.stat().st_size for p in model_dir.glob("model.onnx*")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="a folder or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--text_template", help="the demo's DEMO_TEMPLATE, for a model without a chat template")
    parser.add_argument("--prompt_tokens", type=int, default=128)
    parser.add_argument("--gen_tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    models = chain_models(engine.cache_root(), args.model, args.text_template)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain, plain_label = builder_default(models["base"], Path(tmp) / "builder")
        cases = [("edgewise export, adapter off", models["lora"], None),
                 ("edgewise export, adapter on", models["lora"], "travel"),
                 ("same checkpoint, no LoRA inputs", models["plain_export"], None),
                 (plain_label, plain, None)]
        for label, folder, adapter in cases:
            runtime = Runtime(folder, {"travel": folder / ADAPTER_FILE} if adapter else None)
            speed = measure(runtime, adapter, args.prompt_tokens, args.gen_tokens, args.runs)
            rows.append((label, size_mb(folder), speed))
            print(f"{label}: {speed.decode_tok_s:.1f} tok/s", file=sys.stderr, flush=True)
            del runtime
            gc.collect()
    print(f"| model | size MB | TTFT ms ({args.prompt_tokens} prompt tokens) | decode tok/s | p50 ms | p90 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, mb, s in rows:
        print(f"| {label} | {mb:.0f} | {s.ttft_ms:.1f} | {s.decode_tok_s:.1f} | {s.decode_ms_p50:.2f} | "
              f"{s.decode_ms_p90:.2f} |")
    off, on = rows[0][2].decode_tok_s, rows[1][2].decode_tok_s
    print(f"\nadapter on / off: {on / off:.3f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
