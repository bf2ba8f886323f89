"""auto-opt: export to an ONNX Runtime GenAI folder with the model builder, keep the quantized integers exactly,
add LoRA inputs and write the adapter as `adapter_weights.onnx_adapter`. onnx and torch are imported when the pass
runs (the config and its checks stay light)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from edgewise.core.artifact import MODEL, Artifact, model_and_adapter
from edgewise.core.errors import EdgewiseError
from edgewise.core.fsutil import link_tree
from edgewise.core.log import log
from edgewise.models.archs import repair_config, unpacked
from edgewise.models.encoders import is_encoder
from edgewise.models.hf_config import model_type
from edgewise.models.targets import (
    DEVICES,
    PRECISIONS,
    PRECISIONS_BY_TARGET,
    PROVIDERS,
    Target,
    check_precision,
    target_for,
)
from edgewise.passes import register


@dataclass(frozen=True)
class ExportConfig:
    adapter_path: str | None = field(default=None, metadata={
        "help": "PEFT adapter folder to ship as adapter_weights.onnx_adapter", "path": True})
    precision: str = field(default="int4", metadata={
        "help": f"weight precision of the ONNX model ({PRECISIONS_BY_TARGET})", "choices": PRECISIONS})
    device: str = field(default="cpu", metadata={"help": "target device (gpu: cuda)", "choices": DEVICES})
    provider: str | None = field(default=None, metadata={
        "help": "execution provider (overrides --device)", "choices": tuple(PROVIDERS)})
    lora_targets: str | None = field(default=None, metadata={
        "help": "comma-separated projections that get LoRA inputs (default: the adapter's)"})
    lm_head_bits: int = field(default=8, metadata={
        "help": "bits of the output head and tied embedding in int4 models", "choices": (4, 8)})
    threads: int = field(default=0, metadata={"help": "intra-op threads in genai_config (0: this machine's cores)"})
    context_length: int = field(default=0, metadata={
        "help": "the longest prompt + answer (0: the model's; npu: at most 2048); within a LongRoPE model's original "
                "length only its short rotary path is kept (no If node: CUDA graphs can be captured)"})
    prompt_window: int = field(default=64, metadata={"help": "npu: prompt tokens per run of the context graph"})
    lora_rank: int = field(default=0, metadata={
        "help": "npu: the fixed rank of the LoRA inputs; smaller adapters are zero-padded (0: the adapter's, or 16)"})
    soc_model: int = field(default=60, metadata={"help": "npu: QNN soc_model of the chip (60: Snapdragon X Elite)"})
    htp_arch: int = field(default=73, metadata={"help": "npu: Hexagon architecture of the chip (73: v73)"})

    @cached_property
    def target(self) -> Target:
        """The target --provider or --device names, resolved once."""
        return target_for(self.device, self.provider)

    def check(self) -> None:
        """Before any work: the precision is one the target is built for; a pipeline's shapes fit together."""
        check_precision(self.target, self.precision)
        if self.target.pipeline:
            check_npu_shapes(self.context_length, self.prompt_window, self.lora_rank)


def check_npu_shapes(context: int, window: int, rank: int) -> None:
    if window < 2 or context < 0 or rank < 0:
        raise EdgewiseError("--prompt_window must be at least 2, --context_length and --lora_rank at least 0")
    if context and context < 2 * window:
        raise EdgewiseError(f"--context_length {context} must be at least twice --prompt_window ({window})")


def export_inputs(folder: Path, config: ExportConfig) -> tuple[Path, Path | None]:
    """The base model folder and the adapter to ship: a finetune output (model/ + adapter/) exports its own base with
    its own adapter (unless --adapter_path names another), as in a workflow's finetune -> export."""
    base, own = model_and_adapter(folder)
    return base, Path(config.adapter_path) if config.adapter_path else own


