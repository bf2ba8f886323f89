"""The `edgewise` command: each subcommand is a preset list of passes run by the one engine."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
import typing
from pathlib import Path

from edgewise import __version__

EXAMPLES = {
    "quantize": """examples:
  edgewise quantize --output_path models/awq                      # embedded SmolLM2, AWQ int4 g32
  edgewise quantize --model_name_or_path microsoft/Phi-3.5-mini-instruct --trust_remote_code \\
      --algorithm awq --output_path models/phi/awq
  edgewise quantize --model_name_or_path model.gguf --algorithm gptq --group_size 64 \\
      --data_files data.jsonl --output_path models/gptq""",
    "finetune": """examples:
  edgewise finetune --method lora --model_name_or_path models/awq --data_files travel.jsonl \\
      --max_steps 100 --output_path models/ft                     # chat template over prompt/response
  edgewise finetune --model_name_or_path models/awq --data_files data.csv --data_name csv \\
      --text_template "<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>" --output_path models/ft
  edgewise finetune --model_name_or_path models/awq --data_files travel.jsonl --nproc 2 \\
      --output_path models/ft-ddp                                 # 2 processes (torchrun DDP: GPUs or CPU shares)""",
    "auto-opt": """examples:
  edgewise auto-opt --model_name_or_path models/ft/model --adapter_path models/ft/adapter \\
      --device cpu --provider CPUExecutionProvider --use_ort_genai --output_path models/onnx
  edgewise auto-opt --model_name_or_path models/awq --lora_targets q_proj,v_proj --output_path models/onnx""",
    "convert-adapters": """examples:
  edgewise convert-adapters --model models/onnx/model --adapter_path legal=models/ft-legal/adapter \\
      --output_path models/onnx/adapters""",
    "generate": """examples:
  edgewise generate --model models/onnx/model --prompt "What's a must-see in Paris?"
  edgewise generate --model models/onnx/model \\
      --adapter travel=models/onnx/model/adapter_weights.onnx_adapter --prompt "What's a must-see in Paris?\"""",
    "benchmark": """examples:
  edgewise benchmark models/onnx/model                           # the base model
  edgewise benchmark models/onnx/model --adapter travel=models/onnx/model/adapter_weights.onnx_adapter \
      --prompt_tokens 256 --gen_tokens 128 --json                   # base, then with the adapter active""",
    "serve": """examples:
  edgewise serve models/onnx/model --adapter travel=models/onnx/model/adapter_weights.onnx_adapter
  curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "travel", "messages": [{"role": "user", "content": "Best way to get around Tokyo?"}]}'
  # any OpenAI client: base_url=http://127.0.0.1:8000/v1, model="base" or an adapter's name""",
    "registry": """examples:
  edgewise registry push models/onnx --name ft-for-travel        # next version; --version N to choose it
  edgewise registry list
  edgewise registry show ft-for-travel@1 --json                  # files, sha256, lineage, metrics
  edgewise registry alias ft-for-travel@1 production
  edgewise registry pull ft-for-travel@production --to deploy/travel
  edgewise registry push models/onnx --name ft-for-travel --registry mlflow:http://127.0.0.1:5000
  # the embedded registry lives in $EDGEWISE_REGISTRY (default ~/.local/share/edgewise/registry)""",
    "run": """examples:
  edgewise run --config examples/search.yaml                     # search, report, best model in output_dir
  edgewise run --config examples/search.yaml search.strategy=tpe search.max_trials=5 output_dir=out/tpe
  edgewise quantize --algorithm gptq --output_path q --save_config flow.yaml && edgewise run --config flow.yaml
workflow sections: input_model, data, passes, evaluators, goals, objectives, search, output_dir, cache_dir,
register, registry; a pass or evaluator parameter given as a list (or {low, high, step, log}) is searched.""",
    "cache": """examples:
  edgewise cache ls
  edgewise cache prune --max_size 20G                            # evict least recently used entries""",
    "chat": """examples:
  edgewise chat models/onnx/model --adapter travel=models/onnx/model/adapter_weights.onnx_adapter
  # in the chat: /adapter travel | /adapter none | /reset | /exit""",
}


def _fields(config_cls):
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        kind = hints[f.name]
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        yield f, base


