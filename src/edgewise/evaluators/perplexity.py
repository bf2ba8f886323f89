"""perplexity: exp(mean negative log-likelihood) of a dataset's tokens (the response tokens only, where a template or
the chat template marks one), or of held-out English prose when no data is given."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgewise.evaluators import evaluator
from edgewise.sources import datasets


@dataclass(frozen=True)
class PerplexityConfig:
    data_files: str | None = field(default=None, metadata={
        "help": "data file (default: held-out English prose, docstrings of Python's standard library)", "path": True})
    data_name: str = field(default="json", metadata={"help": "format of data_files", "choices": datasets.FORMATS})
    text_template: str | None = field(default=None, metadata={"help": "template with {column} placeholders"})
    prompt_column: str = field(default="prompt", metadata={"help": "prompt column for the chat template"})
    response_column: str = field(default="response", metadata={"help": "response column"})
    data_split: str | None = field(default=None, metadata={"help": "records to use, START:STOP, e.g. '80%:'"})
    response_only: bool = field(default=True, metadata={"help": "score the response tokens only"})
    max_samples: int = field(default=32, metadata={"help": "records (or prose windows) scored"})
    seq_len: int = field(default=512, metadata={"help": "tokens per record or window"})
    adapter: bool = field(default=True, metadata={"help": "with the model's adapter active, where it has one"})

    def check(self) -> None:
        """Before any work: a given data file loads and fits the template."""
        if self.data_files:
            self.records()

    def records(self):
        return datasets.load_formatted(self.data_files, self.data_name, self.text_template, self.prompt_column,
                                       self.response_column, self.data_split)


def stdlib_prose(modules: tuple[str, ...] = ("argparse", "json", "collections", "logging", "pathlib", "subprocess",
                                             "threading", "unittest", "email", "http.client")) -> list[str]:
    """Held-out English prose available offline on any machine: docstrings of Python standard-library modules."""
    import importlib
    import inspect

    texts = []
    for name in modules:
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj) or obj is module) else None
            if doc and len(doc) > 200:
                texts.append(doc)
    return texts


def scored_sequences(config: PerplexityConfig, tokenizer) -> list[tuple[list[int], list[bool]]]:
    """(token ids, which next-token predictions count) per record or prose window."""
    if not config.data_files:
        from edgewise.quant.calib import token_windows

        windows = token_windows(tokenizer, stdlib_prose(), config.max_samples, config.seq_len)
        return [(w.tolist(), [True] * (len(w) - 1)) for w in windows]
    records, formatter = config.records()
    examples = datasets.tokenize(records[:config.max_samples], formatter, tokenizer, config.seq_len,
                                 config.response_only)
    return [(ex["input_ids"], [label != datasets.IGNORE for label in ex["labels"][1:]]) for ex in examples]


@evaluator("perplexity", PerplexityConfig, better={"perplexity": "lower"})
def run(model, config: PerplexityConfig) -> dict:
    total, count = 0.0, 0
    for ids, counted in scored_sequences(config, model.tokenizer):
        if len(ids) < 2 or not any(counted):
            continue
        logprobs = model.logprobs(ids)
        total -= float(sum(lp for lp, keep in zip(logprobs, counted) if keep))
        count += sum(counted)
    return {"perplexity": math.exp(total / max(count, 1)), "scored_tokens": count}
