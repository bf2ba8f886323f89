"""Command presets: each builds its pass steps, runs them through the engine and publishes the final folder."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from edgewise import engine, onnx_lora, plugins, sources
from edgewise.cli import config_from
from edgewise.errors import EdgewiseError
from edgewise.fsutil import MANIFEST, check_output_path, stable_hash
from edgewise.log import log
from edgewise.modeling import quantization_config, read_config
from edgewise.passes.export import ExportConfig
from edgewise.passes.finetune import FinetuneConfig
from edgewise.passes.quantize import QuantizeConfig


def _source(args, path=None) -> engine.Artifact:
    folder = sources.resolve(path or args.model_name_or_path, engine.cache_root(args.cache_dir),
                             args.trust_remote_code)
    read_config(folder, args.trust_remote_code)  # unsupported architectures stop here, before any work
    return engine.folder_artifact(folder, path or args.model_name_or_path or sources.DEFAULT_MODEL)


def _save_config(args, steps) -> bool:
    """--save_config FILE writes the command's equivalent workflow; --dry_run prints it and runs nothing."""
    if not (args.save_config or args.dry_run):
        return False
    import yaml

    from edgewise.workflow import to_dict

    flow = to_dict(steps, args.model_name_or_path, args.output_path)
    flow.update({k: v for k, v in (("register", args.register), ("registry", args.registry),
                                   ("cache_dir", args.cache_dir)) if v})
    text = json.dumps(flow, indent=2) if str(args.save_config).endswith(".json") else yaml.safe_dump(flow, sort_keys=False)
    if args.save_config:
        Path(args.save_config).write_text(text)
        log.info("wrote %s (run it with: edgewise run --config %s)", args.save_config, args.save_config)
    if args.dry_run:
        print(text, end="")
    return bool(args.dry_run)


def _run(args, artifact, steps) -> engine.Artifact | None:
    """Run `steps` (each command checks them first, before its model is fetched) and publish the result."""
    if _save_config(args, steps):
        return None
    plugins.load_all()
    check_output_path(Path(args.output_path))
    if args.register:  # a bad name or registry stops the command before any work
        from edgewise.registry import check_name, open_registry

        check_name(args.register)
        open_registry(args.registry)
    result = engine.run_steps(artifact, steps, engine.cache_root(args.cache_dir), checked=True)  # by the command
    out = engine.publish(result, Path(args.output_path))
    report = {"output_path": str(out), "pass": result.manifest["pass"], "metrics": result.manifest["metrics"]}
    if args.register:
        from edgewise.registry import open_registry

        pushed = open_registry(args.registry).push(out, args.register)
        report["registered"] = f"{pushed['name']}@{pushed['version']}"
        log.info("registered %s", report["registered"])
    print(json.dumps(report, indent=2) if args.json else out)
    return result


def quantize(args) -> int:
    steps = [("quantize", config_from(args, QuantizeConfig))]
    engine.check_steps(steps)  # bad values and data stop here, before the model is fetched or converted
    _run(args, _source(args), steps)
    return 0


def finetune(args) -> int:
    config = config_from(args, FinetuneConfig)
    config.check()  # before the model is fetched or converted
    artifact = _source(args)
    steps = []
    if config.method == "qlora" and not quantization_config(artifact.path):
        steps.append(("quantize", QuantizeConfig(data_files=config.data_files, data_name=config.data_name,
                                                 text_template=config.text_template, device=config.device)))
    engine.check_steps(steps)
    _run(args, artifact, steps + [("finetune", config)])
    return 0


def auto_opt(args) -> int:
    model_path = Path(args.model_name_or_path) if args.model_name_or_path else None
    adapter = args.adapter_path
    if model_path and (model_path / "model").is_dir() and (model_path / "adapter").is_dir():
        model_path, adapter = model_path / "model", adapter or str(model_path / "adapter")
    config = config_from(args, ExportConfig, adapter_path=adapter)
    if config.adapter_path and not Path(config.adapter_path).is_dir():
        raise EdgewiseError(f"adapter path not found: {args.adapter_path}")
    steps = [("export", config)]
    engine.check_steps(steps)
    _run(args, _source(args, str(model_path) if model_path else None), steps)
    return 0


