"""The subcommands. quantize, finetune and auto-opt are presets: each builds the Workflow value that `run --config`
reads (one pass step, the input model, where the output goes) and hands it to the one pipeline; the runtime commands
load an exported model; cache and registry manage folders."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from edgewise.core import config as cfg
from edgewise.core.artifact import model_and_adapter
from edgewise.core.errors import EdgewiseError
from edgewise.core.log import log
from edgewise.engine import pipeline
from edgewise.engine.workflow import Settings, Step, Workflow, to_dict


def _preset(args, name: str, config) -> int:
    """Run one pass as a workflow (or, with --save_config / --dry_run, write that workflow)."""
    from edgewise.sources.model import InputModel

    settings = cfg.from_args(args, Settings, input_model=cfg.from_args(args, InputModel))
    workflow = Workflow([Step(name, cfg.non_defaults(config))], [], settings, label=f"edgewise {args.command}")
    if _save_config(args, workflow):
        return 0
    _print(pipeline.run(workflow), args.json)
    return 0


def _save_config(args, workflow: Workflow) -> bool:
    """--save_config FILE writes the command's workflow; --dry_run prints it and runs nothing."""
    if not (args.save_config or args.dry_run):
        return False
    import yaml

    flow = to_dict(workflow)
    text = json.dumps(flow, indent=2) if str(args.save_config).endswith(".json") else yaml.safe_dump(flow, sort_keys=False)
    if args.save_config:
        Path(args.save_config).write_text(text)
        log.info("wrote %s (run it with: edgewise run --config %s)", args.save_config, args.save_config)
    if args.dry_run:
        print(text, end="")
    return bool(args.dry_run)


def _print(result: pipeline.Result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(pipeline.as_data(result), indent=2, default=str))
        return
    if result.report:
        winner = result.winner
        print(f"best: trial {winner.trial} {json.dumps(winner.params)} {json.dumps(winner.metrics)}")
    print(result.output)


def quantize(args) -> int:
    from edgewise.passes.quantize import QuantizeConfig

    return _preset(args, "quantize", cfg.from_args(args, QuantizeConfig))


def finetune(args) -> int:
    from edgewise.passes.finetune import FinetuneConfig

    return _preset(args, "finetune", cfg.from_args(args, FinetuneConfig))


def auto_opt(args) -> int:
    """A finetune output given as the model exports its base with its adapter (as the lab's OUT/ft/model +
    --adapter_path OUT/ft/adapter does)."""
    from edgewise.passes.export import ExportConfig

    if args.model_name_or_path:
        model, adapter = model_and_adapter(Path(args.model_name_or_path))
        args.model_name_or_path, args.adapter_path = str(model), args.adapter_path or (adapter and str(adapter))
    if args.adapter_path and not Path(args.adapter_path).is_dir():
        raise EdgewiseError(f"adapter path not found: {args.adapter_path}")
    return _preset(args, "export", cfg.from_args(args, ExportConfig))


def convert_adapters(args) -> int:
    from edgewise.models import onnx_lora
    from edgewise.models.checkpoint import read_config
    from edgewise.models.checks import check_adapter, lora_graph, lora_inputs

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise EdgewiseError(f"{model_dir} is not a model folder exported by edgewise auto-opt")
    hf_config = read_config(model_dir)
    inputs = lora_inputs(lora_graph(model_dir))
    out = Path(args.output_dir)
    if out.is_file():
        raise EdgewiseError(f"output path {out} is a file")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # adapters may join earlier ones there; each file is written atomically
    try:
        for spec in args.adapter_path:
            name, _, path = spec.rpartition("=")
            name = name or Path(path).resolve().parent.name
            written = onnx_lora.convert_adapter(Path(path), model_dir, out / f"{name}.onnx_adapter", hf_config)
            check_adapter(written, inputs)
            print(written)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return 0


def named_adapters(specs: list[str]) -> dict[str, str]:
    adapters = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise EdgewiseError(f"--adapter takes NAME=PATH, got '{spec}'")
        adapters[name] = path
    return adapters


