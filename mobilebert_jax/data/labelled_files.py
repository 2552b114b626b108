"""Your own labelled text: CSV, TSV or JSON Lines files (local or gs://) for sentence-level
classification (one label per row, or several), regression, and CoNLL files for tagging.

* `read_table(path)` reads the rows of a table as `(line, {column: value})` — CSV and TSV with a
  header row (quoted fields, commas and newlines inside quotes, as Python's `csv` reads them;
  columns the task does not name are ignored, empty header cells included), JSON Lines with
  one object per line.
* `read_examples(path, ...)` turns rows into `TextExample`s for the task's problem, checking
  every row: a missing column, an empty text, an empty or unknown label and a non-numeric
  regression target are errors naming the file, the line and the column.
* `read_conll(path)` reads CoNLL-style tagging files (one `token ... tag` per line, a blank line
  between sentences, `-DOCSTART-` lines skipped); `write_conll` writes predictions back.

Text that is not UTF-8 is decoded by `text_files.decode` (stray bytes read as Windows-1252 and
counted, a file in a legacy encoding detected) and reported in one line.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any, Sequence

from mobilebert_jax import files
from mobilebert_jax.console import log
from mobilebert_jax.data import text_files

PROBLEMS = ("classification", "multi_label", "regression")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclasses.dataclass
class TextExample:
    """One row: its line in the file, the text (pair), and the target as read (a label name,
    a list of label names, or a float; None in a file without labels)."""

    line: int
    text_a: str
    text_b: str | None
    target: Any


def file_format(path: str, fmt: str = "") -> str:
    """csv, tsv or jsonl: `fmt` when given, else from the file's extension."""
    if fmt:
        if fmt not in FORMATS.values():
            raise ValueError(f"unknown data format {fmt!r} (expected csv, tsv or jsonl)")
        return fmt
    suffix = "." + str(path).rsplit(".", 1)[-1].lower() if "." in str(path) else ""
    if suffix not in FORMATS:
        raise ValueError(f"{path}: cannot tell the format from the extension (expected "
                         f"{', '.join(FORMATS)}); set --config.data_format=csv|tsv|jsonl")
    return FORMATS[suffix]


def read_file_text(path: str, encoding: str = "") -> str:
    """The file's text (see `text_files.decode`), with a line saying how it was decoded when it
    was not plain UTF-8."""
    if not files.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    decoded = text_files.decode(files.read_bytes(path), path, encoding)
    if decoded.note:
        log(f"{path}: {decoded.note}")
    return decoded.text


def read_table(path: str, fmt: str = "",
               encoding: str = "") -> tuple[list[str], list[tuple[int, dict]]]:
    """The columns (a CSV/TSV file's header; a JSON Lines file's first object's keys) and
    `(line, row)` for every non-empty row."""
    fmt = file_format(path, fmt)
    text = read_file_text(path, encoding)
    rows: list[tuple[int, dict]] = []
    if fmt == "jsonl":
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_number}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_number}: not a JSON object "
                                 f"(got {type(row).__name__})")
            rows.append((line_number, row))
        return (list(rows[0][1]) if rows else []), rows
    reader = csv.reader(io.StringIO(text, newline=""),
                        delimiter="," if fmt == "csv" else "\t")
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: file is empty")
        header = [h.strip() for h in header]
        start = reader.line_num + 1
        for fields in reader:
            if any(f.strip() for f in fields):
                row = {name: value for name, value in zip(header, fields) if name}
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: not valid {fmt.upper()} ({e})") from None
    return header, rows


def _cell(path: str, line: int, row: dict, column: str, columns: Sequence[str]) -> Any:
    if column not in row:
        raise ValueError(f"{path}:{line}: column {column!r} is missing in this row")
    return row[column]


def _text(path: str, line: int, row: dict, column: str, columns: Sequence[str]) -> str:
    value = _cell(path, line, row, column, columns)
    if not isinstance(value, str):
        raise ValueError(f"{path}:{line}: column {column!r} is not text "
                         f"(got {json.dumps(value)[:40]})")
    if not value.strip():
        raise ValueError(f"{path}:{line}: column {column!r} is empty")
    return value


