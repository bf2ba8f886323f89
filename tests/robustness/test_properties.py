"""Property-based tests (hypothesis) of data loading and templating: any bytes in a data file either load or end
in an EdgewiseError (never another exception); records written in any supported format load back unchanged;
a template renders to exactly str.format's text, split where the response starts; splits select what they say;
tokenized labels mask the prompt and nothing else."""
import csv
import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger import record

from edgewise.core.errors import EdgewiseError
from edgewise.sources import datasets

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,  # the same examples every run
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
names = st.text(string.ascii_letters + "_", min_size=1, max_size=8).filter(str.isidentifier)
values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
records = st.lists(st.dictionaries(names, values, min_size=1, max_size=4), min_size=1, max_size=8)
EXAMPLES = {}


def counted(name):
    EXAMPLES[name] = EXAMPLES.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def ledger():
    yield
    for name, n in EXAMPLES.items():
        record("property", name, "pass", examples=n)


@SETTINGS
@given(blob=st.binary(max_size=2000), fmt=st.sampled_from(datasets.FORMATS))
def test_any_bytes_load_or_fail_cleanly(tmp_path, blob, fmt):
    counted("any bytes as a data file: records or one EdgewiseError")
    path = tmp_path / f"data.{fmt}"
    path.write_bytes(blob)
    try:
        rows = datasets.load_records(path, fmt)
    except EdgewiseError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert rows and all(isinstance(r, dict) for r in rows)


@SETTINGS
@given(rows=records)
def test_jsonl_and_json_round_trip(tmp_path, rows):
    counted("records written as JSONL / JSON load back unchanged")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    assert datasets.load_records(tmp_path / "a.jsonl", "jsonl") == rows
    assert datasets.load_records(tmp_path / "a.json", "json") == rows


@SETTINGS
@given(columns=st.lists(names, min_size=1, max_size=4, unique=True),
       rows=st.lists(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"),
                                      max_size=20), min_size=4, max_size=4), min_size=1, max_size=6))
def test_csv_round_trip(tmp_path, columns, rows):
    counted("records written as CSV load back unchanged")
    path = tmp_path / "a.csv"
    table = [dict(zip(columns, row)) for row in rows]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(table)
    if all(all(v == "" for v in r.values()) for r in table) and len(columns) == 1:
        return  # a CSV of one empty column is indistinguishable from blank lines
    assert datasets.load_records(path, "csv") == table


literal = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).map(
    lambda s: s.replace("{", "{{").replace("}", "}}"))


@SETTINGS
@given(row=st.dictionaries(names, values, min_size=1, max_size=4), data=st.data())
def test_template_renders_like_format_split_at_the_response(row, data):
    counted("a template renders as str.format does, split where the response starts")
    columns = sorted(row)
    parts = data.draw(st.lists(st.tuples(literal, st.sampled_from(columns)), min_size=1, max_size=5))
    template = "".join(f"{text}{{{col}}}" for text, col in parts) + data.draw(literal)
    response = data.draw(st.sampled_from(columns))
    formatter = datasets.Formatter(template, response_column=response)
    formatter.check([row], "data")
    prompt, answer = formatter.split(row, tokenizer=None)
    assert prompt + answer == template.format(**row)
    marker = "{" + response + "}"
    if marker in template:
        assert prompt == template[:template.find(marker)].format(**row)


@SETTINGS
@given(template=st.text(max_size=30), row=st.dictionaries(names, values, max_size=3))
def test_any_template_checks_cleanly(template, row):
    counted("any template text: accepted and renders, or one EdgewiseError")
    try:
        datasets.Formatter(template).check([row], "data")
    except EdgewiseError:
        return
    assert isinstance(template.format(**row), str)


@SETTINGS
@given(n=st.integers(1, 50), split=st.one_of(
    st.text(max_size=8),
    st.tuples(st.integers(-60, 60), st.integers(-60, 60)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(st.integers(0, 120), st.integers(0, 120)).map(lambda t: f"{t[0]}%:{t[1]}%")))
def test_split_selects_a_contiguous_slice_or_fails_cleanly(n, split):
    counted("a data split selects a slice of the records, or one EdgewiseError")
    rows = [{"i": i} for i in range(n)]
    try:
        chosen = datasets.select(rows, split)
    except EdgewiseError:
        return
    assert chosen and all(b["i"] == a["i"] + 1 for a, b in zip(chosen, chosen[1:]))


class CharTokenizer:
    """One token per character: enough to check masking without a model."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


@SETTINGS
@given(prompt=values, response=values, max_length=st.integers(1, 64), response_only=st.booleans())
def test_labels_mask_the_prompt_only(prompt, response, max_length, response_only):
    counted("tokenized labels mask the prompt and nothing else")
    formatter = datasets.Formatter("{prompt}{response}")
    try:
        [example] = datasets.tokenize([{"prompt": prompt, "response": response}], formatter, CharTokenizer(),
                                      max_length, response_only)
    except EdgewiseError:
        assert len(prompt) >= max_length or not response  # nothing of the response fits
        return
    ids, labels = example["input_ids"], example["labels"]
    assert len(ids) == len(labels) == min(max_length, len(prompt) + len(response))
    head = min(len(prompt), len(ids))
    expected_head = [datasets.IGNORE] * head if response_only else ids[:head]
    assert labels[:head] == expected_head and labels[head:] == ids[head:]
