"""Training and calibration data: JSON Lines / JSON / CSV / Parquet records, rendered with a `{column}` text template
or the tokenizer's chat template, tokenized with labels on the response only. Every user mistake names the file and,
where there is one, the line."""
from __future__ import annotations

import csv
import json
import string
from dataclasses import dataclass
from pathlib import Path

from edgewise.core.errors import EdgewiseError

FORMATS = ("json", "jsonl", "csv", "parquet")
IGNORE = -100


def load_records(path: str | Path, data_name: str = "json") -> list[dict]:
    path = Path(path)
    if data_name not in FORMATS:
        raise EdgewiseError(f"unknown --data_name '{data_name}': use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise EdgewiseError(f"data file not found: {path}")
    try:
        records = _READERS[data_name](path)
    except PermissionError as exc:
        raise EdgewiseError(f"cannot read data file {path}: permission denied") from exc
    except UnicodeDecodeError as exc:
        raise EdgewiseError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not records:
        raise EdgewiseError(f"{path}: the dataset is empty")
    return records


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("[") and path.suffix != ".jsonl":  # a JSON array of records
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgewiseError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
        return [_as_record(row, path, f"element {i + 1}") for i, row in enumerate(rows)]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(_as_record(json.loads(line), path, f"line {number}"))
            except json.JSONDecodeError as exc:
                raise EdgewiseError(f"{path}: malformed JSON on line {number}: {exc.msg}") from exc
    return rows


def _as_record(row, path: Path, where: str) -> dict:
    if not isinstance(row, dict):
        raise EdgewiseError(f"{path}: {where} is a JSON {type(row).__name__}, expected an object of columns")
    return row


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        try:
            return list(csv.DictReader(handle))
        except csv.Error as exc:
            raise EdgewiseError(f"{path}: malformed CSV: {exc}") from exc


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid and OSError variants for bad files
        raise EdgewiseError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc


_READERS = {"json": _read_json, "jsonl": _read_json, "csv": _read_csv, "parquet": _read_parquet}


def parse_template(template: str) -> list[str]:
    """The `{column}` names of a text template; a malformed one is a user error."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise EdgewiseError(f"text template is malformed: {exc}") from exc
    if any(not name.isidentifier() for name in fields):
        raise EdgewiseError(f"text template has an invalid placeholder: {template!r}")
    return fields


def unescape(template: str) -> str:
    """Templates typed on a command line carry literal backslash escapes, as in the lab's \\n."""
    return template.replace("\\n", "\n").replace("\\t", "\t")


@dataclass(frozen=True)
class Formatter:
    """Turns a record into (prompt text, response text): the loss falls on the response only."""

    template: str | None
    prompt_column: str = "prompt"
    response_column: str = "response"

    def check(self, records: list[dict], path) -> None:
        needed = parse_template(self.template) if self.template else [self.prompt_column, self.response_column]
        for number, record in enumerate(records, 1):
            for name in needed:
                if name not in record:
                    raise EdgewiseError(f"{path}: record {number} has no column '{name}' "
                                        f"(columns: {', '.join(record) or 'none'})")
                if not isinstance(record[name], (str, int, float)):
                    raise EdgewiseError(f"{path}: record {number} column '{name}' is a "
                                        f"{type(record[name]).__name__}, expected text")

    def split(self, record: dict, tokenizer) -> tuple[str, str]:
        if self.template is None:
            return _chat_split(tokenizer, str(record[self.prompt_column]), str(record[self.response_column]))
        marker = "{" + self.response_column + "}"
        cut = self.template.find(marker)
        if cut < 0:
            return "", self.template.format(**record)
        return self.template[:cut].format(**record), self.template[cut:].format(**record)


def _chat_split(tokenizer, prompt: str, response: str) -> tuple[str, str]:
    if not tokenizer.chat_template:
        raise EdgewiseError("the tokenizer has no chat template: pass --text_template")
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise EdgewiseError("the chat template renders the prompt differently with and without the answer")
    return head, full[len(head):]


def tokenize(records: list[dict], formatter: Formatter, tokenizer, max_length: int,
             response_only: bool = True) -> list[dict]:
    """input_ids and labels per record (no packing across examples); the prompt is masked out of the loss."""
    examples = []
    for record in records:
        prompt, response = formatter.split(record, tokenizer)
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        tail = tokenizer(response, add_special_tokens=False)["input_ids"]
        ids = (head + tail)[:max_length]
        labels = ([IGNORE] * len(head) if response_only else head) + tail
        examples.append({"input_ids": ids, "labels": labels[:max_length]})
    if all(all(t == IGNORE for t in ex["labels"]) for ex in examples):
        raise EdgewiseError(f"every example is longer than --max_seq_len {max_length} before its response starts")
    return examples


def select(records: list[dict], split: str | None) -> list[dict]:
    """`START:STOP` of the records, each bound an index or a percentage: ':80%' trains, '80%:' holds out."""
    if not split:
        return records
    bounds = split.split(":")
    if len(bounds) != 2:
        raise EdgewiseError(f"data split '{split}': use START:STOP, e.g. ':80%' or '80%:' or '0:200'")

    def bound(text: str, default: int) -> int:
        text = text.strip()
        try:
            return default if not text else (round(len(records) * float(text[:-1]) / 100) if text.endswith("%")
                                             else int(text))
        except ValueError:
            raise EdgewiseError(f"data split '{split}': '{text}' is neither an index nor a percentage") from None

    chosen = records[bound(bounds[0], 0):bound(bounds[1], len(records))]
    if not chosen:
        raise EdgewiseError(f"data split '{split}' selects none of the {len(records)} records")
    return chosen


def load_formatted(path, data_name: str, text_template: str | None, prompt_column: str = "prompt",
                   response_column: str = "response", split: str | None = None) -> tuple[list[dict], Formatter]:
    """Records of a data file and the checked Formatter that renders them (a command-line template is unescaped)."""
    records = select(load_records(path, data_name), split)
    formatter = Formatter(unescape(text_template) if text_template else None, prompt_column, response_column)
    formatter.check(records, path)
    return records, formatter


def texts(records: list[dict], formatter: Formatter, tokenizer) -> list[str]:
    return ["".join(formatter.split(r, tokenizer)) for r in records]