def lora_target_set(adapter: Path | None, config: ExportConfig) -> set[str]:
    targets = set()
    if adapter:
        cfg_path = adapter / "adapter_config.json"
        if not cfg_path.is_file():
            raise EdgewiseError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
        modules = json.loads(cfg_path.read_text()).get("target_modules") or []
        targets.update(modules if isinstance(modules, list) else [modules])
    if config.lora_targets:
        targets.update(t.strip() for t in config.lora_targets.split(",") if t.strip())
    return {name for t in targets for name in unpacked(t)}


def builder_input(folder: Path, precision: str, work: Path) -> Path:
    """The folder the builder reads: the checkpoint itself, or its dequantized float copy for float exports, with
    its config repaired where the builder would misread it (a linked copy then, with the repair logged)."""
    from edgewise.models.checkpoint import copy_side_files, load_model
    from edgewise.models.hf_config import config_json, quantization_config

    qconfig = quantization_config(folder)
    if qconfig and {"int4": 4, "int8": 8}.get(precision) != qconfig["bits"]:  # a float export of a quantized model
        dense = work / "dequantized"
        if not (dense / "config.json").is_file():
            model = load_model(folder)  # transformers' own bars are silenced there
            model.save_pretrained(dense)
            copy_side_files(folder, dense)
        folder = dense
    config = config_json(folder)
    notes = repair_config(config)
    if not notes:
        return folder
    repaired = work / "repaired"
    shutil.rmtree(repaired, ignore_errors=True)  # left by an interrupted run
    link_tree(folder, repaired, skip=("config.json",))
    (repaired / "config.json").write_text(json.dumps(config, indent=2))
    for note in notes:
        log.info("config repaired for the builder: %s", note)
    return repaired


def run_builder(src: Path, out: Path, config: ExportConfig, work: Path) -> None:
    # Full-length KV caches on sliding-window layers too (Gemma 2/3): the builder's windowed ones need the runtime's
    # max_length to reach the window (a 512-token window refused a short load check), and the serve engine keeps
    # one cache layout for every layer; the layers still attend within their window.
    extra = ["hf_remote=false", "windowed_kv_cache=false"]
    if config.precision == "int4" and config.lm_head_bits == 8:
        extra.append("matmul_mixed_precision=last_matmul:int8")
    cmd = [sys.executable, "-m", "edgewise.models.builder_fixes", "-i", str(src), "-o", str(out),
           "-p", config.precision, "-e", config.target.builder_device, "-c", str(work / "builder_cache"),
           "--extra_options", *extra]
    log_path = work / "builder.log"
    log.info("building the ONNX model (%s, %s); log: %s", config.precision, config.target.builder_device, log_path)
    with open(log_path, "w") as handle:
        done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
        raise EdgewiseError(f"the ONNX Runtime GenAI builder failed: {lines[-1] if lines else 'no output'}"
                            f" (full log: {log_path})")


