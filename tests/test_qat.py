"""Quantization-aware fine-tuning (models/qat.py): the float parameter tree, int8 rounding in the
dense layers only, straight-through gradients, and a QAT-fine-tuned checkpoint that exports to
int8 TFLite."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mobilebert_jax import checkpoint
from mobilebert_jax.export import runtime, tflite
from mobilebert_jax.models import get_config
from mobilebert_jax.models.heads import MobileBertForSequenceClassification
from mobilebert_jax.models.qat import quantization_aware
from tests.helpers import TINY_MODEL, glue_args, run_main

# MobileBERT-shaped (NoNorm, bottlenecks, 4 stacked FFNs, ReLU), tiny.
STUDENT = get_config("mobilebert", **dict(TINY_MODEL, intermediate_size=32))


def _setup():
    model = MobileBertForSequenceClassification(STUDENT, 2)
    ids = jax.random.randint(jax.random.PRNGKey(0), (4, 16), 1, 64)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), ids)["params"])
    # NoNorm starts as the identity; give it and the weights some spread, as training would.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return model, quantization_aware(model), params, ids


def test_qat_keeps_the_float_tree_and_rounds_the_dense_layers_only():
    model, qat_model, params, ids = _setup()
    shapes = lambda m: jax.tree_util.tree_map(  # noqa: E731
        lambda x: (x.shape, x.dtype), jax.eval_shape(lambda: m.init(jax.random.PRNGKey(1), ids)))
    assert shapes(qat_model) == shapes(model)  # same paths, shapes, dtypes and annotations
    float_logits = model.apply({"params": params}, ids).logits
    qat_logits = qat_model.apply({"params": params}, ids).logits
    diff = float(jnp.abs(qat_logits - float_logits).max())
    assert 0 < diff < 0.1 * float(jnp.abs(float_logits).max())
    # The attention einsums stay float (as the int8 export keeps BATCH_MATMUL): quantizing them
    # too gives other logits.
    import qwix
    everything = qwix.quantize_model(model, qwix.QtProvider([qwix.QtRule(
        module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8)]))
    all_logits = everything.apply({"params": params}, ids).logits
    assert not np.allclose(all_logits, qat_logits, atol=1e-7)


def test_qat_gradients_pass_straight_through():
    model, qat_model, params, ids = _setup()
    labels = jnp.array([0, 1, 0, 1])

    def loss(m, p):
        logits = m.apply({"params": p}, ids).logits
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    g_float = jax.grad(lambda p: loss(model, p))(params)
    g_qat = jax.grad(lambda p: loss(qat_model, p))(params)
    for path in (("classifier", "kernel"), ("bert", "encoder", "layer_0", "attention", "self",
                                            "query", "kernel")):
        a, b = g_float, g_qat
        for k in path:
            a, b = a[k], b[k]
        cosine = float(jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
        assert float(jnp.linalg.norm(b)) > 0 and cosine > 0.9, (path, cosine)


@pytest.mark.slow
def test_qat_fine_tuning_exports_to_int8(tiny_checkpoint, glue_dir, tmp_path, capsys):
    float_dir, qat_dir = tmp_path / "float", tmp_path / "qat"
    assert run_main(glue_args(tiny_checkpoint, glue_dir, float_dir), capsys)[0] == 0
    rc, err = run_main(glue_args(tiny_checkpoint, glue_dir, qat_dir, "--config.qat=true"), capsys)
    assert rc == 0, err
    assert json.loads((qat_dir / "eval_results.json").read_text())["finished"]
    _, float_params = checkpoint.load_pretrained(str(float_dir))
    config, qat_params = checkpoint.load_pretrained(str(qat_dir))
    same_tree = jax.tree_util.tree_structure(float_params) == jax.tree_util.tree_structure(
        qat_params)
    assert same_tree and any(not np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(float_params), jax.tree_util.tree_leaves(qat_params)))
    out = tmp_path / "qat_int8.tflite"
    tflite.export_checkpoint(str(qat_dir), str(out), "int8", seq_len=16, num_calibration=8)
    runner = runtime.TFLiteModel(str(out))
    ids = np.full((1, 16), 5, np.int32)
    logits = runner(input_ids=ids, input_mask=np.ones_like(ids),
                    segment_ids=np.zeros_like(ids))["logits"]
    assert logits.shape == (1, 2) and np.isfinite(logits).all()
