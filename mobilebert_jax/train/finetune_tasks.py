"""What differs between fine-tuning tasks, as one small object per kind (GLUE, SQuAD) that the
fine-tuning trainer (`finetune.py`) drives: the model and its head, the targets in a batch, the
loss, the data, the evaluation after each epoch and the outputs written with the best params.

A task is built from the config alone (`task_for`); `load(tokenizer)` reads its files. The
trainer hands `evaluate` and `write_outputs` a `predict(params, features) -> {output: array}`
that runs the deterministic model over all rows on every process.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax import files
from mobilebert_jax.console import log
from mobilebert_jax.data import finetune_input
from mobilebert_jax.data import glue as glue_data
from mobilebert_jax.data import squad as squad_data
from mobilebert_jax.metrics.glue import glue_metrics
from mobilebert_jax.metrics.squad import squad_scores
from mobilebert_jax.models.heads import (
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
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
        self.targets = {"labels": jnp.float32 if self.spec.is_regression else jnp.int32}
        self.data = None

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

    targets = {"start_positions": jnp.int32, "end_positions": jnp.int32}

    def __init__(self, config):
        self.config = config
        self.version = finetune_input.squad_version(config.version)
        self.name = f"squad{self.version}"
        self.best_metric = config.best_metric or "f1"
        self.data = None

    def model(self, model_config):
        return MobileBertForQuestionAnswering(model_config)

    def loss(self, out, batch):
        """(CE(start) + CE(end)) / 2 over all positions, over the real batch rows."""
        return losses.span_loss(out.start_logits, out.end_logits, batch["start_positions"],
                                batch["end_positions"], batch["weights"])

    def card(self) -> dict:
        return {"name": self.name, "kind": "question_answering", "labels": None,
                "text_columns": ["question", "context"]}

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


TASKS = {"finetune_glue": GlueTask, "finetune_squad": SquadTask}


def task_for(config):
    """The task object of a fine-tuning config (by its `trainer`)."""
    trainer = config.get("trainer")
    if trainer not in TASKS:
        raise ValueError(f"unknown fine-tuning trainer {trainer!r} "
                         f"(expected one of {', '.join(TASKS)})")
    return TASKS[trainer](config)
