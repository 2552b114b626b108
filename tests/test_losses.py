"""Tests of mobilebert_jax.train.losses against hand-worked values and numpy references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax.train import losses


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _softmax(x):
    return np.exp(_log_softmax(x))


def _normalize(h, eps):
    h = np.asarray(h, np.float64)
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    return (h - mu) / np.sqrt(var + eps)


RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------
# Pretraining
# ------------------------------------------------------------------------------------------


def test_mlm_loss_by_hand_ignores_zero_weight_slots():
    # Uniform logits over 4 classes: CE = log 4 everywhere; second slot has weight 0 and
    # logits that would give a huge loss, third slot is a confident correct prediction.
    logits = np.zeros((1, 3, 4), np.float32)
    logits[0, 1] = [-50.0, 0.0, 0.0, 50.0]
    logits[0, 2] = [0.0, 0.0, 30.0, 0.0]
    labels = np.array([[1, 0, 2]])
    weights = np.array([[1.0, 0.0, 1.0]])
    want = (math.log(4.0) + 0.0) / (2.0 + 1e-5)
    assert float(losses.mlm_loss(logits, labels, weights)) == pytest.approx(want, rel=1e-5)
    assert float(losses.mlm_accuracy(logits, labels, weights)) == pytest.approx(0.5)
    all_zero = losses.mlm_loss(logits, labels, np.zeros((1, 3)))
    assert float(all_zero) == 0.0 and float(losses.mlm_accuracy(logits, labels,
                                                                 np.zeros((1, 3)))) == 0.0


def test_mlm_loss_numpy_reference_in_bf16():
    logits = RNG.normal(size=(2, 5, 7)) * 3
    labels = RNG.integers(0, 7, size=(2, 5))
    weights = (RNG.random((2, 5)) > 0.3).astype(np.float32)
    ce = -np.take_along_axis(_log_softmax(logits), labels[..., None], -1)[..., 0]
    want = (weights * ce).sum() / (weights.sum() + 1e-5)
    got = losses.mlm_loss(jnp.asarray(logits, jnp.float32), labels, weights)
    assert got.dtype == jnp.float32
    assert float(got) == pytest.approx(want, rel=1e-5)
    got_bf16 = losses.mlm_loss(jnp.asarray(logits, jnp.bfloat16), labels, weights)
    assert got_bf16.dtype == jnp.float32
    assert float(got_bf16) == pytest.approx(want, rel=3e-2)
    correct = (logits.argmax(-1) == labels)
    assert float(losses.mlm_accuracy(logits, labels, weights)) == pytest.approx(
        (weights * correct).sum() / weights.sum(), rel=1e-6)


def test_nsp_loss_and_accuracy_by_hand():
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (1/2, 1/2), (3/4, 1/4)
    labels = np.array([0, 1])
    want = (math.log(2.0) + math.log(4.0)) / 2
    assert float(losses.nsp_loss(logits, labels)) == pytest.approx(want, rel=1e-6)
    assert float(losses.nsp_loss(logits, labels[:, None])) == pytest.approx(want, rel=1e-6)
    # argmax of a tie is class 0: first correct, second wrong.
    assert float(losses.nsp_accuracy(logits, labels)) == pytest.approx(0.5)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="mlm_loss"):
        losses.mlm_loss(np.zeros((2, 3, 4)), np.zeros((2, 4), int), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="weights"):
        losses.mlm_loss(np.zeros((2, 3, 4)), np.zeros((2, 3), int), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="fmt_loss"):
        losses.fmt_loss(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="alpha"):
        losses.soft_mlm_loss(np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), np.zeros((1, 2), int),
                             np.ones((1, 2)), alpha=1.5)
    with pytest.raises(ValueError, match="unknown weight"):
        losses.layer_transfer_loss(np.zeros((1, 2, 4)), np.zeros((1, 2, 4)), None, None, 1,
                                   weights={"kd": 1.0})


# ------------------------------------------------------------------------------------------
# Knowledge transfer
# ------------------------------------------------------------------------------------------


def test_soft_mlm_loss_reference_and_limits():
    student = RNG.normal(size=(2, 3, 6))
    teacher = RNG.normal(size=(2, 3, 6)) * 2
    labels = RNG.integers(0, 6, size=(2, 3))
    weights = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    y = 0.5 * np.eye(6)[labels] + 0.5 * _softmax(teacher)
    per = -(y * _log_softmax(student)).sum(-1)
    want = (weights * per).sum() / (weights.sum() + 1e-5)
    got = losses.soft_mlm_loss(student, teacher, labels, weights)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # alpha = 1 is the plain MLM loss.
    assert float(losses.soft_mlm_loss(student, teacher, labels, weights, alpha=1.0)) == (
        pytest.approx(float(losses.mlm_loss(student, labels, weights)), rel=1e-6))
    # No gradient reaches the teacher.
    g = jax.grad(lambda t: losses.soft_mlm_loss(student, t, labels, weights))(
        jnp.asarray(teacher, jnp.float32))
    assert float(jnp.abs(g).max()) == 0.0


def test_fmt_loss_includes_padding_and_uses_official_eps():
    h_t = RNG.normal(size=(2, 4, 8)) * 5 + 1
    h_s = RNG.normal(size=(2, 4, 8))
    h_s[1, 2:] = 0.0  # "padding" rows: normalize to 0, still counted
    want = ((_normalize(h_t, 1e-12) - _normalize(h_s, 1e-12)) ** 2).mean()
    assert float(losses.fmt_loss(h_t, h_s)) == pytest.approx(want, rel=1e-5)
    assert losses.FMT_EPS == 1e-12
    # Hand case: one token [1, -1] -> normalized [1, -1]; student [0, 0] -> [0, 0]; MSE = 1.
    assert float(losses.fmt_loss(np.array([[[1.0, -1.0]]]), np.zeros((1, 1, 2)))) == (
        pytest.approx(1.0, rel=1e-6))
    # Scale and shift of either side do not matter.
    assert float(losses.fmt_loss(3 * h_s + 2, h_s)) == pytest.approx(0.0, abs=1e-9)


def test_mean_var_losses_by_hand_and_all_teacher_layers():
    # Token a: teacher [1, 3] (mu 2, var 1), student [0, 0] (mu 0, var 0).
    # Token b: teacher [0, 0], student [2, 6] (mu 4, var 4).
    h_t = np.array([[[1.0, 3.0], [0.0, 0.0]]])
    h_s = np.array([[[0.0, 0.0], [2.0, 6.0]]])
    beta, gamma = losses.mean_var_losses(h_t, h_s)
    assert float(beta) == pytest.approx((4.0 + 16.0) / 2)
    assert float(gamma) == pytest.approx((1.0 + 4.0) / 2)
    # TF1 behaviour: the student is compared with each of the stacked teacher layers.
    stack = np.stack([h_t, h_s, np.zeros_like(h_t)])
    beta_all, gamma_all = losses.mean_var_losses(stack, h_s, all_teacher_layers=True)
    # Per layer: (10, 2.5), (0, 0), ((0 + 16)/2, (0 + 4)/2) -> mean over 3 layers.
    assert float(beta_all) == pytest.approx((10.0 + 0.0 + 8.0) / 3)
    assert float(gamma_all) == pytest.approx((2.5 + 0.0 + 2.0) / 3)
    with pytest.raises(ValueError, match="stacked"):
        losses.mean_var_losses(h_t, h_s, all_teacher_layers=True)


def test_attention_transfer_loss_reference_with_masked_keys():
    mask_bias = -10000.0 * (1.0 - np.array([1, 1, 1, 0], np.float32))  # last key padded
    s_t = RNG.normal(size=(2, 3, 4, 4)) + mask_bias
    s_s = RNG.normal(size=(2, 3, 4, 4)) + mask_bias
    want = (-(_softmax(s_t) * _log_softmax(s_s)).sum(-1)).mean()
    got = losses.attention_transfer_loss(s_t, s_s)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # Hand case: identical uniform rows over 2 keys -> log 2.
    assert float(losses.attention_transfer_loss(np.zeros((1, 1, 2, 2)),
                                                np.zeros((1, 1, 2, 2)))) == (
        pytest.approx(math.log(2.0), rel=1e-6))
    g = jax.grad(lambda t: losses.attention_transfer_loss(t, s_s))(jnp.asarray(s_t))
    assert float(jnp.abs(g).max()) == 0.0


def test_layer_transfer_loss_combines_official_weights():
    h_t, h_s = RNG.normal(size=(2, 3, 8)), RNG.normal(size=(2, 3, 8))
    s_t, s_s = RNG.normal(size=(2, 2, 3, 3)), RNG.normal(size=(2, 2, 3, 3))
    total, parts = losses.layer_transfer_loss(h_t, h_s, s_t, s_s, num_layers=24)
    fmt = ((_normalize(h_t, 1e-12) - _normalize(h_s, 1e-12)) ** 2).mean()
    at = (-(_softmax(s_t) * _log_softmax(s_s)).sum(-1)).mean()
    beta = ((h_t.mean(-1) - h_s.mean(-1)) ** 2).mean()
    gamma = np.abs(h_t.var(-1) - h_s.var(-1)).mean()
    for name, value in dict(fmt=fmt, at=at, beta=beta, gamma=gamma).items():
        assert float(parts[name]) == pytest.approx(value, rel=1e-5), name
    want = (100 * fmt + 1 * at + 5000 * beta + 5 * gamma) / 24
    assert float(total) == pytest.approx(want, rel=1e-5)
    # Zero AT weight: scores may be omitted; other weights keep defaults.
    total2, parts2 = losses.layer_transfer_loss(h_t, h_s, None, None, 1, weights={"at": 0})
    assert float(parts2["at"]) == 0.0
    assert float(total2) == pytest.approx(100 * fmt + 5000 * beta + 5 * gamma, rel=1e-5)
    # all_teacher_layers takes mean/var terms from the stack, FMT from the matching layer.
    stack = np.stack([h_s, h_t])
    _, parts3 = losses.layer_transfer_loss(h_t, h_s, s_t, s_s, 24, all_teacher_layers=True,
                                           h_t_all=stack)
    assert float(parts3["beta"]) == pytest.approx(beta / 2, rel=1e-5)
    assert float(parts3["fmt"]) == pytest.approx(fmt, rel=1e-5)
    with pytest.raises(ValueError, match="h_t_all"):
        losses.layer_transfer_loss(h_t, h_s, s_t, s_s, 24, all_teacher_layers=True)


# ------------------------------------------------------------------------------------------
# Fine-tuning
# ------------------------------------------------------------------------------------------


def test_classification_and_regression_by_hand():
    logits = np.array([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0]])  # p0 = 3/5; uniform
    labels = np.array([0, 2])
    want = (-math.log(0.6) + math.log(3.0)) / 2
    assert float(losses.classification_loss(logits, labels)) == pytest.approx(want, rel=1e-6)
    preds = np.array([[1.0], [2.0], [4.0]])
    targets = np.array([1.5, 2.0, 1.0])
    assert float(losses.regression_loss(preds, targets)) == pytest.approx((0.25 + 0 + 9) / 3)
    with pytest.raises(ValueError, match="regression_loss"):
        losses.regression_loss(np.zeros(3), np.zeros(4))
    # the fine-tuning trainer pads its last batch with rows of weight 0: they do not count
    w = np.array([1.0, 1.0, 0.0])
    assert float(losses.regression_loss(preds, targets, w)) == pytest.approx(0.25 / 2)
    loss = losses.classification_loss(np.concatenate([logits, logits[:1]]), np.array([0, 2, 1]), w)
    assert float(loss) == pytest.approx(want, rel=1e-6)


def test_span_loss_reference_over_all_positions():
    start, end = RNG.normal(size=(3, 6)), RNG.normal(size=(3, 6))
    sp, ep = np.array([0, 2, 5]), np.array([0, 4, 5])
    ce = lambda lg, p: -_log_softmax(lg)[np.arange(3), p].mean()  # noqa: E731
    want = (ce(start, sp) + ce(end, ep)) / 2
    assert float(losses.span_loss(start, end, sp, ep)) == pytest.approx(want, rel=1e-5)
    # Hand case: uniform over 4 positions -> log 4.
    z = np.zeros((2, 4))
    assert float(losses.span_loss(z, z, [1, 3], [2, 0])) == pytest.approx(math.log(4.0))
    only_first = -(_log_softmax(start)[0, sp[0]] + _log_softmax(end)[0, ep[0]]) / 2
    assert float(losses.span_loss(start, end, sp, ep, np.array([1.0, 0.0, 0.0]))) == \
        pytest.approx(only_first, rel=1e-5)
