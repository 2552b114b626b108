"""What differs between fine-tuning tasks, as one small object per kind (GLUE, SQuAD, your own
labelled text, tagging) that the fine-tuning trainer (`finetune.py`) drives: the model and its
head, the targets in a batch, the loss, the data, the evaluation after each epoch and the
outputs written with the best params.

A task is built from the config alone (`task_for`); `load(tokenizer)` reads its files (the
label set of your own files comes from them, so their model is known once they are read). The
trainer hands `evaluate` and `write_outputs` a `predict(params, features) -> {output: array}`
that runs the deterministic model over all rows on every process.
"""
from __future__ import annotations

import json
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax import files
from mobilebert_jax.console import log
from mobilebert_jax.data import finetune_input, labelled_files
from mobilebert_jax.data import glue as glue_data
from mobilebert_jax.data import squad as squad_data
from mobilebert_jax.metrics import classification as classification_metrics
from mobilebert_jax.metrics import tagging as tagging_metrics
from mobilebert_jax.metrics.glue import glue_metrics
from mobilebert_jax.metrics.squad import squad_scores
from mobilebert_jax.models.heads import (
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
    MobileBertForTokenClassification,
)
from mobilebert_jax.train import losses

Predict = Callable[[object, dict], dict]


class GlueTask:
    """Sentence (pair) classification or regression on a GLUE task's files."""

    def __init__(self, config):
        self.config = config
        self.spec = finetune_input.glue_task(config.task)
        self.name = self.spec.name
        self.best_metric = config.best_metric or (
            "accuracy_matched" if self.name == "mnli" else self.spec.metrics[0])
        self.data = None

    def targets(self, seq_len: int) -> dict:
        """The training batch's target arrays: {name: (dtype, shape after the batch axis)}."""
        return {"labels": (jnp.float32 if self.spec.is_regression else jnp.int32, ())}

    def model(self, model_config):
        return MobileBertForSequenceClassification(model_config, self.spec.num_labels,
                                                   float(self.config.classifier_dropout))

    def loss(self, out, batch):
        """Cross-entropy (classification) or squared error (STS-B) over the real batch rows."""
        if self.spec.is_regression:
            return losses.regression_loss(out.logits, batch["labels"], batch["weights"])
        return losses.classification_loss(out.logits, batch["labels"], batch["weights"])

    def card(self) -> dict:
        """The task card's fields (checkpoint.TASK_CARD) that this task decides."""
        return {"name": self.name,
                "kind": "regression" if self.spec.is_regression else "classification",
                "labels": None if self.spec.is_regression else list(self.spec.labels),
                "text_columns": [c for c in (self.spec.text_a, self.spec.text_b) if c]}

    def load(self, tokenizer) -> dict[str, np.ndarray]:
        """Reads the task's files; returns the training features."""
        self.data = finetune_input.load_glue_data(self.config, tokenizer)
        return self.data.train.features

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        return logits[:, 0] if self.spec.is_regression else logits.argmax(-1)

    def evaluate(self, predict: Predict, params) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for split in self.data.dev:
            logits = predict(params, split.features)["logits"]
            metrics.update(glue_metrics(self.spec, self.predictions(logits),
                                        split.features["labels"],
                                        split=split.name if len(self.data.dev) > 1 else None))
        return metrics

    def write_outputs(self, predict: Predict, params, workdir: str, step: int) -> dict:
        """GLUE submission files for the test sets found, in `WORKDIR/submission/`."""
        written = []
        folder = files.join(workdir, "submission")
        for split in self.data.test:
            predictions = self.predictions(predict(params, split.features)["logits"])
            path = files.join(folder, self.spec.submission_file(split.name))
            if jax.process_index() == 0:
                glue_data.write_glue_submission(self.spec, predictions, folder, split=split.name,
                                                indices=[ex.guid for ex in split.examples])
                log(f"wrote {path} ({len(split.examples)} test predictions, best step {step})")
            written.append(str(path))
        return {"submission_files": written}