def _target(path: str, line: int, row: dict, column: str, columns: Sequence[str],
            problem: str, separator: str) -> Any:
    value = _cell(path, line, row, column, columns)
    if problem == "regression":
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"{path}:{line}: column {column!r} holds {str(value)[:40]!r}, "
                             f"not a number (a regression target)")
        return number
    if problem == "multi_label":
        names = value if isinstance(value, list) else (
            [] if value is None else str(value).split(separator))
        names = [str(n).strip() for n in names if str(n).strip()]
        return sorted(set(names))
    label = "" if value is None else str(value).strip()
    if not label:
        raise ValueError(f"{path}:{line}: column {column!r} is empty (a label)")
    return label


def read_examples(path: str, text_column: str, text_pair_column: str, label_column: str,
                  problem: str, fmt: str = "", encoding: str = "", label_separator: str = ",",
                  labelled: bool = True) -> list[TextExample]:
    """The file's examples, every row checked (see the module docstring)."""
    if problem not in PROBLEMS:
        raise ValueError(f"unknown problem {problem!r} (expected one of {', '.join(PROBLEMS)})")
    columns, rows = read_table(path, fmt, encoding)
    if not rows:
        raise ValueError(f"{path}: holds no rows")
    for column in filter(None, (text_column, text_pair_column,
                                label_column if labelled else "")):
        if file_format(path, fmt) != "jsonl" and column not in columns:
            raise ValueError(f"{path}: no column {column!r} (columns: "
                             f"{', '.join(c for c in columns if c) or 'none'})")
    examples = []
    for line, row in rows:
        examples.append(TextExample(
            line, _text(path, line, row, text_column, columns),
            _text(path, line, row, text_pair_column, columns) if text_pair_column else None,
            _target(path, line, row, label_column, columns, problem, label_separator)
            if labelled else None))
    return examples


def label_names(examples: Sequence[TextExample], problem: str) -> list[str]:
    """The labels of the training examples, in output order: sorted (numerically when every
    label is an integer)."""
    names: set[str] = set()
    for ex in examples:
        names.update(ex.target if problem == "multi_label" else [ex.target])
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def check_known_labels(path: str, examples: Sequence[TextExample], labels: Sequence[str],
                       column: str, problem: str) -> None:
    """A label that the training file never had is an error naming the row."""
    known = set(labels)
    for ex in examples:
        for name in ex.target if problem == "multi_label" else [ex.target]:
            if name not in known:
                raise ValueError(f"{path}:{ex.line}: column {column!r} holds label {name!r}, "
                                 f"which the training file never has (labels: "
                                 f"{', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''})")


# -- CoNLL tagging files --------------------------------------------------------------------------
@dataclasses.dataclass
class TaggedSentence:
    line: int  # the line of its first token
    words: list[str]
    tags: list[str] | None


def read_conll(path: str, encoding: str = "", tagged: bool = True) -> list[TaggedSentence]:
    """Sentences of a CoNLL-style file: one token per line with its tag in the last column
    (whitespace-separated; the tag column is absent in an untagged file), a blank line between
    sentences; `-DOCSTART-` lines are skipped."""
    text = read_file_text(path, encoding)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    first = 0

    def close():
        if words:
            sentences.append(TaggedSentence(first, list(words), list(tags) if tagged else None))
            words.clear()
            tags.clear()

    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            close()
            continue
        if tagged and len(fields) < 2:
            raise ValueError(f"{path}:{line_number}: expected a token and its tag, got "
                             f"{line.strip()[:40]!r}")
        if not words:
            first = line_number
        words.append(fields[0])
        if tagged:
            tags.append(fields[-1])
    close()
    if not sentences:
        raise ValueError(f"{path}: holds no sentences")
    return sentences


def write_conll(path: str, sentences: Sequence[TaggedSentence],
                predicted: Sequence[Sequence[str]]) -> None:
    """`token [gold] predicted` per line, a blank line between sentences (conlleval's
    layout when the gold tags are known)."""
    out = []
    for sentence, tags in zip(sentences, predicted):
        for i, (word, tag) in enumerate(zip(sentence.words, tags)):
            out.append(f"{word} {sentence.tags[i]} {tag}" if sentence.tags else f"{word} {tag}")
        out.append("")
    files.write_text(path, "\n".join(out) + "\n")
