"""The `edgewise` command line: every flag of a setting comes from the dataclass that holds it (core.config), and
every subcommand shares --log_level and --json. Each subcommand's --help ends with worked examples."""
from __future__ import annotations

import argparse

from edgewise import __version__
from edgewise.core.config import add_flags

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
  edgewise auto-opt --model_name_or_path models/awq --lora_targets q_proj,v_proj --output_path models/onnx
  edgewise auto-opt --model_name_or_path models/ft --device npu --provider QNNExecutionProvider \\
      --context_length 1024 --output_path models/npu      # Snapdragon HTP (X Elite defaults: --soc_model 60)""",
    "convert-adapters": """examples:
  edgewise convert-adapters --model models/onnx/model --adapter_path legal=models/ft-legal/adapter \\
      --output_path models/onnx/adapters""",
    "generate": """examples:
  edgewise generate --model models/onnx/model --prompt "What's a must-see in Paris?"
  edgewise generate --model models/onnx/model \\
      --adapter travel=models/onnx/model/adapter_weights.onnx_adapter --prompt "What's a must-see in Paris?\"""",
    "embed": """examples:
  edgewise embed models/minilm/model --text "Where should I go in May?" --text "Lisbon in spring"
  edgewise embed models/minilm/model --file questions.txt --output questions.npy""",
    "benchmark": """examples:
  edgewise benchmark models/onnx/model                           # the base model
  edgewise benchmark models/onnx/model --adapter travel=models/onnx/model/adapter_weights.onnx_adapter \
      --prompt_tokens 256 --gen_tokens 128 --json                   # base, then with the adapter active""",
    "serve": """examples:
  edgewise serve models/onnx/model --adapter travel=models/onnx/model/adapter_weights.onnx_adapter
  curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "travel", "messages": [{"role": "user", "content": "Best way to get around Tokyo?"}]}'
  # any OpenAI client: base_url=http://127.0.0.1:8000/v1, model="base" or an adapter's name
  edgewise serve models/onnx/model --adapter travel=... --adapter legal=... --max_batch 32 --max_queue 128
  curl -s localhost:8000/metrics                                  # Prometheus: requests, tokens, queue, batch""",
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


CHAIN = ("quantize", "finetune", "auto-opt")
RUN_FLAGS = ("output_dir", "cache_dir", "register", "registry")


class Parser(argparse.ArgumentParser):
    """A mistyped flag or value is one line, as every other user error is (the usage lives in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _shared() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--log_level", type=int, default=1, choices=(0, 1, 2, 3),
                        help="0 debug (with tracebacks), 1 info, 2 warning, 3 error")
    shared.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return shared


def build_parser() -> argparse.ArgumentParser:
    from edgewise.passes.export import ExportConfig
    from edgewise.passes.finetune import FinetuneConfig
    from edgewise.passes.quantize import QuantizeConfig

    parser = Parser(prog="edgewise", description=(
        "Quantize, LoRA-finetune and export language models for on-device inference with ONNX Runtime GenAI."))
    parser.add_argument("--version", action="version", version=f"edgewise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = _shared()

    def command(name, help_text, parent=sub):
        return parent.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES.get(name),
                                 formatter_class=argparse.RawDescriptionHelpFormatter, parents=[shared])

    for name, help_text, config_cls in (
            ("quantize", "int4/int8 weight-only quantization (AWQ, GPTQ, RTN) to a Hugging Face folder", QuantizeConfig),
            ("finetune", "LoRA finetuning on JSONL/CSV/Parquet data; writes OUT/model and OUT/adapter", FinetuneConfig),
            ("auto-opt", "export to ONNX Runtime GenAI with the LoRA adapter as a separate .onnx_adapter",
             ExportConfig)):
        _chain_command(command(name, help_text), config_cls)
    _runtime_commands(command)
    p = command("run", "run a workflow file: passes, evaluators, goals and a search over pass parameters")
    p.add_argument("--config", required=True, help="workflow file (.yaml, .yml or .json)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override the file, e.g. search.max_trials=4")
    p = command("cache", "list the cache's entries or evict the least recently used")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (("ls", "entries with size and last use"), ("prune", "evict LRU entries to a size")):
        a = command(name, help_text, actions)
        _run_flags(a, only=("cache_dir",))
        if name == "prune":
            a.add_argument("--max_size", required=True, help="keep at most this much, e.g. 500M, 20G (0: empty)")
    _registry_commands(command, command("registry", "share and version outputs: push, list, show, pull, alias, "
                                                    "delete"))
    return parser


def _run_flags(parser, only=RUN_FLAGS, required=()) -> None:
    from edgewise.engine.workflow import Settings

    add_flags(parser, Settings, only=only, required=required, title="output and cache")


def _chain_command(p, config_cls) -> None:
    """A preset of the pipeline: the input model, one pass's flags, where the output goes."""
    from edgewise.sources.model import InputModel

    add_flags(p, InputModel, title="input model")
    _run_flags(p, required=("output_dir",))
    p.add_argument("--save_config", metavar="FILE", help="also write the equivalent workflow (YAML, or JSON for a "
                   ".json name) for `edgewise run --config`")
    p.add_argument("--dry_run", action="store_true", help="print the equivalent workflow and run nothing")
    if config_cls.__name__ == "ExportConfig":
        p.add_argument("--use_ort_genai", action="store_true", help="accepted for the lab's command line (always on)")
    add_flags(p, config_cls)