class SquadTask:
    """Extractive question answering (SQuAD v1.1 / v2.0) with the official metrics."""

    def __init__(self, config):
        self.config = config
        self.version = finetune_input.squad_version(config.version)
        self.name = f"squad{self.version}"
        self.best_metric = config.best_metric or "f1"
        self.data = None

    def model(self, model_config):
        return MobileBertForQuestionAnswering(model_config)

    def targets(self, seq_len: int) -> dict:
        return {"start_positions": (jnp.int32, ()), "end_positions": (jnp.int32, ())}

    def loss(self, out, batch):
        """(CE(start) + CE(end)) / 2 over all positions, over the real batch rows."""
        return losses.span_loss(out.start_logits, out.end_logits, batch["start_positions"],
                                batch["end_positions"], batch["weights"])

    def card(self) -> dict:
        c = self.config
        return {"name": self.name, "kind": "question_answering", "labels": None,
                "text_columns": ["question", "context"], "version": self.version,
                "doc_stride": int(c.doc_stride), "max_query_length": int(c.max_query_length),
                "n_best_size": int(c.n_best_size), "max_answer_length": int(c.max_answer_length),
                "null_score_diff_threshold": float(c.null_score_diff_threshold)}

    def load(self, tokenizer) -> dict[str, np.ndarray]:
        self.data = finetune_input.load_squad_data(self.config, tokenizer)
        return self.data.train.features

    def answers(self, predict: Predict, params, split):
        out = predict(params, split.features)
        c = self.config
        return squad_data.postprocess_squad(
            split.examples, split.features, out["start_logits"], out["end_logits"],
            n_best_size=int(c.n_best_size), max_answer_length=int(c.max_answer_length),
            version=self.version, null_score_diff_threshold=float(c.null_score_diff_threshold))

    def evaluate(self, predict: Predict, params) -> dict[str, float]:
        predictions, null_odds, _ = self.answers(predict, params, self.data.eval)
        return squad_scores(self.data.eval.squad_json, predictions,
                            null_odds if self.version == "2.0" else None,
                            version=self.version, warn_missing=False)

    def write_outputs(self, predict: Predict, params, workdir: str, step: int) -> dict:
        """`predictions.json` (and n-best, null odds) for the eval set in
        `WORKDIR/predictions/`, and for `predict_file` in `WORKDIR/test_predictions/`."""
        results = {}
        for split, folder in ((self.data.eval, "predictions"),
                              (self.data.test, "test_predictions")):
            if split is None:
                continue
            predictions, null_odds, nbest = self.answers(predict, params, split)
            out = files.join(workdir, folder)
            if jax.process_index() == 0:
                paths = squad_data.write_predictions(out, predictions, null_odds or None, nbest)
                log(f"wrote {paths['predictions']} ({len(predictions)} answers, best step {step})")
            results[f"{folder}_file"] = files.join(out, "predictions.json")
        return results


def output_scores(kind: str, logits: np.ndarray) -> np.ndarray:
    """A sentence-level model's scores from its logits: softmax (classification), sigmoid
    (multi-label), the value itself (regression)."""
    logits = np.asarray(logits, np.float64)
    if kind == "regression":
        return logits
    if kind == "multi_label":
        return 1.0 / (1.0 + np.exp(-logits))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def score_records(kind: str, labels, scores: np.ndarray) -> list[dict]:
    """One JSON-ready record per row of scores (`output_scores`, or an exported model's): the
    label and its score with every label's score (the labels at >= 0.5 for multi-label), or
    the score (regression)."""
    scores = np.asarray(scores, np.float64)
    if kind == "regression":
        return [{"score": float(v)} for v in scores[:, 0]]
    if kind == "multi_label":
        return [{"labels": [n for n, p in zip(labels, row) if p >= 0.5],
                 "scores": {n: float(p) for n, p in zip(labels, row)}} for row in scores]
    return [{"label": labels[int(row.argmax())], "score": float(row.max()),
             "scores": {n: float(p) for n, p in zip(labels, row)}} for row in scores]


def prediction_records(kind: str, labels, logits: np.ndarray) -> list[dict]:
    """`score_records` of a model's logits."""
    return score_records(kind, labels, output_scores(kind, logits))


def word_tags(logits: np.ndarray, word_index: np.ndarray, num_words: int,
              labels: Sequence[str]) -> list[str]:
    """One sentence's tag per word: the tag of its first piece (labels[0], "O", for words cut
    at the maximum length)."""
    tags = [labels[0]] * num_words
    for position in np.flatnonzero(word_index >= 0):
        tags[int(word_index[position])] = labels[int(logits[position].argmax())]
    return tags


