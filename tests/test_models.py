"""Model family: presets and exact parameter counts, config validation and JSON sources, API
outputs, options (mask mode, bf16, remat, gathered MLM), logical axes, and the teacher against an
independent NumPy forward of the reference computation."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from mobilebert_jax.models import (
    MobileBertConfig,
    MobileBertForPreTraining,
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
    from_hf_config,
    from_official_json,
    get_config,
)
from tests.helpers import TINY_MODEL


def n_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def abstract_params(config, model_cls=MobileBertForPreTraining, **kw):
    model = model_cls(config, **kw)
    ids = jnp.zeros((1, 8), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))["params"]


@pytest.mark.parametrize("name,encoder,with_heads", [
    ("mobilebert", 24_581_888, 36_597_564),
    ("mobilebert_tiny", 15_485_696, None),
    ("ibbert_large", 294_205_184, None),
    ("bert_base", 108_891_648, None),
])
def test_exact_parameter_counts(name, encoder, with_heads):
    p = nn.meta.unbox(abstract_params(get_config(name)))
    assert n_params(p["bert"]["embeddings"]) + n_params(p["bert"]["encoder"]) == encoder
    if with_heads is not None:
        assert n_params(p["bert"]["embeddings"]) + n_params(p["bert"]["encoder"]) \
            + n_params(p["cls"]) == with_heads


def test_bert_base_with_pooler_and_no_opt_count():
    p = nn.meta.unbox(abstract_params(get_config("bert_base")))
    assert n_params(p["bert"]) == 109_482_240
    no_opt = nn.meta.unbox(abstract_params(get_config("mobilebert_no_opt")))
    assert n_params(no_opt["bert"]) == 24_581_888  # same shapes, other norm and activation


def test_every_parameter_carries_logical_axes():
    boxed = abstract_params(get_config("mobilebert_tiny", num_hidden_layers=2))
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for x in leaves:
        assert len(x.names) == len(x.value.shape)
    flat = traverse_util.flatten_dict(boxed, sep="/")
    q = flat["bert/encoder/layer_0/attention/self/query/kernel"]
    assert q.names == ("inner", "qkv")
    assert flat["bert/embeddings/word_embeddings"].names == ("vocab", "embedding")


def test_unknown_preset_and_contradictions():
    with pytest.raises(ValueError, match="unknown model preset 'mobilebert_huge'"):
        get_config("mobilebert_huge")
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        get_config("mobilebert", intra_bottleneck_size=130)
    with pytest.raises(ValueError, match="not divisible"):
        get_config("bert_base", hidden_size=100, embedding_size=100, intra_bottleneck_size=100)
    with pytest.raises(ValueError, match="hidden_act"):
        get_config("mobilebert", hidden_act="swishy")
    with pytest.raises(ValueError, match="mutually exclusive"):
        get_config("mobilebert", use_bottleneck_attention=True)
    with pytest.raises(ValueError, match="unknown model config field"):
        MobileBertConfig.from_dict({"hidden_sise": 3})


def test_official_json_configs(tmp_path):
    official = {  # the released MobileBERT config's keys
        "attention_probs_dropout_prob": 0.1, "hidden_act": "relu", "hidden_dropout_prob": 0.0,
        "embedding_size": 128, "hidden_size": 512, "initializer_range": 0.02,
        "intermediate_size": 512, "max_position_embeddings": 512, "num_attention_heads": 4,
        "num_hidden_layers": 24, "type_vocab_size": 2, "vocab_size": 30522,
        "trigram_input": True, "use_bottleneck": True, "intra_bottleneck_size": 128,
        "use_bottleneck_attention": False, "key_query_shared_bottleneck": True,
        "num_feedforward_networks": 4, "normalization_type": "no_norm",
        "classifier_activation": False}
    path = tmp_path / "mobilebert_config.json"
    path.write_text(json.dumps(official))
    assert from_official_json(str(path)) == get_config("mobilebert")
    bert = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
            "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 12,
            "type_vocab_size": 2, "vocab_size": 30522}
    assert from_official_json(bert) == get_config("bert_base")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        from_official_json(str(tmp_path / "nope.json"))


def test_hf_config_translation():
    hf = {"model_type": "mobilebert", "vocab_size": 30522, "hidden_size": 512,
          "num_hidden_layers": 24, "num_attention_heads": 4, "intermediate_size": 512,
          "hidden_act": "relu", "hidden_dropout_prob": 0.0, "embedding_size": 128,
          "trigram_input": True, "use_bottleneck": True, "intra_bottleneck_size": 128,
          "key_query_shared_bottleneck": True, "num_feedforward_networks": 4,
          "normalization_type": "no_norm", "classifier_activation": False}
    assert from_hf_config(hf) == get_config("mobilebert")
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        from_hf_config({**hf, "model_type": "gpt2"})


def test_config_json_round_trip(tmp_path):
    c = get_config("mobilebert_tiny", dtype="bfloat16", remat="dots_no_batch")
    c.to_json(str(tmp_path / "c.json"))
    assert MobileBertConfig.from_json_file(str(tmp_path / "c.json")) == c


def init(config, model_cls=MobileBertForPreTraining, seed=0, **kw):
    ids = jnp.ones((2, 10), jnp.int32)
    return nn.meta.unbox(model_cls(config, **kw).init(jax.random.PRNGKey(seed), ids))["params"]


def batch(seed=0, b=2, s=10, vocab=64):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (b, s)).astype(np.int32)
    mask = np.ones((b, s), np.int32)
    mask[1, 6:] = 0
    types = np.zeros((b, s), np.int32)
    types[:, 4:] = 1
    return ids, types, mask


def test_pretraining_outputs_api():
    c = get_config("mobilebert", **TINY_MODEL)
    params = init(c)
    ids, types, mask = batch()
    out = MobileBertForPreTraining(c).apply({"params": params}, ids, segment_ids=types,
                                            input_mask=mask, deterministic=True)
    assert len(out.hidden_states) == c.num_hidden_layers + 1
    assert len(out.attention_scores) == c.num_hidden_layers
    assert out.attention_scores[0].shape == (2, 4, 10, 10)
    assert out.sequence_output.shape == (2, 10, 32)
    assert out.pooled_output.shape == (2, 32)
    assert out.mlm_logits.shape == (2, 10, 64)
    assert out.nsp_logits.shape == (2, 2)
    # masked keys get the -10000 offset in the pre-softmax scores
    s = np.asarray(out.attention_scores[0])
    assert np.all(s[1, :, :, 6:] < -9000) and np.all(s[1, :, :, :6] > -9000)
    # the MLM logits at gathered positions equal the all-position logits there
    positions = np.array([[0, 3, 9], [1, 2, 5]], np.int32)
    gathered = MobileBertForPreTraining(c).apply({"params": params}, ids, types, mask,
                                                 masked_lm_positions=positions)
    full = np.asarray(out.mlm_logits)
    np.testing.assert_allclose(gathered.mlm_logits,
                               np.take_along_axis(full, positions[..., None], axis=1), atol=1e-5)
    # the tied embedding: changing the word table changes the logits of its column block
    p2 = jax.tree_util.tree_map(lambda x: x, params)
    p2["cls"]["predictions"]["extra_output_weights"] = \
        np.zeros_like(p2["cls"]["predictions"]["extra_output_weights"])
    out2 = MobileBertForPreTraining(c).apply({"params": p2}, ids, types, mask)
    assert not np.allclose(out2.mlm_logits, out.mlm_logits)


def test_fill_mask_mode_sets_minus_six_and_keeps_unmasked():
    c = get_config("mobilebert", **TINY_MODEL)
    params = init(c)
    ids, types, mask = batch()
    add = MobileBertForPreTraining(c).apply({"params": params}, ids, types, mask)
    fill = MobileBertForPreTraining(c.replace(attention_mask_mode="fill")).apply(
        {"params": params}, ids, types, mask)
    s = np.asarray(fill.attention_scores[0])
    assert np.all(s[1, :, :, 6:] == -6.0)
    # rows without padding are identical in both modes
    np.testing.assert_allclose(fill.hidden_states[-1][0], add.hidden_states[-1][0], atol=1e-5)


def test_dropout_and_determinism():
    c = get_config("ibbert_large", **TINY_MODEL)
    params = init(c)
    ids, types, mask = batch()
    model = MobileBertForPreTraining(c)
    a = model.apply({"params": params}, ids, types, mask, deterministic=True)
    b = model.apply({"params": params}, ids, types, mask, deterministic=False,
                    rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(a.sequence_output, b.sequence_output)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(64, 128, 129), (3, 5)])  # even and odd element counts
def test_dropout_layer_drops_the_rate_and_keeps_the_expectation(rate, shape):
    from mobilebert_jax.models.layers import Dropout

    x = jnp.ones(shape, jnp.float32)
    layer = Dropout(rate)
    y = np.asarray(layer.apply({}, x, deterministic=False,
                               rngs={"dropout": jax.random.PRNGKey(3)}))
    dropped = (y == 0).mean()
    n = x.size
    tol = 5 * math.sqrt(rate * (1 - rate) / n) + 1e-4
    assert abs(dropped - rate) < tol, (dropped, rate)
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - rate), rtol=1e-4)  # inverted scaling
    if n > 1000:
        assert abs(y.mean() - 1.0) < 0.01  # the expectation is kept
    again = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)})
    other = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(4)})
    np.testing.assert_array_equal(np.asarray(again), y)  # a pure function of the key
    if n > 1000:
        assert not np.array_equal(np.asarray(other), y)
    assert layer.apply({}, x, deterministic=True) is x
    np.testing.assert_array_equal(np.asarray(Dropout(0.0).apply(
        {}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)})), np.asarray(x))


def test_remat_and_bf16_options():
    c = get_config("mobilebert_tiny", **TINY_MODEL)
    params = init(c)
    ids, types, mask = batch()

    def loss(p, config):
        out = MobileBertForPreTraining(config).apply({"params": p}, ids, types, mask)
        return jnp.mean(out.mlm_logits ** 2)

    g = jax.grad(loss)(params, c)
    g_remat = jax.grad(loss)(params, c.replace(remat="full"))
    for x, y in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_remat)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    out32 = MobileBertForPreTraining(c).apply({"params": params}, ids, types, mask)
    out16 = MobileBertForPreTraining(c.replace(dtype="bfloat16")).apply(
        {"params": params}, ids, types, mask)
    assert out16.attention_scores[0].dtype == jnp.float32  # softmax inputs stay fp32
    assert out16.mlm_logits.dtype == jnp.float32
    rel = np.abs(out16.mlm_logits - out32.mlm_logits).max() / np.abs(out32.mlm_logits).max()
    assert 0 < rel < 0.05


def test_task_heads():
    c = get_config("mobilebert", **TINY_MODEL)
    ids, types, mask = batch()
    cls_params = init(c, MobileBertForSequenceClassification, num_labels=3)
    out = MobileBertForSequenceClassification(c, num_labels=3).apply(
        {"params": cls_params}, ids, types, mask)
    assert out.logits.shape == (2, 3)
    reg = init(c, MobileBertForSequenceClassification, num_labels=1)
    assert reg["classifier"]["kernel"].shape == (32, 1)
    qa_params = init(c, MobileBertForQuestionAnswering)
    span = MobileBertForQuestionAnswering(c).apply({"params": qa_params}, ids, types, mask)
    assert span.start_logits.shape == span.end_logits.shape == (2, 10)
    # the encoder subtree is shared in layout across all heads
    pre = init(c)
    assert jax.tree_util.tree_structure(pre["bert"]) == \
        jax.tree_util.tree_structure(cls_params["bert"])


def test_sequence_longer_than_positions_is_rejected():
    c = get_config("mobilebert", **TINY_MODEL)
    params = init(c)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        MobileBertForPreTraining(c).apply({"params": params}, jnp.ones((1, 20), jnp.int32))


# -- the teacher against an independent NumPy forward of reference §2 -----------------------------
def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _ln(x, g, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def numpy_ibbert_forward(p, ids, types, mask, heads):
    """IB-BERT: LayerNorm, tanh-gelu, attention on the 512-wide input, one FFN, bottlenecks."""
    f = {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(p, sep="/").items()}

    def lin(x, name):
        return x @ f[name + "/kernel"] + f[name + "/bias"]

    def norm(x, name):
        return _ln(x, f[name + "/gamma"], f[name + "/beta"])

    e = f["bert/embeddings/word_embeddings"][ids]
    z = np.zeros_like(e[:, :1])
    e = np.concatenate([np.concatenate([e[:, 1:], z], 1), e, np.concatenate([z, e[:, :-1]], 1)], -1)
    x = lin(e, "bert/embeddings/embedding_transformation")
    x = x + f["bert/embeddings/position_embeddings"][: ids.shape[1]] \
        + f["bert/embeddings/token_type_embeddings"][types]
    x = norm(x, "bert/embeddings/LayerNorm")
    hidden = [x]
    i = 0
    while f"bert/encoder/layer_{i}/attention/self/query/kernel" in f:
        pre = f"bert/encoder/layer_{i}/"
        b = norm(lin(x, pre + "bottleneck/input/dense"), pre + "bottleneck/input/LayerNorm")
        q, k, v = (lin(x, pre + f"attention/self/{n}") for n in ("query", "key", "value"))
        bsz, s, d = q.shape
        hd = d // heads
        split = lambda t: t.reshape(bsz, s, heads, hd).transpose(0, 2, 1, 3)  # noqa: E731
        scores = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(hd)
        scores = scores - 10000.0 * (1 - mask[:, None, None, :])
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ split(v)).transpose(0, 2, 1, 3).reshape(bsz, s, d)
        a = norm(lin(ctx, pre + "attention/output/dense") + b, pre + "attention/output/LayerNorm")
        o = lin(_gelu_tanh(lin(a, pre + "intermediate/dense")), pre + "output/dense")
        o = norm(o + a, pre + "output/LayerNorm")
        x = norm(lin(o, pre + "output/bottleneck/dense") + x, pre + "output/bottleneck/LayerNorm")
        hidden.append(x)
        i += 1
    pooled = np.tanh(lin(x[:, 0], "bert/pooler/dense"))
    t = _ln(_gelu_tanh(lin(x, "cls/predictions/transform/dense")),
            f["cls/predictions/transform/LayerNorm/gamma"],
            f["cls/predictions/transform/LayerNorm/beta"])
    w = np.concatenate([f["bert/embeddings/word_embeddings"],
                        f["cls/predictions/extra_output_weights"]], 1)
    mlm = t @ w.T + f["cls/predictions/output_bias"]
    nsp = (pooled @ f["cls/seq_relationship/output_weights"].T
           + f["cls/seq_relationship/output_bias"])
    return np.stack(hidden), mlm, nsp


def test_teacher_matches_numpy_reference():
    c = get_config("ibbert_large", **dict(TINY_MODEL, num_hidden_layers=3,
                                          intermediate_size=48, intra_bottleneck_size=48))
    params = init(c, seed=3)
    # move every parameter away from its init so that norms and biases matter
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(0)
    leaves = [np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32)
              for x in leaves]
    params = jax.tree_util.tree_unflatten(tree, leaves)
    ids, types, mask = batch(vocab=64)
    out = MobileBertForPreTraining(c).apply({"params": params}, ids, types, mask)
    hidden, mlm, nsp = numpy_ibbert_forward(params, ids, types, mask, c.num_attention_heads)
    np.testing.assert_allclose(np.stack(out.hidden_states), hidden, atol=1e-5)
    np.testing.assert_allclose(out.mlm_logits, mlm, atol=1e-5)
    np.testing.assert_allclose(out.nsp_logits, nsp, atol=1e-5)
