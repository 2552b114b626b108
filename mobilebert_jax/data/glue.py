"""GLUE tasks: the task registry, TSV and TFDS readers, featurization and submission files.

`GLUE_TASKS` maps each task name (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, and the
diagnostic set ax that is scored with an MNLI model) to a `GlueTask` describing the original
GLUE files: which columns hold the sentences, the label and the example index, the label names
(None for the STS-B regression), the metrics, the split names and the submission file names.

The TSVs are read as the official GLUE loaders do: tab-separated, no quote handling (quotes are
literal text). Columns are found by the file's header row; only CoLA's train and dev files have
no header, and use the fixed column order `source, label, author_label, sentence`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Sequence

import numpy as np

from mobilebert_jax import files
from mobilebert_jax.data.model_inputs import encode_sentences

_BINARY = ("0", "1")
_NLI3 = ("contradiction", "entailment", "neutral")
_NLI2 = ("entailment", "not_entailment")


def _short(value: Any, limit: int = 40) -> str:
    """repr of a value for an error message, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + "...'"


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is laid out in its original TSV files and how it is scored."""

    name: str
    dir_name: str
    text_a: str
    text_b: str | None
    label_column: str | None
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    train_splits: tuple[str, ...] = ("train",)
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    submission_files: tuple[tuple[str, str], ...] = ()
    index_column: str | None = "index"
    headerless_columns: tuple[str, ...] | None = None
    tfds_name: str | None = None
    tfds_text: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def splits(self) -> tuple[str, ...]:
        return self.train_splits + self.dev_splits + self.test_splits

    def submission_file(self, split: str | None = None) -> str:
        """File name the GLUE server expects for the predictions on test split `split`."""
        files = dict(self.submission_files)
        if split is None:
            if len(files) != 1:
                raise ValueError(f"task {self.name} has several test splits "
                                 f"({', '.join(files)}): name one")
            return next(iter(files.values()))
        if split not in files:
            raise ValueError(f"task {self.name} has no test split {split!r} "
                             f"(expected one of {', '.join(files)})")
        return files[split]

    def label_id(self, value: Any) -> int:
        """Index of a label given by name (e.g. "entailment") or by index ("1" or 1)."""
        if self.labels is None:
            raise ValueError(f"task {self.name} is a regression task and has no label ids")
        text = str(value).strip()
        if text in self.labels:
            return self.labels.index(text)
        if text.lstrip("-").isdigit() and 0 <= int(text) < len(self.labels):
            return int(text)
        raise ValueError(f"label {_short(text)} is not one of task {self.name}'s labels "
                         f"({', '.join(self.labels)})")

    def label_value(self, value: Any) -> float | int:
        """A label id for classification tasks, a score in [0, 5] for STS-B."""
        if self.labels is not None:
            return self.label_id(value)
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"label {_short(value)} is not a number (task {self.name})") from None
        if not 0.0 <= score <= 5.0:
            raise ValueError(f"label {score} is outside [0, 5] (task {self.name})")
        return score


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "cola", "CoLA", "sentence", None, "label", _BINARY, ("matthews_corrcoef",),
        submission_files=(("test", "CoLA.tsv"),),
        headerless_columns=("source", "label", "author_label", "sentence"),
        tfds_name="glue/cola", tfds_text=("sentence",)),
    "sst2": GlueTask(
        "sst2", "SST-2", "sentence", None, "label", _BINARY, ("accuracy",),
        submission_files=(("test", "SST-2.tsv"),),
        tfds_name="glue/sst2", tfds_text=("sentence",)),
    "mrpc": GlueTask(
        "mrpc", "MRPC", "#1 String", "#2 String", "Quality", _BINARY, ("accuracy", "f1"),
        submission_files=(("test", "MRPC.tsv"),),
        tfds_name="glue/mrpc", tfds_text=("sentence1", "sentence2")),
    "stsb": GlueTask(
        "stsb", "STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman"),
        submission_files=(("test", "STS-B.tsv"),),
        tfds_name="glue/stsb", tfds_text=("sentence1", "sentence2")),
    "qqp": GlueTask(
        "qqp", "QQP", "question1", "question2", "is_duplicate", _BINARY, ("accuracy", "f1"),
        submission_files=(("test", "QQP.tsv"),), index_column="id",
        tfds_name="glue/qqp", tfds_text=("question1", "question2")),
    "mnli": GlueTask(
        "mnli", "MNLI", "sentence1", "sentence2", "gold_label", _NLI3, ("accuracy",),
        dev_splits=("dev_matched", "dev_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
        submission_files=(("test_matched", "MNLI-m.tsv"), ("test_mismatched", "MNLI-mm.tsv")),
        tfds_name="glue/mnli", tfds_text=("premise", "hypothesis")),
    "qnli": GlueTask(
        "qnli", "QNLI", "question", "sentence", "label", _NLI2, ("accuracy",),
        submission_files=(("test", "QNLI.tsv"),),
        tfds_name="glue/qnli", tfds_text=("question", "sentence")),
    "rte": GlueTask(
        "rte", "RTE", "sentence1", "sentence2", "label", _NLI2, ("accuracy",),
        submission_files=(("test", "RTE.tsv"),),
        tfds_name="glue/rte", tfds_text=("sentence1", "sentence2")),
    "wnli": GlueTask(
        "wnli", "WNLI", "sentence1", "sentence2", "label", _BINARY, ("accuracy",),
        submission_files=(("test", "WNLI.tsv"),),
        tfds_name="glue/wnli", tfds_text=("sentence1", "sentence2")),
    "ax": GlueTask(
        "ax", "diagnostic", "sentence1", "sentence2", None, _NLI3, ("matthews_corrcoef",),
        train_splits=(), dev_splits=(), test_splits=("test",),
        submission_files=(("test", "AX.tsv"),),
        tfds_name="glue/ax", tfds_text=("premise", "hypothesis")),
}


@dataclasses.dataclass
class GlueExample:
    """One GLUE example; `label` is a label id, an STS-B score, or None in test files."""

    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None


def get_task(task: str | GlueTask) -> GlueTask:
    """The registry entry for a task name (case, '-' and '_' ignored: "SST-2" → sst2)."""
    if isinstance(task, GlueTask):
        return task
    key = str(task).lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r} (expected one of {', '.join(GLUE_TASKS)})")
    return GLUE_TASKS[key]


def _column_index(columns: Sequence[str], name: str, path: os.PathLike | str,
                  task: GlueTask) -> int:
    if name not in columns:
        raise ValueError(f"{path}: header lacks column {name!r} for task {task.name} "
                         f"(found: {', '.join(columns)})")
    return list(columns).index(name)


def _tsv_rows(path: str):
    """Yields (line number, fields) for each non-empty line, split on tabs only (a lone
    "\\r" is text); a line that is not UTF-8 is an error naming the file and the line."""
    for line_number, raw in enumerate(files.read_bytes(path).split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{line_number}: not UTF-8 text (byte {e.start}: "
                             f"{raw[e.start:e.start + 1]!r})") from None
        line = line.rstrip("\r")
        if line:
            yield line_number, line.split("\t")


def read_glue_tsv(path: os.PathLike | str, task: str | GlueTask,
                  split: str = "dev") -> list[GlueExample]:
    """Reads one original GLUE TSV file into examples.

    Test splits carry no label (`label=None`). The example `guid` is the file's index column
    when it has one, else the 0-based row number (the index a submission file uses).
    Raises FileNotFoundError for a missing file and ValueError, naming the line, for a row with
    the wrong number of fields, a missing column or a label outside the task's label set.
    """
    task = get_task(task)
    path = files.resolve(path)
    if split not in task.splits:
        raise ValueError(f"task {task.name} has no split {split!r} "
                         f"(expected one of {', '.join(task.splits)})")
    if not files.isfile(path):
        raise FileNotFoundError(f"GLUE file not found: {path}")
    rows = list(_tsv_rows(path))
    if not rows:
        raise ValueError(f"{path}: file is empty")
    is_test = split in task.test_splits
    first_line, first = rows[0]
    if task.text_a in first:
        columns, rows = first, rows[1:]
    elif task.headerless_columns is not None and not is_test:
        columns = list(task.headerless_columns)
    else:
        raise ValueError(f"{path}:{first_line}: expected a header row with column "
                         f"{task.text_a!r}, got {first[:4]}")
    a_idx = _column_index(columns, task.text_a, path, task)
    b_idx = None if task.text_b is None else _column_index(columns, task.text_b, path, task)
    label_idx = None
    if not is_test and task.label_column is not None:
        label_idx = _column_index(columns, task.label_column, path, task)
    guid_idx = columns.index(task.index_column) if task.index_column in columns else None
    examples = []
    for row_number, (line, row) in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"{path}:{line}: expected {len(columns)} tab-separated fields, "
                             f"got {len(row)}")
        label = None
        if label_idx is not None:
            try:
                label = task.label_value(row[label_idx])
            except ValueError as e:
                raise ValueError(f"{path}:{line}: {e}") from None
        guid = row[guid_idx] if guid_idx is not None else str(row_number)
        examples.append(GlueExample(guid, row[a_idx],
                                    None if b_idx is None else row[b_idx], label))
    return examples


def _tfds_split(split: str) -> str:
    return split.replace("dev", "validation")


def load_glue_tfds(task: str | GlueTask, split: str,
                   data_dir: str | None = None) -> list[GlueExample]:
    """Reads TFDS `glue/<task>` (prepared beforehand; nothing is downloaded here).

    Split names follow the TSV layout ("dev", "dev_matched", ...); TFDS label indices are mapped
    to this registry's labels by name, so MNLI's different class order in TFDS is handled.
    """
    import tensorflow_datasets as tfds

    task = get_task(task)
    if split not in task.splits:
        raise ValueError(f"task {task.name} has no split {split!r} "
                         f"(expected one of {', '.join(task.splits)})")
    builder = tfds.builder(task.tfds_name, data_dir=data_dir)
    try:
        dataset = tfds.as_numpy(builder.as_dataset(split=_tfds_split(split)))
    except AssertionError:  # what TFDS raises for a data set that was never prepared
        raise FileNotFoundError(f"TFDS dataset {task.tfds_name} is not prepared in "
                                f"{builder.data_dir}; prepare it with tfds build first") from None
    label_feature = builder.info.features["label"]
    names = getattr(label_feature, "names", None)
    examples = []
    for row_number, row in enumerate(dataset):
        texts = [row[key].decode("utf-8") for key in task.tfds_text]
        label = None
        raw = row["label"]
        if split not in task.test_splits and task.label_column is not None and raw != -1:
            if task.labels is None:
                label = task.label_value(float(raw))
            elif names is not None and names[int(raw)] in task.labels:
                label = task.labels.index(names[int(raw)])
            else:
                label = task.label_id(int(raw))
        guid = str(int(row["idx"])) if "idx" in row else str(row_number)
        examples.append(GlueExample(guid, texts[0], texts[1] if len(texts) > 1 else None, label))
    return examples


def load_glue(task: str | GlueTask, data_dir: os.PathLike | str,
              split: str = "dev") -> list[GlueExample]:
    """Examples of one split of a task.

    `data_dir` is the task's folder (holding e.g. `dev.tsv`), the GLUE root holding task
    folders (`MRPC/dev.tsv`), or the string "tfds" for a prepared TFDS `glue/<task>`.
    """
    task = get_task(task)
    if str(data_dir) == "tfds":
        return load_glue_tfds(task, split)
    root = files.resolve(data_dir)
    for candidate in (files.join(root, f"{split}.tsv"),
                      files.join(root, task.dir_name, f"{split}.tsv")):
        if files.isfile(candidate):
            return read_glue_tsv(candidate, task, split)
    raise FileNotFoundError(f"no {split}.tsv for task {task.name} in {root} "
                            f"or {files.join(root, task.dir_name)}")


def featurize_glue(examples: Sequence[GlueExample], tokenizer, max_seq_length: int = 128,
                   task: str | GlueTask | None = None) -> dict[str, np.ndarray]:
    """Model inputs `[CLS] a [SEP] (b [SEP])`, padded to `max_seq_length` with the pad id.

    Returns int32 arrays `input_ids`, `input_mask` (1 for real tokens, 0 for padding),
    `segment_ids` (0 for the first segment, 1 for the second) of shape [N, max_seq_length],
    and `labels` [N]: int32 label ids (-1 where unknown), or float32 scores (NaN where unknown)
    for a regression task. The regression case is taken from `task` when given, else from the
    examples' label types.
    """
    inputs = encode_sentences(tokenizer, [ex.text_a for ex in examples],
                              [ex.text_b for ex in examples], max_seq_length)
    if task is not None:
        regression = get_task(task).is_regression
    else:
        regression = any(isinstance(ex.label, float) for ex in examples)
    if regression:
        labels = np.array([np.nan if ex.label is None else ex.label for ex in examples],
                          dtype=np.float32)
    else:
        labels = np.array([-1 if ex.label is None else ex.label for ex in examples],
                          dtype=np.int32)
    return dict(inputs, labels=labels)


def prediction_names(task: str | GlueTask, predictions: Iterable[Any]) -> list[str]:
    """Predictions (label ids, or STS-B scores) as the GLUE server spells them."""
    task = get_task(task)
    values = np.asarray(list(predictions))
    if task.labels is None:
        if values.ndim != 1:
            raise ValueError(f"STS-B predictions must be a 1-D list of scores, got {values.shape}")
        return [f"{score:.3f}" for score in np.clip(values.astype(np.float64), 0.0, 5.0)]
    return [task.labels[task.label_id(v)] for v in values.tolist()]


def write_glue_submission(task: str | GlueTask, predictions: Sequence[Any],
                          out_dir: os.PathLike | str, split: str | None = None,
                          indices: Sequence[str] | None = None):
    """Writes the test-set predictions file the GLUE server expects (e.g. `MRPC.tsv`).

    Rows are `index<TAB>prediction` under an `index\\tprediction` header; predictions are label
    ids or names (or scores, clipped to [0, 5], for STS-B). `indices` defaults to 0..N-1;
    `split` picks MNLI's test_matched / test_mismatched file. Returns the written path.
    """
    task = get_task(task)
    files.makedirs(out_dir)
    path = files.join(files.resolve(out_dir), task.submission_file(split))
    names = prediction_names(task, predictions)
    if indices is None:
        indices = [str(i) for i in range(len(names))]
    if len(indices) != len(names):
        raise ValueError(f"{len(names)} predictions but {len(indices)} indices")
    lines = ["index\tprediction"] + [f"{i}\t{p}" for i, p in zip(indices, names)]
    files.write_text(path, "\n".join(lines) + "\n")
    return files.epath_of(path)


def read_glue_predictions(path: os.PathLike | str, task: str | GlueTask,
                          examples: Sequence[GlueExample] | None = None) -> list[float | int]:
    """Reads predictions for scoring: label ids (or STS-B scores), in the examples' order.

    Two layouts are accepted: a submission TSV (`index<TAB>prediction` rows under a header whose
    first field is "index" or "id"; rows are matched to the examples by index), or one
    prediction per line with no header, in the data file's order. Predictions are label names
    or label ids (or numbers for STS-B).
    """
    task = get_task(task)
    path = files.resolve(path)
    if not files.isfile(path):
        raise FileNotFoundError(f"predictions file not found: {path}")
    rows = list(_tsv_rows(path))
    if not rows:
        raise ValueError(f"{path}: file is empty")
    is_tsv = rows[0][1][0].strip().lower() in ("index", "id")
    values: dict[str, Any] = {}
    ordered = []
    for line, row in rows[1:] if is_tsv else rows:
        if len(row) != (2 if is_tsv else 1):
            raise ValueError(f"{path}:{line}: expected {2 if is_tsv else 1} tab-separated "
                             f"field(s), got {len(row)}")
        try:
            value = task.label_value(row[-1])
        except ValueError as e:
            raise ValueError(f"{path}:{line}: {e}") from None
        if is_tsv:
            if row[0] in values:
                raise ValueError(f"{path}:{line}: index {row[0]!r} appears twice")
            values[row[0]] = value
        ordered.append(value)
    if examples is None:
        return ordered
    if len(ordered) != len(examples):
        raise ValueError(f"{path}: {len(ordered)} predictions for {len(examples)} examples")
    if not is_tsv:
        return ordered
    missing = [ex.guid for ex in examples if ex.guid not in values]
    if missing:
        raise ValueError(f"{path}: no prediction for index {missing[0]!r}")
    return [values[ex.guid] for ex in examples]