class TextTask:
    """Your own labelled text (CSV/TSV/JSON Lines): single-label or multi-label classification
    of a text (pair), or regression."""

    def __init__(self, config):
        self.config = config
        self.kind = config.problem
        if self.kind not in labelled_files.PROBLEMS:
            raise ValueError(f"unknown problem {self.kind!r} (expected one of "
                             f"{', '.join(labelled_files.PROBLEMS)}, or token_classification)")
        self.name = config.task_name or "text"
        self.best_metric = config.best_metric or {
            "classification": "accuracy", "multi_label": "micro_f1",
            "regression": "pearson"}[self.kind]
        self.data = None

    @property
    def labels(self):
        return self.data.labels

    def model(self, model_config):
        return MobileBertForSequenceClassification(
            model_config, 1 if self.kind == "regression" else len(self.labels),
            float(self.config.classifier_dropout))

    def targets(self, seq_len: int) -> dict:
        if self.kind == "multi_label":
            return {"labels": (jnp.float32, (len(self.labels),))}
        return {"labels": (jnp.float32 if self.kind == "regression" else jnp.int32, ())}

    def loss(self, out, batch):
        if self.kind == "regression":
            return losses.regression_loss(out.logits, batch["labels"], batch["weights"])
        if self.kind == "multi_label":
            return losses.multi_label_loss(out.logits, batch["labels"], batch["weights"])
        return losses.classification_loss(out.logits, batch["labels"], batch["weights"])

    def card(self) -> dict:
        c = self.config
        return {"name": self.name, "kind": self.kind, "labels": self.labels,
                "text_columns": [col for col in (c.text_column, c.text_pair_column) if col]}

    def load(self, tokenizer) -> dict[str, np.ndarray]:
        self.data = finetune_input.load_text_data(self.config, tokenizer)
        labels = self.labels or []
        listed = f" ({', '.join(labels[:8])}{' ...' if len(labels) > 8 else ''})" if labels else ""
        log(f"{self.name}: {self.kind}, {len(labels)} labels{listed}, "
            f"{len(self.data.train.examples)} train / {len(self.data.dev.examples)} dev rows")
        return self.data.train.features

    def metrics(self, logits: np.ndarray, gold: np.ndarray) -> dict[str, float]:
        if self.kind == "regression":
            return classification_metrics.regression_metrics(logits[:, 0], gold)
        if self.kind == "multi_label":
            return classification_metrics.multi_label_metrics(logits >= 0.0, gold)
        return classification_metrics.single_label_metrics(logits.argmax(-1), gold,
                                                           len(self.labels))

    def evaluate(self, predict: Predict, params) -> dict[str, float]:
        dev = self.data.dev
        return self.metrics(predict(params, dev.features)["logits"], dev.features["labels"])

    def write_outputs(self, predict: Predict, params, workdir: str, step: int) -> dict:
        """`WORKDIR/test_predictions.jsonl` (one record per test row, as `predict` writes)."""
        test = self.data.test
        if test is None:
            return {}
        records = prediction_records(self.kind, self.labels,
                                     predict(params, test.features)["logits"])
        path = files.join(workdir, "test_predictions.jsonl")
        if jax.process_index() == 0:
            files.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                           for r in records))
            log(f"wrote {path} ({len(records)} test predictions, best step {step})")
        return {"test_predictions_file": path}


class TaggingTask:
    """Token classification (NER-style tagging) on CoNLL files; entity F1 as `seqeval`
    scores it."""

    kind = "token_classification"

    def __init__(self, config):
        self.config = config
        self.name = config.task_name or "tagging"
        self.best_metric = config.best_metric or "f1"
        self.data = None

    @property
    def labels(self):
        return self.data.labels

    def model(self, model_config):
        return MobileBertForTokenClassification(model_config, len(self.labels),
                                                float(self.config.classifier_dropout))

    def targets(self, seq_len: int) -> dict:
        return {"labels": (jnp.int32, (seq_len,))}

    def loss(self, out, batch):
        return losses.token_classification_loss(out.logits, batch["labels"], batch["weights"])

    def card(self) -> dict:
        return {"name": self.name, "kind": self.kind, "labels": self.labels,
                "text_columns": ["tokens"]}

    def load(self, tokenizer) -> dict[str, np.ndarray]:
        self.data = finetune_input.load_tagging_data(self.config, tokenizer)
        log(f"{self.name}: {len(self.labels)} tags ({', '.join(self.labels[:9])}), "
            f"{len(self.data.train.examples)} train / {len(self.data.dev.examples)} dev "
            f"sentences")
        return {k: v for k, v in self.data.train.features.items() if k != "word_index"}

    def tags(self, predict: Predict, params, split) -> list[list[str]]:
        logits = predict(params, split.features)["logits"]
        return [word_tags(logits[i], split.features["word_index"][i], len(s.words), self.labels)
                for i, s in enumerate(split.examples)]

    def evaluate(self, predict: Predict, params) -> dict[str, float]:
        dev = self.data.dev
        return tagging_metrics.entity_metrics([s.tags for s in dev.examples],
                                              self.tags(predict, params, dev))

    def write_outputs(self, predict: Predict, params, workdir: str, step: int) -> dict:
        """`WORKDIR/dev_predictions.conll` (token, gold tag, predicted tag) and, for a
        `test_file`, `WORKDIR/test_predictions.conll` (token, predicted tag)."""
        results = {}
        for split in (self.data.dev, self.data.test):
            if split is None:
                continue
            path = files.join(workdir, f"{split.name}_predictions.conll")
            tags = self.tags(predict, params, split)
            if jax.process_index() == 0:
                labelled_files.write_conll(path, split.examples, tags)
                log(f"wrote {path} ({len(tags)} sentences, best step {step})")
            results[f"{split.name}_predictions_file"] = path
        return results


TASKS = {"finetune_glue": GlueTask, "finetune_squad": SquadTask, "finetune_text": TextTask}


def task_for(config):
    """The task object of a fine-tuning config (by its `trainer`; a `finetune_text` config's
    `problem` token_classification is a tagging task)."""
    trainer = config.get("trainer")
    if trainer not in TASKS:
        raise ValueError(f"unknown fine-tuning trainer {trainer!r} "
                         f"(expected one of {', '.join(TASKS)})")
    if trainer == "finetune_text" and config.problem == "token_classification":
        return TaggingTask(config)
    return TASKS[trainer](config)
