"""GLUE metrics per task, computed with scikit-learn and scipy.

| task                      | metrics                              |
|---------------------------|--------------------------------------|
| cola, ax                  | matthews_corrcoef                    |
| sst2, qnli, rte, wnli     | accuracy                             |
| mnli                      | accuracy (as accuracy_matched /      |
|                           | accuracy_mismatched given the split) |
| mrpc, qqp                 | accuracy, f1 (positive class "1")    |
| stsb (regression)         | pearson, spearman                    |

Values are fractions (accuracy and F1 in [0, 1], correlations in [-1, 1]); multiply by 100 to
compare with the GLUE leaderboard. Predictions are label ids (or logits [N, num_labels], reduced
by argmax) for classification, scores for STS-B; labels are label ids or STS-B scores.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

from mobilebert_jax.metrics.classification import regression_metrics


def _as_class_ids(values: Any, num_labels: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "iufb":
        raise ValueError(f"{what} must be numeric label ids, got dtype {array.dtype}")
    if array.ndim == 2 and array.shape[1] == num_labels:
        array = array.argmax(axis=-1)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a 1-D list of label ids, got shape {array.shape}")
    if array.size and not np.all(np.equal(np.mod(array, 1), 0)):
        raise ValueError(f"{what} must be integer label ids")
    array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= num_labels)]
    if bad.size:
        raise ValueError(f"{what} hold label id {int(bad[0])} outside 0..{num_labels - 1}")
    return array


def glue_metrics(task, predictions: Sequence[Any], labels: Sequence[Any],
                 split: str | None = None) -> dict[str, float]:
    """The task's metrics of `predictions` against `labels` (see the module docstring).

    `task` describes the task (`data.glue.GlueTask`: `name`, `metrics`, `num_labels`,
    `is_regression`).

    `split` only matters for MNLI: "dev_matched"/"test_matched" and
    "dev_mismatched"/"test_mismatched" name the accuracy key.
    """
    spec = task
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no examples to score")
    if spec.is_regression:
        return regression_metrics(predictions, labels)
    preds = _as_class_ids(predictions, spec.num_labels, "predictions")
    golds = _as_class_ids(labels, spec.num_labels, "labels")
    result: dict[str, float] = {}
    for name in spec.metrics:
        if name == "accuracy":
            result[name] = float(skm.accuracy_score(golds, preds))
        elif name == "f1":
            result[name] = float(skm.f1_score(golds, preds, pos_label=1, average="binary",
                                              zero_division=0.0))
        elif name == "matthews_corrcoef":
            result[name] = float(skm.matthews_corrcoef(golds, preds))
        else:  # pragma: no cover - the registry only names the metrics above
            raise ValueError(f"unknown metric {name!r}")
    if spec.name == "mnli" and split is not None:
        if split.endswith("mismatched"):
            result = {"accuracy_mismatched": result["accuracy"]}
        elif split.endswith("matched"):
            result = {"accuracy_matched": result["accuracy"]}
        else:
            raise ValueError(f"MNLI split {split!r} is neither matched nor mismatched")
    return result