def set_threads(model_dir: Path, threads: int) -> None:
    path = model_dir / "genai_config.json"
    cfg = json.loads(path.read_text())
    options = cfg["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads or os.cpu_count() or 1
    path.write_text(json.dumps(cfg, indent=4))


def repair_shared_head(model) -> None:
    """Builder 0.18 names the int8 head's tensors differently where the tied embedding reads them
    (weight_Q8G32 / weight_scale vs weight_Q8 / weight_scales); point those inputs at the real tensors."""
    names = {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    names |= {i.name for i in model.graph.input}
    renames = {"lm_head.MatMul.weight_Q8G32": "lm_head.MatMul.weight_Q8",
               "lm_head.MatMul.weight_scale": "lm_head.MatMul.weight_scales"}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name and name not in names and renames.get(name) in names:
                node.input[i] = renames[name]


def save_onnx(model, path: Path) -> None:
    import onnx

    data = path.with_suffix(".onnx.data")
    data.unlink(missing_ok=True)
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


@register("export", ExportConfig)
def run(artifact: Artifact, config: ExportConfig, out, work) -> dict:
    import onnx

    from edgewise.models import fusion, onnx_lora
    from edgewise.models.checkpoint import read_config

    base, adapter = export_inputs(artifact.path, config)
    if is_encoder(model_type(base)):
        return export_encoder_model(base, adapter, config, out / MODEL, work)
    hf_config = read_config(base)
    targets = lora_target_set(adapter, config)
    model_dir = out / MODEL
    target = config.target
    npu = target.pipeline
    built = work / "cpu-model" if npu else model_dir  # the NPU pipeline is cut from the CPU model
    run_builder(builder_input(base, config.precision, work), built, config, work)
    set_threads(built, config.threads)
    model = onnx.load(built / "model.onnx")
    repair_shared_head(model)
    if target.fuse_gate_up:  # measured on the CPU (BENCHMARKS.md); other targets keep the builder's graph
        fusion.fuse_gate_up(model)
    layout = onnx_lora.add_lora_inputs(model, targets, hf_config, 0 if target.empty_tensors else 1) if targets else {}
    metrics = {"lora_targets": sorted(targets)}
    if config.context_length and not npu:
        bound_context(model, built, config.context_length, target)
    if npu:
        rank = npu_lora_rank(adapter, layout, hf_config, config.lora_rank)
        for entry in layout.values():  # compiled graphs have static shapes: every adapter is padded to this rank
            entry.update(rank=rank, dtype="float16")
        metrics["npu"] = export_npu(model, built, model_dir, config, rank, work)
    else:
        save_onnx(model, model_dir / "model.onnx")
    if layout:
        (model_dir / onnx_lora.LAYOUT).write_text(json.dumps(layout, indent=1))
    metrics["onnx_bytes"] = sum(p.stat().st_size for p in model_dir.iterdir() if p.suffix in (".onnx", ".data", ".bin"))
    if adapter:
        onnx_lora.convert_adapter(adapter, model_dir, model_dir / onnx_lora.ADAPTER_FILE, hf_config)
    (model_dir / "config.json").write_text(json.dumps(hf_config.to_dict(), indent=2))
    validate(model_dir, config)
    return metrics


def export_encoder_model(base: Path, adapter: Path | None, config: ExportConfig, model_dir: Path, work: Path) -> dict:
    """A sentence-embedding model: one graph from ids and mask to the embedding, fp32 or int8 for the CPU."""
    from edgewise.models.encoder_export import export_encoder

    if adapter:
        raise EdgewiseError("LoRA adapters for encoders are not exported yet: export the encoder without an adapter")
    if config.target.device != "cpu":
        raise EdgewiseError(f"encoders are exported for the CPU so far (fp32, int8), not for {config.target.provider}")
    precision = "int8" if config.precision == "int4" else config.precision
    if precision not in ("int8", "fp32"):
        raise EdgewiseError(f"an encoder exports as int8 or fp32 for the CPU, not {config.precision}")
    if config.precision == "int4":
        log.info("int4 is for decoders' weights: this encoder is exported as int8 (dynamic, per channel)")
    return export_encoder(base, model_dir, precision, work)


def bound_context(model, model_dir: Path, context: int, target) -> None:
    """A model that never runs past `context` tokens: genai_config says so, and a LongRoPE model keeps only the
    short path of its rotary cache selection (the If goes). A graph without control flow lets onnxruntime-genai
    capture CUDA graphs, which a CUDA model then turns on."""
    from edgewise.models.rope import require_short_rope

    require_short_rope(model.graph, context)
    path = model_dir / "genai_config.json"
    cfg = json.loads(path.read_text())
    context = min(context, int(cfg["model"]["context_length"]))
    cfg["model"]["context_length"] = cfg["search"]["max_length"] = context
    for entry in cfg["model"]["decoder"].get("session_options", {}).get("provider_options", []):
        if target.cuda_graphs and target.genai_key in entry:
            entry[target.genai_key]["enable_cuda_graph"] = "1"
    path.write_text(json.dumps(cfg, indent=4))


def npu_lora_rank(adapter: Path | None, layout: dict, hf_config, asked: int) -> int:
    """The NPU model's fixed LoRA rank: --lora_rank, else the shipped adapter's widest input, else 16."""
    from edgewise.models import onnx_lora

    if not layout:
        return 0
    need = onnx_lora.combined_rank(adapter, layout, hf_config) if adapter else 0
    if asked and need > asked:
        raise EdgewiseError(f"the adapter needs LoRA rank {need} (its pieces stacked per projection), more than "
                            f"--lora_rank {asked}")
    return asked or need or 16


def export_npu(model, built: Path, model_dir: Path, config: ExportConfig, rank: int, work: Path) -> dict:
    """The decoder pipeline for HTP: the CPU model cut into its four graphs (models/npu.py), the two body graphs
    compiled into EPContext models with their context binaries, the CPU parts saved as they are."""
    from edgewise.models import npu
    from edgewise.runtime import qnn

    cpu_config = json.loads((built / "genai_config.json").read_text())
    window = npu.full_attention_within(model.graph)  # HTP has no sliding windows: by default, stay within them
    context = config.context_length or min(int(cpu_config["model"]["context_length"]), 2048, window or 2048)
    check_npu_shapes(context, config.prompt_window, config.lora_rank)
    parts = npu.split(model, cpu_config["model"]["decoder"], int(cpu_config["model"]["vocab_size"]),
                      config.prompt_window, context, rank)
    model_dir.mkdir(parents=True, exist_ok=True)
    files, compiled = {}, {}
    options = qnn.runtime_options(config.soc_model, config.htp_arch)
    for name, part in parts.items():
        if name in npu.ON_HTP:
            save_onnx(part, work / f"{name}.onnx")
            files[name] = f"{name}_ctx.onnx"
            compiled[name] = qnn.compile_for_htp(work / f"{name}.onnx", model_dir / files[name], options, work)
        else:
            files[name] = f"{name}.onnx"
            save_onnx(part, model_dir / files[name])
    genai = npu.genai_config(cpu_config, parts, files, config.prompt_window, context, options)
    (model_dir / "genai_config.json").write_text(json.dumps(genai, indent=4))
    for side in built.iterdir():  # tokenizer and chat template
        if side.is_file() and not side.name.startswith(("model.onnx", "genai_config")):
            shutil.copy2(side, model_dir / side.name)
    return {"context_length": context, "prompt_window": config.prompt_window, "compiled": compiled}


def validate(model_dir: Path, config: ExportConfig) -> None:
    """Every check this machine can run, each reported in one line: the structural ones always, loading and generating
    where the target's runtime is here. A broken export fails here, not on the device."""
    from edgewise.models import onnx_lora
    from edgewise.models.checks import check_export
    from edgewise.runtime.genai import Runtime, RuntimeMissing
    from edgewise.runtime.sampling import Sampling

    for line in check_export(model_dir):
        log.info("check %s", line)
    adapter = model_dir / onnx_lora.ADAPTER_FILE
    target = config.target
    try:
        runtime = Runtime(model_dir, {"check": adapter} if adapter.is_file() else None)
        ids = runtime.prompt_ids([{"role": "user", "content": "Hi"}])
        for name in ({None, "check"} if adapter.is_file() else {None}):  # the base runs on the LoRA inputs' defaults
            "".join(runtime.stream(ids, name, Sampling(max_new_tokens=2)))
    except RuntimeMissing:
        log.info("check load and generate (%s): not run on this machine (it needs %s)", target.provider,
                 target.runtime)
        return
    except EdgewiseError:
        raise
    except Exception as exc:  # onnxruntime-genai reports invalid graphs as RuntimeError
        raise EdgewiseError(f"the exported model does not load: {str(exc).splitlines()[0]}") from exc
    log.info("check load and generate (%s, onnxruntime-genai%s): passed", target.provider,
             ", with and without the adapter" if adapter.is_file() else "")
