"""quality: greedy answers to a dataset's prompts (through the chat template) against its reference responses:
exact match and ROUGE-L (F1 of the longest common subsequence of words)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgewise.core.errors import EdgewiseError
from edgewise.evaluators import evaluator
from edgewise.sources import datasets


@dataclass(frozen=True)
class QualityConfig:
    data_files: str = field(default="", metadata={"help": "data file with prompts and reference responses",
                                                  "path": True})
    data_name: str = field(default="json", metadata={"help": "format of data_files", "choices": datasets.FORMATS})
    prompt_column: str = field(default="prompt", metadata={"help": "prompt column"})
    response_column: str = field(default="response", metadata={"help": "reference response column"})
    data_split: str | None = field(default=None, metadata={"help": "records to use, START:STOP, e.g. '80%:'"})
    max_samples: int = field(default=16, metadata={"help": "prompts answered"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens per answer"})
    adapter: bool = field(default=True, metadata={"help": "with the model's adapter active, where it has one"})

    def check(self) -> None:
        """Before any work: the data file is there, loads, and has the prompt and response columns."""
        self.records()

    def records(self) -> list[dict]:
        if not self.data_files:
            raise EdgewiseError("the quality evaluator needs data_files with prompts and reference responses")
        records, _ = datasets.load_formatted(self.data_files, self.data_name, None, self.prompt_column,
                                             self.response_column, self.data_split)
        return records


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l(candidate: str, reference: str) -> float:
    a, b = words(candidate), words(reference)
    if not a or not b:
        return float(a == b)
    row = [0] * (len(b) + 1)
    for x in a:  # longest common subsequence, one row at a time
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    lcs = row[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


@evaluator("quality", QualityConfig, better={"exact_match": "higher", "rouge_l": "higher"})
def run(model, config: QualityConfig) -> dict:
    records = config.records()
    exact, rouge = [], []
    for record in records[:config.max_samples]:
        messages = [{"role": "user", "content": str(record[config.prompt_column])}]
        text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        answer, reference = model.answer(ids, config.max_new_tokens), str(record[config.response_column])
        exact.append(float(words(answer) == words(reference)))
        rouge.append(rouge_l(answer, reference))
    return {"exact_match": sum(exact) / len(exact), "rouge_l": sum(rouge) / len(rouge), "answers": len(exact)}