def generate(args) -> int:
    from edgewise.runtime.genai import Runtime
    from edgewise.runtime.sampling import Sampling

    adapters = named_adapters(args.adapter)
    runtime = Runtime(args.model, adapters)
    ids = runtime.prompt_ids([{"role": "user", "content": args.prompt}])
    adapter, sampling = list(adapters)[-1] if adapters else None, cfg.from_args(args, Sampling)
    if args.json:
        pairs = list(runtime.stream_tokens(ids, adapter, sampling))
        print(json.dumps({"text": "".join(piece for _, piece in pairs), "tokens": [t for t, _ in pairs],
                          "prompt_tokens": len(ids), "adapter": adapter}))
        return 0
    for piece in runtime.stream(ids, adapter, sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def embed(args) -> int:
    """One vector per text, in order: JSON on stdout ({"model", "dimension", "data": [{"index", "embedding"}]}, like
    OpenAI's embeddings) or an [n, dimension] float32 .npy file."""
    import numpy as np

    from edgewise.runtime.embed import Embedder

    texts = list(args.text)
    if args.file:
        source = sys.stdin if args.file == "-" else _open_text(args.file)
        texts += [line.rstrip("\n") for line in source if line.strip()]
    if not texts:
        raise EdgewiseError("nothing to embed: give --text (repeatable) or --file")
    if args.batch_size < 1:
        raise EdgewiseError("--batch_size must be positive")
    if args.output and not args.output.endswith(".npy"):
        raise EdgewiseError(f"--output {args.output}: the vectors are written as a .npy file")
    vectors = Embedder(args.model).embed(texts, args.batch_size)
    if args.output:
        np.save(args.output, vectors)
        log.info("%d vectors of %d dimensions -> %s", *vectors.shape, args.output)
        return 0
    print(json.dumps({"model": str(args.model), "dimension": int(vectors.shape[1]),
                      "data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]}))
    return 0


def _open_text(path: str):
    if not Path(path).is_file():
        raise EdgewiseError(f"file not found: {path}")
    return open(path, encoding="utf-8")


def benchmark(args) -> int:
    from edgewise.runtime.benchmark import BenchmarkConfig, measure
    from edgewise.runtime.genai import Runtime

    config = cfg.from_args(args, BenchmarkConfig)
    runtime = Runtime(args.model, named_adapters(args.adapter))
    results = []
    for adapter in [None, *runtime.names]:
        speed = measure(runtime, adapter, config.prompt_tokens, config.gen_tokens, config.runs)
        log.info("%s: first token %.1f ms, decode %.1f tok/s", adapter or "base", speed.ttft_ms, speed.decode_tok_s)
        results.append(speed.as_dict())
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'adapter':<16}{'prompt':>8}{'gen':>6}{'TTFT ms':>10}{'tok/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'peak MB':>9}")
        for r in results:
            print(f"{r['adapter'] or '(base)':<16}{r['prompt_tokens']:>8}{r['gen_tokens']:>6}{r['ttft_ms']:>10.1f}"
                  f"{r['decode_tok_s']:>9.1f}{r['decode_ms_p50']:>9.2f}{r['decode_ms_p90']:>9.2f}{r['peak_rss_mb']:>9.0f}")
    return 0


def serve(args) -> int:
    from edgewise.serve.server import ServeConfig
    from edgewise.serve.server import serve as run_server

    run_server(args.model, named_adapters(args.adapter), cfg.from_args(args, ServeConfig))
    return 0


def chat(args) -> int:
    from edgewise.runtime.chat import ChatSession
    from edgewise.runtime.genai import Runtime
    from edgewise.runtime.sampling import Sampling

    runtime = Runtime(args.model, named_adapters(args.adapter))
    session = ChatSession(runtime, cfg.from_args(args, Sampling), args.system,
                          runtime.names[0] if runtime.names else None)
    session.loop(sys.stdin, sys.stdout)
    return 0


def run(args) -> int:
    from edgewise.engine import workflow

    _print(pipeline.run(workflow.load(args.config, args.overrides)), args.json)
    return 0


def registry(args) -> int:
    from edgewise import registry as reg

    store = reg.open_registry(args.registry)
    if args.action == "push":
        result = store.push(Path(args.folder), args.name, args.version)
        text = f"{result['name']}@{result['version']}"
    elif args.action == "list":
        result = store.list(args.name)
        text = reg.format_list(result)
    elif args.action == "pull":
        result, path = store.pull(*reg.parse_ref(args.ref), Path(args.to))
        text = str(path)
    elif args.action == "alias":
        name, ref = reg.parse_ref(args.ref)
        if not ref:
            raise EdgewiseError(f"alias needs the version it points at: NAME@VERSION, got '{args.ref}'")
        result = store.alias(name, ref, args.alias)
        text = f"{args.alias} -> {name}@{result['version']}"
    elif args.action == "delete":
        name, ref = reg.parse_ref(args.ref)
        result = store.delete(name, ref)
        text = "deleted " + ", ".join(f"{name}@{v}" for v in result)
    else:
        result = store.show(*reg.parse_ref(args.ref))
        text = reg.format_record(result)
    print(json.dumps(result, indent=2, default=str) if args.json else text)
    return 0


def cache(args) -> int:
    from edgewise.engine import cache as cachectl

    root = cachectl.cache_root(args.cache_dir)
    if args.action == "prune":
        found = [cachectl.describe(e) for e in cachectl.prune(root, cachectl.parse_size(args.max_size))]
        text = f"evicted {len(found)} entries ({sum(e['size_mb'] for e in found):.1f} MB)"
    else:
        found = [cachectl.describe(e) for e in cachectl.entries(root)]
        lines = [f"{'pass':<10}{'size MB':>10}  {'last used':<18}path"]
        lines += [f"{e['pass']:<10}{e['size_mb']:>10.1f}  {e['last_used']:<18}{e['path']}" for e in found]
        text = "\n".join(lines + [f"total {sum(e['size_mb'] for e in found):.1f} MB in {root}"])
    print(json.dumps(found, indent=2) if args.json else text)
    return 0