def _runtime_commands(command) -> None:
    from edgewise.runtime.benchmark import BenchmarkConfig
    from edgewise.runtime.sampling import Sampling
    from edgewise.serve.server import ServeConfig

    p = command("convert-adapters", "turn PEFT adapters of the same base into .onnx_adapter files for a model")
    p.add_argument("--model", required=True, help="the exported model folder (OUT/model)")
    p.add_argument("--adapter_path", action="append", required=True, metavar="[NAME=]PATH",
                   help="PEFT adapter folder (repeatable)")
    _run_flags(p, only=("output_dir",), required=("output_dir",))
    p = command("generate", "generate with an exported model, optionally through an adapter")
    p.add_argument("--model", required=True, help="the exported model folder (OUT/model)")
    _adapter_flag(p, "load an .onnx_adapter under NAME and use it (repeatable; the last one is active)")
    p.add_argument("--prompt", required=True, help="user message (the chat template is applied)")
    add_flags(p, Sampling, title="sampling")
    p = command("embed", "sentence embeddings from an exported encoder: texts in, vectors out (JSON or .npy)")
    p.add_argument("model", help="the exported encoder folder (OUT/model)")
    p.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    p.add_argument("--file", help="texts to embed, one per line (- for stdin)")
    p.add_argument("--output", help="write the vectors to this .npy file instead of JSON on stdout")
    p.add_argument("--batch_size", type=int, default=32, help="texts per run of the model")
    p = command("benchmark", "time to first token, decode tok/s and peak memory, without and with each adapter")
    p.add_argument("model", help="the exported model folder (OUT/model)")
    _adapter_flag(p, "also measure with this .onnx_adapter active (repeatable)")
    add_flags(p, BenchmarkConfig, title="measurement")
    p = command("serve", "OpenAI-compatible HTTP server; a request's `model` picks the adapter (or 'base')")
    p.add_argument("model", help="the exported model folder (OUT/model)")
    _adapter_flag(p, "serve this .onnx_adapter as model NAME (repeatable)")
    add_flags(p, ServeConfig, title="server")
    p = command("chat", "interactive chat in the terminal, streamed, with adapter switching")
    p.add_argument("model", help="the exported model folder (OUT/model)")
    _adapter_flag(p, "load this .onnx_adapter as NAME (repeatable; the first one starts active)")
    p.add_argument("--system", default=None, help="system message")
    add_flags(p, Sampling, defaults={"max_new_tokens": 256}, title="sampling")


def _registry_commands(command, parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name, help_text):
        a = command(name, help_text, actions)
        _run_flags(a, only=("registry",))
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
