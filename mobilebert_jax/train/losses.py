"""Losses and accuracies for pretraining, knowledge transfer and fine-tuning.

Pure jnp functions, computed in float32 whatever the input dtype:

* pretraining: ``mlm_loss`` / ``mlm_accuracy`` (weighted over the masked-LM slots),
  ``nsp_loss`` / ``nsp_accuracy``;
* distillation: ``soft_mlm_loss`` (MLM against alpha * one-hot + (1 - alpha) * teacher
  softmax), and the layer-wise transfer losses ``fmt_loss`` (feature-map transfer),
  ``mean_var_losses`` (per-token mean/variance transfer), ``attention_transfer_loss`` and
  their weighted sum ``layer_transfer_loss``;
* fine-tuning: ``classification_loss``, ``regression_loss``, ``span_loss`` (SQuAD).

The teacher side of every distillation loss is wrapped in ``jax.lax.stop_gradient``.
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import optax

Array = jax.Array

# Denominator guard of the official masked-LM loss: sum(w * ce) / (sum(w) + 1e-5).
MLM_WEIGHT_EPS = 1e-5
# The parameter-free normalization of the official feature-map transfer is TF1's
# contrib ``layer_norm`` (non-trainable gamma=1, beta=0) whose variance epsilon is 1e-12.
FMT_EPS = 1e-12
# Official transfer-loss factors (each divided by the number of layers).
DEFAULT_TRANSFER_WEIGHTS = {"fmt": 100.0, "at": 1.0, "beta": 5000.0, "gamma": 5.0}


def _f32(x) -> Array:
    return jnp.asarray(x).astype(jnp.float32)


def _check_logits_labels(logits: Array, labels: Array, what: str) -> None:
    logits_shape, labels_shape = jnp.shape(logits), jnp.shape(labels)
    if len(logits_shape) != len(labels_shape) + 1 or logits_shape[:-1] != labels_shape:
        raise ValueError(f"{what}: logits {logits_shape} must be labels {labels_shape} "
                         f"+ [classes]")


def _per_example_ce(logits: Array, labels: Array) -> Array:
    """-log softmax(logits)[label] for integer labels, float32."""
    log_probs = jax.nn.log_softmax(_f32(logits), axis=-1)
    labels = jnp.asarray(labels).astype(jnp.int32)
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def _weighted_mean(values: Array, weights: Array) -> Array:
    weights = _f32(weights)
    return jnp.sum(weights * values) / (jnp.sum(weights) + MLM_WEIGHT_EPS)


# --------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------


def mlm_loss(logits: Array, label_ids: Array, weights: Array) -> Array:
    """Masked-LM loss: sum(w * CE) / (sum(w) + 1e-5); logits [B,P,V], labels/weights [B,P].

    Slots with weight 0 (padding of ``max_predictions_per_seq``) do not count.
    """
    _check_logits_labels(logits, label_ids, "mlm_loss")
    if jnp.shape(weights) != jnp.shape(label_ids):
        raise ValueError(f"mlm_loss: weights {jnp.shape(weights)} must match labels "
                         f"{jnp.shape(label_ids)}")
    return _weighted_mean(_per_example_ce(logits, label_ids), weights)


def mlm_accuracy(logits: Array, label_ids: Array, weights: Array) -> Array:
    """Weighted masked-LM accuracy: sum(w * [argmax == label]) / sum(w) (0 if sum(w) == 0)."""
    _check_logits_labels(logits, label_ids, "mlm_accuracy")
    if jnp.shape(weights) != jnp.shape(label_ids):
        raise ValueError(f"mlm_accuracy: weights {jnp.shape(weights)} must match labels "
                         f"{jnp.shape(label_ids)}")
    correct = (jnp.argmax(logits, axis=-1) == label_ids).astype(jnp.float32)
    weights = _f32(weights)
    total = jnp.sum(weights)
    return jnp.where(total > 0, jnp.sum(weights * correct) / jnp.maximum(total, 1e-30), 0.0)


def _flat_labels(logits: Array, labels: Array, what: str) -> Array:
    """Labels [B] or [B, 1] for logits [B, C]."""
    labels = jnp.asarray(labels)
    if labels.ndim == 2 and labels.shape[-1] == 1:
        labels = labels[:, 0]
    if jnp.ndim(logits) != 2:
        raise ValueError(f"{what}: logits must be [batch, classes], got {jnp.shape(logits)}")
    _check_logits_labels(logits, labels, what)
    return labels


def nsp_loss(logits: Array, labels: Array) -> Array:
    """Next-sentence loss: mean cross-entropy; logits [B,2], labels [B] (0 = B follows A)."""
    return jnp.mean(_per_example_ce(logits, _flat_labels(logits, labels, "nsp_loss")))


def nsp_accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of next-sentence predictions equal to the labels."""
    labels = _flat_labels(logits, labels, "nsp_accuracy")
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


