"""Metrics of sentence-level tasks on your own data, computed with scikit-learn and scipy.

| problem        | metrics                                                    |
|----------------|------------------------------------------------------------|
| classification | accuracy, macro_f1, mcc (Matthews correlation)             |
| multi_label    | micro_f1, macro_f1 (over labels), subset_accuracy          |
| regression     | pearson, spearman                                          |

Values are fractions (correlations in [-1, 1]).
"""
from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def _check_lengths(predictions, labels) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no examples to score")


def single_label_metrics(predictions, labels, num_labels: int) -> dict[str, float]:
    """Predicted and gold label ids [N]."""
    _check_lengths(predictions, labels)
    preds, golds = np.asarray(predictions), np.asarray(labels)
    return {"accuracy": float(skm.accuracy_score(golds, preds)),
            "macro_f1": float(skm.f1_score(golds, preds, labels=list(range(num_labels)),
                                           average="macro", zero_division=0.0)),
            "mcc": float(skm.matthews_corrcoef(golds, preds))}


def multi_label_metrics(predictions, labels) -> dict[str, float]:
    """Predicted and gold label sets as 0/1 matrices [N, num_labels]."""
    _check_lengths(predictions, labels)
    preds, golds = np.asarray(predictions).astype(int), np.asarray(labels).astype(int)
    return {"micro_f1": float(skm.f1_score(golds, preds, average="micro", zero_division=0.0)),
            "macro_f1": float(skm.f1_score(golds, preds, average="macro", zero_division=0.0)),
            "subset_accuracy": float(skm.accuracy_score(golds, preds))}


def regression_metrics(predictions, labels) -> dict[str, float]:
    """Predicted and gold scores [N]."""
    _check_lengths(predictions, labels)
    preds = np.asarray(predictions, dtype=np.float64).reshape(len(labels), -1)[:, 0]
    golds = np.asarray(labels, dtype=np.float64)
    if np.isnan(golds).any():
        raise ValueError("labels hold NaN (unlabelled examples cannot be scored)")
    return {"pearson": float(stats.pearsonr(preds, golds)[0]),
            "spearman": float(stats.spearmanr(preds, golds)[0])}