def convert_adapters(args) -> int:
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise EdgewiseError(f"{model_dir} is not a model folder exported by edgewise auto-opt")
    hf_config = read_config(model_dir)
    out = Path(args.output_path)
    if out.is_file():
        raise EdgewiseError(f"output path {out} is a file")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # adapters may join earlier ones there; each file is written atomically
    try:
        for spec in args.adapter_path:
            name, _, path = spec.rpartition("=")
            name = name or Path(path).resolve().parent.name
            print(onnx_lora.convert_adapter(Path(path), model_dir, out / f"{name}.onnx_adapter", hf_config))
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
    from edgewise.runtime import Runtime, Sampling

    adapters = named_adapters(args.adapter)
    runtime = Runtime(args.model, adapters)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, seed=args.seed)
    ids = runtime.prompt_ids([{"role": "user", "content": args.prompt}])
    for piece in runtime.stream(ids, list(adapters)[-1] if adapters else None, sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def benchmark(args) -> int:
    from edgewise.benchmark import measure
    from edgewise.runtime import Runtime

    runtime = Runtime(args.model, named_adapters(args.adapter))
    results = []
    for adapter in [None, *runtime.names]:
        speed = measure(runtime, adapter, args.prompt_tokens, args.gen_tokens, args.runs)
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
    import os

    from edgewise.serve import serve as run_server

    if args.host not in ("127.0.0.1", "localhost", "::1") and not (args.api_key or os.environ.get("EDGEWISE_API_KEY")):
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model", args.host)
    run_server(args.model, named_adapters(args.adapter), args.host, args.port,
               args.api_key or os.environ.get("EDGEWISE_API_KEY"), args.parallel)
    return 0


def chat(args) -> int:
    from edgewise.chat import ChatSession
    from edgewise.runtime import Runtime, Sampling

    runtime = Runtime(args.model, named_adapters(args.adapter))
    session = ChatSession(runtime, Sampling(args.max_new_tokens, args.temperature), args.system,
                          runtime.names[0] if runtime.names else None)
    session.loop(sys.stdin, sys.stdout)
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


def run(args) -> int:
    from edgewise import report, search, workflow
    from edgewise.fsutil import atomic_dir, link_tree

    flow = workflow.load(args.config, args.overrides)
    out = Path(flow.settings.output_dir)
    check_output_path(out)
    runner = search.Runner(flow)
    runner.run()
    winner = search.best(runner.candidates, runner.objectives)
    with atomic_dir(out) as tmp:
        if winner:
            link_tree(Path(winner.path), tmp / "best")
        summary = report.write(tmp, runner, winner, str(args.config))
        marker = {"id": stable_hash(summary["candidates"]), "pass": "run", "workflow": str(args.config)}
        (tmp / MANIFEST).write_text(json.dumps(marker, indent=2))  # marks the folder as edgewise's to replace
    log.info("report: %s", out / "report.html")
    if not winner:
        counts = {s: sum(c.status == s for c in runner.candidates) for s in ("pruned", "failed")}
        raise EdgewiseError(f"no candidate met the goals ({counts['pruned']} pruned by a goal, {counts['failed']} "
                            f"failed); see {out / 'report.html'}")
    if flow.settings.register:
        from edgewise.registry import open_registry

        pushed = open_registry(flow.settings.registry).push(out / "best", flow.settings.register)
        log.info("registered %s@%s", pushed["name"], pushed["version"])
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"best: trial {winner.trial} {json.dumps(winner.params)} {json.dumps(winner.metrics)}")
        print(out / "best")
    return 0


def cache(args) -> int:
    from edgewise import cache as cachectl

    root = engine.cache_root(args.cache_dir)
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