# --------------------------------------------------------------------------------------------
# Knowledge transfer
# --------------------------------------------------------------------------------------------


def soft_mlm_loss(student_logits: Array, teacher_logits: Array, label_ids: Array,
                  weights: Array, alpha: float = 0.5) -> Array:
    """Pre-training distillation MLM loss with soft targets.

    y = alpha * one_hot(label) + (1 - alpha) * softmax(teacher); per-slot loss
    -sum(y * log_softmax(student)); weighted as ``mlm_loss``. ``alpha`` is the official
    ``distill_ground_truth_ratio`` (alpha = 1 is the plain MLM loss).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"soft_mlm_loss: alpha must lie in [0, 1], got {alpha}")
    _check_logits_labels(student_logits, label_ids, "soft_mlm_loss")
    if jnp.shape(teacher_logits) != jnp.shape(student_logits):
        raise ValueError(f"soft_mlm_loss: teacher logits {jnp.shape(teacher_logits)} must "
                         f"match student logits {jnp.shape(student_logits)}")
    if jnp.shape(weights) != jnp.shape(label_ids):
        raise ValueError(f"soft_mlm_loss: weights {jnp.shape(weights)} must match labels "
                         f"{jnp.shape(label_ids)}")
    log_probs = jax.nn.log_softmax(_f32(student_logits), axis=-1)
    teacher_probs = jax.nn.softmax(_f32(jax.lax.stop_gradient(teacher_logits)), axis=-1)
    hard = -jnp.take_along_axis(log_probs, jnp.asarray(label_ids, jnp.int32)[..., None],
                                axis=-1)[..., 0]
    soft = -jnp.sum(teacher_probs * log_probs, axis=-1)
    return _weighted_mean(alpha * hard + (1.0 - alpha) * soft, weights)


def _moments(h: Array) -> tuple[Array, Array]:
    """Per-token mean and (population) variance over the feature axis, keepdims."""
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
    return mean, var


def normalize_features(h: Array, eps: float = FMT_EPS) -> Array:
    """Parameter-free per-token normalization over features: (h - mu) / sqrt(var + eps)."""
    h = _f32(h)
    mean, var = _moments(h)
    return (h - mean) * jax.lax.rsqrt(var + eps)


def _check_same_shape(a: Array, b: Array, what: str) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(f"{what}: teacher {jnp.shape(a)} and student {jnp.shape(b)} shapes differ")


def fmt_loss(h_teacher: Array, h_student: Array, eps: float = FMT_EPS) -> Array:
    """Feature-map transfer: MSE between the normalized teacher and student hidden states.

    Both are normalized per token over features by ``normalize_features``; the mean runs over
    all B*S*H elements, padded positions included (as the official ``mean_squared_error``).
    ``eps`` defaults to 1e-12, the variance epsilon of the TF1 ``layer_norm`` the official
    code applies (with non-trainable gamma=1, beta=0).
    """
    _check_same_shape(h_teacher, h_student, "fmt_loss")
    target = normalize_features(jax.lax.stop_gradient(h_teacher), eps)
    return jnp.mean(jnp.square(target - normalize_features(h_student, eps)))


def mean_var_losses(h_teacher: Array, h_student: Array,
                    all_teacher_layers: bool = False) -> tuple[Array, Array]:
    """(beta, gamma) = (mean((mu_t - mu_s)^2), mean(|var_t - var_s|)), per-token statistics.

    With ``all_teacher_layers`` ``h_teacher`` is all teacher hidden states stacked
    [L+1, B, S, H] and the student layer [B, S, H] is compared with every one of them by
    broadcasting, the mean running over the L+1 layers too (the official TF1 code does this
    by reducing over the list of all teacher layers; the TF2 port compares matching layers).
    """
    h_teacher = _f32(jax.lax.stop_gradient(h_teacher))
    h_student = _f32(h_student)
    if all_teacher_layers:
        if h_teacher.ndim != h_student.ndim + 1 or h_teacher.shape[1:] != h_student.shape:
            raise ValueError(f"mean_var_losses: stacked teacher states {h_teacher.shape} must "
                             f"be [layers] + student {h_student.shape}")
    else:
        _check_same_shape(h_teacher, h_student, "mean_var_losses")
    mean_t, var_t = _moments(h_teacher)
    mean_s, var_s = _moments(h_student)
    beta = jnp.mean(jnp.square(mean_t - mean_s))
    gamma = jnp.mean(jnp.abs(var_t - var_s))
    return beta, gamma


def attention_transfer_loss(scores_teacher: Array, scores_student: Array) -> Array:
    """Attention transfer: mean over batch, heads and query positions of
    -sum_keys softmax(teacher) * log_softmax(student).

    Inputs are the masked, scaled, pre-softmax scores [B, N, S, S]. The cross-entropy has
    the gradient of KL(teacher || student).
    """
    _check_same_shape(scores_teacher, scores_student, "attention_transfer_loss")
    teacher_probs = jax.nn.softmax(_f32(jax.lax.stop_gradient(scores_teacher)), axis=-1)
    student_log_probs = jax.nn.log_softmax(_f32(scores_student), axis=-1)
    return jnp.mean(-jnp.sum(teacher_probs * student_log_probs, axis=-1))


def layer_transfer_loss(h_t: Array, h_s: Array, scores_t: Optional[Array],
                        scores_s: Optional[Array], num_layers: int,
                        weights: Optional[Mapping[str, float]] = None,
                        all_teacher_layers: bool = False,
                        h_t_all: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
    """Weighted knowledge-transfer loss of one layer: (total, parts).

    total = sum_k weights[k] / num_layers * part_k over k in {'fmt', 'at', 'beta', 'gamma'};
    ``weights`` default to the official 100, 1, 5000, 5 (missing keys keep their default;
    pass num_layers=1 for undivided weights). ``parts`` holds the unweighted losses. A term
    with weight 0 is not computed (its part is 0), so the scores may be None when the 'at'
    weight is 0. With ``all_teacher_layers`` the mean/variance terms compare ``h_s`` with
    every layer of ``h_t_all`` [L+1, B, S, H] (TF1 behaviour); FMT always uses ``h_t``.
    """
    if int(num_layers) < 1:
        raise ValueError(f"layer_transfer_loss: num_layers must be >= 1, got {num_layers}")
    weights = dict(weights or {})
    unknown = set(weights) - set(DEFAULT_TRANSFER_WEIGHTS)
    if unknown:
        raise ValueError(f"layer_transfer_loss: unknown weight names {sorted(unknown)}; "
                         f"expected {sorted(DEFAULT_TRANSFER_WEIGHTS)}")
    factors = {k: float(weights.get(k, w)) / num_layers
               for k, w in DEFAULT_TRANSFER_WEIGHTS.items()}
    zero = jnp.zeros((), jnp.float32)
    parts = {k: zero for k in factors}
    if factors["fmt"]:
        parts["fmt"] = fmt_loss(h_t, h_s)
    if factors["at"]:
        if scores_t is None or scores_s is None:
            raise ValueError("layer_transfer_loss: attention scores are needed when the 'at' "
                             "weight is non-zero")
        parts["at"] = attention_transfer_loss(scores_t, scores_s)
    if factors["beta"] or factors["gamma"]:
        if all_teacher_layers:
            if h_t_all is None:
                raise ValueError("layer_transfer_loss: all_teacher_layers needs h_t_all "
                                 "[layers, B, S, H]")
            parts["beta"], parts["gamma"] = mean_var_losses(h_t_all, h_s, True)
        else:
            parts["beta"], parts["gamma"] = mean_var_losses(h_t, h_s)
    total = sum(factors[k] * parts[k] for k in factors)
    return total, parts


# --------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------


def _row_mean(values: Array, weights: Optional[Array]) -> Array:
    """Mean over the batch rows, or over the rows of weight 1 (padding rows weigh 0)."""
    if weights is None:
        return jnp.mean(values)
    weights = _f32(weights)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def classification_loss(logits: Array, labels: Array, weights: Optional[Array] = None) -> Array:
    """Cross-entropy; logits [B, C], integer labels [B]; optional row weights [B]."""
    return _row_mean(_per_example_ce(logits, _flat_labels(logits, labels,
                                                          "classification_loss")), weights)


def regression_loss(preds: Array, targets: Array, weights: Optional[Array] = None) -> Array:
    """Squared error; preds [B] or [B, 1] (e.g. STS-B), targets [B]; optional row weights."""
    preds, targets = _f32(preds), _f32(targets)
    if preds.ndim == 2 and preds.shape[-1] == 1:
        preds = preds[:, 0]
    if preds.shape != targets.shape:
        raise ValueError(f"regression_loss: preds {preds.shape} and targets {targets.shape} "
                         f"shapes differ")
    return _row_mean(jnp.square(preds - targets), weights)


def multi_label_loss(logits: Array, labels: Array, weights: Optional[Array] = None) -> Array:
    """Sigmoid binary cross-entropy, mean over the labels; logits and 0/1 labels [B, C];
    optional row weights [B]."""
    if jnp.shape(logits) != jnp.shape(labels):
        raise ValueError(f"multi_label_loss: logits {jnp.shape(logits)} and labels "
                         f"{jnp.shape(labels)} shapes differ")
    bce = optax.sigmoid_binary_cross_entropy(_f32(logits), _f32(labels))
    return _row_mean(jnp.mean(bce, axis=-1), weights)


def token_classification_loss(logits: Array, labels: Array,
                              weights: Optional[Array] = None) -> Array:
    """Cross-entropy over the labelled positions (label >= 0: a word's first piece); logits
    [B, S, C], labels [B, S] (-1 elsewhere); optional row weights [B]."""
    _check_logits_labels(logits, labels, "token_classification_loss")
    labels = jnp.asarray(labels)
    mask = _f32(labels >= 0)
    if weights is not None:
        mask = mask * _f32(weights)[:, None]
    ce = _per_example_ce(logits, jnp.maximum(labels, 0))
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def span_loss(start_logits: Array, end_logits: Array, start_positions: Array,
              end_positions: Array, weights: Optional[Array] = None) -> Array:
    """SQuAD span loss: (CE(start) + CE(end)) / 2, softmax over all S positions, mean over B
    (or over the rows of weight 1).

    Logits [B, S]; positions [B] (or [B, 1]); position 0 ([CLS]) is the no-answer target.
    """
    if jnp.shape(start_logits) != jnp.shape(end_logits):
        raise ValueError(f"span_loss: start {jnp.shape(start_logits)} and end "
                         f"{jnp.shape(end_logits)} logits shapes differ")
    start = _flat_labels(start_logits, start_positions, "span_loss")
    end = _flat_labels(end_logits, end_positions, "span_loss")
    return _row_mean(0.5 * (_per_example_ce(start_logits, start)
                            + _per_example_ce(end_logits, end)), weights)