def add_config_args(parser, config_cls, skip=()) -> None:
    """Flags, types, choices and help come from the pass's config dataclass: its single source of truth."""
    group = parser.add_argument_group(f"{config_cls.__name__} options")
    for f, base in _fields(config_cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        kwargs = {"help": f"{meta.get('help', '')} (default: {f.default})", "default": f.default}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = base
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        group.add_argument(f"--{f.name}", **kwargs)


def config_from(args, config_cls, **overrides):
    values = {f.name: getattr(args, f.name) for f, _ in _fields(config_cls) if hasattr(args, f.name)}
    values.update(overrides)
    for f, _ in _fields(config_cls):
        if f.metadata.get("path") and values.get(f.name):
            values[f.name] = str(Path(values[f.name]).expanduser().resolve())
    return config_cls(**values)


def _common(parser, model=True, output=True) -> None:
    if model:
        parser.add_argument("--model_name_or_path", "-m", help="HF folder, hub id or .gguf file "
                            "(default: the embedded SmolLM2-135M-Instruct)")
        parser.add_argument("--trust_remote_code", action="store_true", help="allow code shipped with the model")
    if output:
        parser.add_argument("--output_path", "-o", required=True, help="folder to write")
        parser.add_argument("--register", metavar="NAME", help="push the output to the registry as NAME's next version")
        _registry_flag(parser)
        parser.add_argument("--save_config", metavar="FILE", help="also write the equivalent workflow (YAML, or JSON "
                            "for a .json name) for `edgewise run --config`")
        parser.add_argument("--dry_run", action="store_true", help="print the equivalent workflow and run nothing")
    parser.add_argument("--cache_dir", help="cache folder (default: $EDGEWISE_CACHE or ~/.cache/edgewise)")
    parser.add_argument("--log_level", type=int, default=1, choices=(0, 1, 2, 3),
                        help="0 debug (with tracebacks), 1 info, 2 warning, 3 error")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


class Parser(argparse.ArgumentParser):
    """A mistyped flag or value is one line, as every other user error is (the usage lives in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from edgewise.passes.export import ExportConfig
    from edgewise.passes.finetune import FinetuneConfig
    from edgewise.passes.quantize import QuantizeConfig

    parser = Parser(prog="edgewise", description=(
        "Quantize, LoRA-finetune and export language models for on-device inference with ONNX Runtime GenAI."))
    parser.add_argument("--version", action="version", version=f"edgewise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text):
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES.get(name),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("quantize", "int4/int8 weight-only quantization (AWQ, GPTQ, RTN) to a Hugging Face folder")
    _common(p)
    add_config_args(p, QuantizeConfig)

    p = command("finetune", "LoRA finetuning on JSONL/CSV/Parquet data; writes OUT/model and OUT/adapter")
    _common(p)
    add_config_args(p, FinetuneConfig)

    p = command("auto-opt", "export to ONNX Runtime GenAI with the LoRA adapter as a separate .onnx_adapter")
    _common(p)
    p.add_argument("--use_ort_genai", action="store_true", help="accepted for the lab's command line (always on)")
    add_config_args(p, ExportConfig)

    p = command("convert-adapters", "turn PEFT adapters of the same base into .onnx_adapter files for a model")
    _common(p, model=False)
    p.add_argument("--model", required=True, help="the exported model folder (OUT/model)")
    p.add_argument("--adapter_path", action="append", required=True, metavar="[NAME=]PATH",
                   help="PEFT adapter folder (repeatable)")

    p = command("generate", "generate with an exported model, optionally through an adapter")
    _common(p, model=False, output=False)
    p.add_argument("--model", required=True, help="the exported model folder (OUT/model)")
    _adapter_flag(p, "load an .onnx_adapter under NAME and use it (repeatable; the last one is active)")
    p.add_argument("--prompt", required=True, help="user message (the chat template is applied)")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)

    p = command("benchmark", "time to first token, decode tok/s and peak memory, without and with each adapter")
    _common(p, model=False, output=False)
    p.add_argument("model", help="the exported model folder (OUT/model)")
    _adapter_flag(p, "also measure with this .onnx_adapter active (repeatable)")
    p.add_argument("--prompt_tokens", type=int, default=128, help="prompt length")
    p.add_argument("--gen_tokens", type=int, default=128, help="tokens generated per run")
    p.add_argument("--runs", type=int, default=3, help="timed runs (after one warm-up); medians are reported")

    p = command("serve", "OpenAI-compatible HTTP server; a request's `model` picks the adapter (or 'base')")
    _common(p, model=False, output=False)
    p.add_argument("model", help="the exported model folder (OUT/model)")
    _adapter_flag(p, "serve this .onnx_adapter as model NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless you say otherwise)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api_key", default=None, help="require 'Authorization: Bearer KEY' (default: $EDGEWISE_API_KEY)")
    p.add_argument("--parallel", type=int, default=4, help="generations run at once; more requests wait their turn")

    p = command("run", "run a workflow file: passes, evaluators, goals and a search over pass parameters")
    p.add_argument("--config", required=True, help="workflow file (.yaml, .yml or .json)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override the file, e.g. search.max_trials=4")
    p.add_argument("--log_level", type=int, default=1, choices=(0, 1, 2, 3), help="0 debug .. 3 error")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")

    p = command("cache", "list the cache's entries or evict the least recently used")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (("ls", "entries with size and last use"), ("prune", "evict LRU entries to a size")):
        a = actions.add_parser(name, help=help_text, description=help_text)
        _common(a, model=False, output=False)
        if name == "prune":
            a.add_argument("--max_size", required=True, help="keep at most this much, e.g. 500M, 20G (0: empty)")

    p = command("registry", "share and version outputs: push, list, show, pull, alias, delete")
    _registry_parsers(p)

    p = command("chat", "interactive chat in the terminal, streamed, with adapter switching")
    _common(p, model=False, output=False)
    p.add_argument("model", help="the exported model folder (OUT/model)")
    _adapter_flag(p, "load this .onnx_adapter as NAME (repeatable; the first one starts active)")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--system", default=None, help="system message")
    return parser


def _registry_flag(parser) -> None:
    parser.add_argument("--registry", metavar="URI", help="a folder (embedded registry), mlflow:http://HOST:PORT or "
                        "hf://ORG (default: $EDGEWISE_REGISTRY or ~/.local/share/edgewise/registry)")


def _registry_parsers(parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name, help_text):
        a = actions.add_parser(name, help=help_text, description=help_text)
        _registry_flag(a)
        a.add_argument("--log_level", type=int, default=1, choices=(0, 1, 2, 3), help="0 debug .. 3 error")
        a.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
        return a

    a = action("push", "store a folder as a new immutable version of NAME")
    a.add_argument("folder", help="an output folder (e.g. of auto-opt)")
    a.add_argument("--name", required=True)
    a.add_argument("--version", type=int, help="version number (default: the next one)")
    action("list", "versions in the registry (of one model when NAME is given)").add_argument("name", nargs="?")
    action("show", "files, sizes, sha256, lineage and metrics of a version").add_argument(
        "ref", metavar="NAME[@VERSION|@ALIAS]")
    a = action("pull", "copy a version to a folder, verifying every checksum")
    a.add_argument("ref", metavar="NAME[@VERSION|@ALIAS]")
    a.add_argument("--to", required=True, help="folder to write (new or empty)")
    a = action("alias", "point ALIAS (e.g. production) at a version")
    a.add_argument("ref", metavar="NAME@VERSION")
    a.add_argument("alias")
    action("delete", "delete a version (NAME@VERSION) or a model with all its versions (NAME)").add_argument(
        "ref", metavar="NAME[@VERSION|@ALIAS]")


def _adapter_flag(parser, help_text: str) -> None:
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH", help=help_text)


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def main(argv=None) -> int:
    from edgewise.errors import EdgewiseError
    from edgewise.log import setup

    args = build_parser().parse_args(argv)
    setup(args.log_level)
    try:
        from edgewise import commands

        return getattr(commands, args.command.replace("-", "_"))(args) or 0
    except EdgewiseError as exc:
        print(f"edgewise: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgewise: interrupted (finished steps stay cached; run again to resume)", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:  # a full disk or a read-only folder is the machine's, not a bug
            return _internal_error(args, exc)
        print(f"edgewise: error: {exc.strerror}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 2
    except Exception as exc:
        return _internal_error(args, exc)


def _internal_error(args, exc: Exception) -> int:
    """The last line of defence: one line, non-zero, the traceback only when asked for."""
    from edgewise.log import log

    if args.log_level == 0:
        raise exc
    log.debug("internal error", exc_info=True)
    print(f"edgewise: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
          "(rerun with --log_level 0 for the traceback)", file=sys.stderr)
    return 1
