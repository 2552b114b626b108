"""Tests of mobilebert_jax.train.optim against hand-worked values and numpy references."""
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax.core import FrozenDict

from mobilebert_jax.train import distill_stages, layer_multipliers, optim

# The official exclusion regexes for weight decay and layer adaptation.
OFFICIAL_EXCLUDE = ["teacher", "LayerNorm", "layer_norm", "bias", "FakeLayerNorm"]


def _nest(flat):
    tree = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _flatten(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(optim.path_names(p)): np.asarray(v) for p, v in leaves}


def _toy_flat(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {
        "bert/embeddings/word_embeddings": (5, 3),
        "bert/embeddings/FakeLayerNorm/gamma": (3,),
        "bert/encoder/layer_0/attention/self/query/kernel": (3, 4),
        "bert/encoder/layer_0/attention/self/query/bias": (4,),
        "bert/encoder/layer_0/output/FakeLayerNorm/beta": (4,),
        "bert/encoder/layer_0/zero/kernel": (2, 2),
        "cls/predictions/output_bias": (5,),
        "cls/predictions/transform/LayerNorm/gamma": (3,),
    }
    flat = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    flat["bert/encoder/layer_0/zero/kernel"][:] = 0.0
    return flat


def _official_lr(step, init, warmup, total, end):
    """The official create_optimizer schedule: polynomial decay, warm-up overriding it."""
    lr = (init - end) * (1.0 - min(step, total) / total) + end
    if warmup and step < warmup:
        lr = init * step / warmup
    return lr


def _official_steps(flat, grads_seq, lr_fn, wd, clip, layer_adaptation, b1=0.9, b2=0.999,
                    eps=1e-6, bias_correction=False):
    """Numpy float64 reference of the official AdamW / LAMB apply_gradients."""
    params = {k: v.astype(np.float64) for k, v in flat.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for step, grads in enumerate(grads_seq):
        grads = {k: g.astype(np.float64) for k, g in grads.items()}
        if clip:
            norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
            grads = {k: g * clip / max(norm, clip) for k, g in grads.items()}
        lr = lr_fn(step)
        for name in params:
            excluded = any(re.search(r, name) for r in OFFICIAL_EXCLUDE)
            m[name] = b1 * m[name] + (1 - b1) * grads[name]
            v[name] = b2 * v[name] + (1 - b2) * grads[name] ** 2
            if bias_correction:
                mh, vh = m[name] / (1 - b1 ** (step + 1)), v[name] / (1 - b2 ** (step + 1))
            else:
                mh, vh = m[name], v[name]
            update = mh / (np.sqrt(vh) + eps)
            if not excluded:
                update = update + wd * params[name]
            ratio = 1.0
            if layer_adaptation and not excluded:
                w_norm, u_norm = np.linalg.norm(params[name]), np.linalg.norm(update)
                ratio = w_norm / u_norm if (w_norm > 0 and u_norm > 0) else 1.0
            params[name] = params[name] - ratio * lr * update
    return params


def _run(tx, flat, grads_seq):
    params = jax.tree.map(jnp.asarray, _nest(flat))
    state = tx.init(params)
    step = jax.jit(tx.update)
    for grads in grads_seq:
        updates, state = step(jax.tree.map(jnp.asarray, _nest(grads)), state, params)
        params = optax.apply_updates(params, updates)
    return _flatten(params)


def _grads_seq(flat, n, scale=3.0):
    rng = np.random.default_rng(42)
    return [{k: (scale * rng.normal(size=x.shape)).astype(np.float32) for k, x in flat.items()}
            for _ in range(n)]


# ------------------------------------------------------------------------------------------
# Masks and paths
# ------------------------------------------------------------------------------------------


def test_decay_mask_follows_official_exclusions():
    flat = _toy_flat()
    flat["bert/encoder/layer_0/ffn_layer_0/intermediate/dense/kernel"] = np.ones((2, 2))
    flat["cls/seq_relationship/output_weights"] = np.ones((2, 3))
    flat["cls/predictions/extra_output_weights"] = np.ones((5, 2))
    flat["teacher/bert/encoder/layer_0/attention/self/query/kernel"] = np.ones((2, 2))
    mask = _flatten(optim.decay_mask(_nest(flat)))
    for name, value in mask.items():
        expected = not any(re.search(r, name) for r in OFFICIAL_EXCLUDE)
        assert bool(value) == expected, name
    assert mask["bert/embeddings/word_embeddings"] and not mask["cls/predictions/output_bias"]


def test_decay_mask_on_frozen_dict_and_boxed_leaves():
    boxed = {"bert": {"dense": {"kernel": nn.Partitioned(jnp.ones((2, 2)), ("embed", "mlp")),
                                "bias": nn.Partitioned(jnp.ones((2,)), ("mlp",))}}}
    mask = optim.decay_mask(boxed)
    assert isinstance(mask["bert"]["dense"]["kernel"], nn.Partitioned)
    assert mask["bert"]["dense"]["kernel"].value is True
    assert mask["bert"]["dense"]["bias"].value is False
    fmask = optim.decay_mask(FrozenDict({"LayerNorm": {"gamma": jnp.ones(2)},
                                         "k": {"kernel": jnp.ones(2)}}))
    assert fmask["LayerNorm"]["gamma"] is False and fmask["k"]["kernel"] is True
    # A full LAMB step runs on the boxed tree and skips decay / trust ratio on the bias.
    tx = optax.chain(optim.lamb_direction(weight_decay=0.5), optax.scale_by_learning_rate(0.1))
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, boxed), tx.init(boxed), boxed)
    # u = 0.5 w, trust ratio ||w|| / ||0.5 w|| = 2 -> update -0.1 * 2 * 0.5 = -0.1.
    np.testing.assert_allclose(updates["bert"]["dense"]["kernel"].value, -0.1)
    np.testing.assert_allclose(updates["bert"]["dense"]["bias"].value, 0.0)


def test_layer_index_of_path():
    assert optim.layer_index_of_path(("bert", "encoder", "layer_3", "attention", "kernel")) == 3
    assert optim.layer_index_of_path(("bert", "encoder", "layer_12", "ffn_layer_0", "k")) == 12
    assert optim.layer_index_of_path(("bert", "ffn_layer_0", "kernel")) is None
    assert optim.layer_index_of_path(("bert", "embeddings", "word_embeddings")) is None
    key_path = (jax.tree_util.DictKey("encoder"), jax.tree_util.DictKey("layer_7"))
    assert optim.layer_index_of_path(key_path) == 7


# ------------------------------------------------------------------------------------------
# Optimizers against the official update
# ------------------------------------------------------------------------------------------


def test_lamb_matches_official_update_with_schedule_and_clipping():
    flat = _toy_flat()
    grads_seq = _grads_seq(flat, 4)
    cfg = ml_collections.ConfigDict(dict(name="lamb", learning_rate=0.05, warmup_steps=2,
                                         total_steps=10, end_learning_rate=0.001,
                                         weight_decay=0.3, clip_norm=1.0))
    tx, schedule = optim.make_optimizer(cfg)
    got = _run(tx, flat, grads_seq)
    lr_fn = lambda s: _official_lr(s, 0.05, 2, 10, 0.001)  # noqa: E731
    want = _official_steps(flat, grads_seq, lr_fn, wd=0.3, clip=1.0, layer_adaptation=True)
    for name in flat:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=1e-6, err_msg=name)
    # Clipping was active and the zero kernel (ratio 1) moved.
    assert np.linalg.norm(np.concatenate([g.ravel() for g in grads_seq[0].values()])) > 1.0
    assert np.abs(got["bert/encoder/layer_0/zero/kernel"]).max() > 0
    for s in range(5):
        assert float(schedule(s)) == pytest.approx(lr_fn(s), rel=1e-6)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_adamw_matches_official_update(bias_correction):
    flat = _toy_flat(1)
    grads_seq = _grads_seq(flat, 3, scale=0.5)
    tx = optax.chain(optim.adamw_direction(weight_decay=0.2, bias_correction=bias_correction),
                     optax.scale_by_learning_rate(0.01))
    got = _run(tx, flat, grads_seq)
    want = _official_steps(flat, grads_seq, lambda s: 0.01, wd=0.2, clip=None,
                           layer_adaptation=False, bias_correction=bias_correction)
    for name in flat:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=1e-6, err_msg=name)


def test_adam_no_bias_correction_first_step_by_hand():
    # m = 0.1 g, v = 0.001 g^2 -> u = 0.1 g / (sqrt(0.001) |g| + eps).
    tx = optim.adamw_direction(weight_decay=0.0)
    g = {"w": jnp.array([2.0, -0.5, 0.0])}
    u, state = tx.update(g, tx.init(g), g)
    want = 0.1 * np.array([2.0, -0.5, 0.0]) / (np.sqrt(0.001) * np.array([2.0, 0.5, 0.0]) + 1e-6)
    np.testing.assert_allclose(u["w"], want, rtol=1e-6)
    np.testing.assert_allclose(state.nu["w"], 0.001 * np.array([[4.0, 0.25, 0.0]]), rtol=1e-6)


def _layered_flat(seed=0, layers=3):
    """Three layers of one block: every role stacks, with zero, decayed and undecayed tensors."""
    rng = np.random.default_rng(seed)
    flat = {}
    for i in range(layers):
        for name, shape in (("attention/self/query/kernel", (3, 4)),
                            ("attention/self/query/bias", (4,)),
                            ("ffn_0/intermediate/kernel", (4, 6)),
                            ("ffn_1/intermediate/kernel", (4, 6)),
                            ("output/FakeLayerNorm/gamma", (4,))):
            flat[f"bert/encoder/layer_{i}/{name}"] = rng.normal(size=shape).astype(np.float32)
    flat["bert/encoder/layer_1/ffn_0/intermediate/kernel"][:] = 0.0
    flat["cls/predictions/output_bias"] = rng.normal(size=(5,)).astype(np.float32)
    return flat


def _all_but_layer_1_query(params):
    """A custom mask that splits a stack: layer 1's query kernel neither decays nor adapts."""
    def keep(path, _):
        names = "/".join(optim.path_names(path))
        return optim.decays(optim.path_names(path)) and "layer_1/attention" not in names
    return jax.tree_util.tree_map_with_path(keep, params)


@pytest.mark.parametrize("name,bias_correction,mask", [
    ("lamb", False, None), ("lamb", True, None), ("adamw", False, None),
    ("lamb", False, _all_but_layer_1_query), ("adamw", True, _all_but_layer_1_query)])
def test_stacked_update_matches_optax_per_tensor(name, bias_correction, mask):
    """The stacked update against a per-tensor one (optax for clipping, decay and trust ratio),
    step after step, within 1e-6; also with a mask that differs inside one stack."""
    flat = _layered_flat()
    params = _nest({k: jnp.asarray(v) for k, v in flat.items()})
    grads_seq = _grads_seq(flat, 3, scale=0.5)
    ref_mask = optim.decay_mask if mask is None else mask
    # Reference per tensor: optax's clipping, Adam by hand, optax's decay and trust ratio.
    reference = optax.chain(
        optax.masked(optax.add_decayed_weights(0.3), ref_mask),
        *([optax.masked(optax.scale_by_trust_ratio(), ref_mask)] if name == "lamb" else []))
    tx = optim.direction(name, weight_decay=0.3, bias_correction=bias_correction, clip_norm=1.0,
                         weight_decay_mask=mask)
    clip = optax.clip_by_global_norm(1.0)
    state = tx.init(params)
    ref_m, ref_v = jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params)
    for t, grads in enumerate(grads_seq, start=1):
        g = _nest({k: jnp.asarray(v) for k, v in grads.items()})
        upd, state = tx.update(g, state, params)
        assert float(optax.global_norm(g)) > 1.0  # clipping is active
        g, _ = clip.update(g, clip.init(g))
        ref_m = jax.tree.map(lambda m, x: 0.9 * m + 0.1 * x, ref_m, g)
        ref_v = jax.tree.map(lambda v, x: 0.999 * v + 0.001 * x * x, ref_v, g)
        c1, c2 = (1 - 0.9 ** t, 1 - 0.999 ** t) if bias_correction else (1.0, 1.0)  # float64
        want = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + 1e-6), ref_m, ref_v)
        want, _ = reference.update(want, reference.init(params), params)
        got, want = _flatten(upd), _flatten(want)
        for key in flat:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7,
                                       err_msg=f"{key} step {t}")
        params = optax.apply_updates(params, jax.tree.map(lambda u: -0.01 * u, upd))
    moved = _flatten(params)
    # The moments are stored one stack per role: 3 layers of query kernels in one [3, 3, 4].
    assert state.mu["bert"]["encoder"]["layer_n"]["attention"]["self"]["query"]["kernel"].shape \
        == (3, 3, 4)
    assert state.nu["bert"]["encoder"]["layer_n"]["ffn_n"]["intermediate"]["kernel"].shape \
        == (6, 4, 6)
    assert np.abs(moved["bert/encoder/layer_1/ffn_0/intermediate/kernel"]).max() > 0


def test_stack_plan_groups_roles_and_tells_shapes_apart():
    tree = {"layer_0": {"k": jnp.zeros((2, 3)), "b": jnp.zeros(3)},
            "layer_1": {"k": jnp.zeros((2, 3)), "b": jnp.zeros(3)},
            "layer_2": {"k": jnp.zeros((3, 3)), "b": jnp.zeros(3)}}
    plan = dict(optim.stack_plan(tree))
    leaves = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    names = {k: ["/".join(optim.path_names(leaves[i])) for i in v] for k, v in plan.items()}
    assert names == {("layer_n", "b"): ["layer_0/b", "layer_1/b", "layer_2/b"],
                     ("layer_n", "k"): ["layer_0/k", "layer_1/k"],
                     ("layer_n", "k_1"): ["layer_2/k"]}
    tree = jax.tree.map(lambda x: x + jnp.arange(x.size).reshape(x.shape), tree)
    np.testing.assert_allclose(optim.global_norm(tree), optax.global_norm(tree), rtol=1e-6)


def test_unknown_optimizer_and_bad_config_raise():
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer(ml_collections.ConfigDict(dict(name="sgd")))
    with pytest.raises(ValueError, match="decay"):
        optim.make_optimizer(ml_collections.ConfigDict(dict(name="adamw", decay="cosine")))
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.make_optimizer(ml_collections.ConfigDict(dict(warmup_steps=20, total_steps=10)))
    with pytest.raises(ValueError, match="unknown optimizer"):
        distill_stages.transfer_optimizer(_transfer_cfg(optimizer="adagrad"),
                                          lambda step: jnp.ones(2))


# ------------------------------------------------------------------------------------------
# Schedules and gradient accumulation
# ------------------------------------------------------------------------------------------


def test_default_schedule_values():
    cfg = optim.default_optimizer_config()
    assert cfg.name == "lamb" and cfg.bias_correction is False and cfg.clip_norm == 1.0
    _, schedule = optim.make_optimizer(cfg)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5_000)) == pytest.approx(0.75e-3, rel=1e-6)
    # End of warm-up: on the decay line, 1.5e-3 - (1.5e-3 - 1.5e-7) * 10k / 500k.
    assert float(schedule(10_000)) == pytest.approx(1.470003e-3, rel=1e-6)
    assert float(schedule(250_000)) == pytest.approx(0.7500750e-3, rel=1e-5)
    assert float(schedule(500_000)) == pytest.approx(1.5e-7, rel=1e-4)
    assert float(schedule(600_000)) == pytest.approx(1.5e-7, rel=1e-4)
    cfg.decay_after_warmup = True
    _, schedule = optim.make_optimizer(cfg)
    assert float(schedule(10_000)) == pytest.approx(1.5e-3, rel=1e-6)
    assert float(schedule(500_000)) == pytest.approx(1.5e-7, rel=1e-4)
    cfg.decay = "constant"
    _, schedule = optim.make_optimizer(cfg)
    assert float(schedule(10_000)) == pytest.approx(1.5e-3) == float(schedule(400_000))



# ------------------------------------------------------------------------------------------
# Progressive knowledge transfer
# ------------------------------------------------------------------------------------------


def test_boundary_gate_by_hand():
    p = 1000
    gate = jax.jit(lambda t: layer_multipliers.pkt_boundary_gate(t, p))
    assert float(gate(0)) == 0.0
    assert float(gate(50)) == pytest.approx(0.5)  # 10 * 0.05 is the smaller branch
    assert float(gate(100)) == pytest.approx(0.1 * math.sqrt(0.9) + 0.9)  # 0.99487
    assert float(gate(500)) == pytest.approx(0.1 * math.sqrt(0.5) + 0.9)
    assert float(gate(999)) == pytest.approx(0.1 * math.sqrt(0.001) + 0.9, rel=1e-6)
    assert float(gate(1000)) == 0.0 and float(gate(3100)) == pytest.approx(gate(100))
    assert float(layer_multipliers.pkt_boundary_gate(7, 1)) == 1.0


def test_layer_multipliers_at_stage_boundaries():
    p, layers = 10, 4
    bg = lambda t: min(0.1 * math.sqrt(1 - t / p) + 0.9, 10 * t / p)  # noqa: E731
    mult = lambda s, **kw: np.asarray(layer_multipliers.pkt_layer_multipliers(s, p, layers, **kw))  # noqa
    np.testing.assert_allclose(mult(0), [0, 0, 0, 0])
    np.testing.assert_allclose(mult(5), [3 * bg(5), 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(mult(10), [0, 0, 0, 0])  # new stage starts at gate 0
    np.testing.assert_allclose(mult(11), [0.3 * bg(1), 3 * bg(1), 0, 0], rtol=1e-6)
    np.testing.assert_allclose(mult(29), [0.3 * bg(9), 0.3 * bg(9), 3 * bg(9), 0], rtol=1e-6)
    np.testing.assert_allclose(mult(47), [0.3 * bg(7)] * 3 + [3 * bg(7)], rtol=1e-6)  # clamped
    np.testing.assert_allclose(mult(29, hard_freeze=True), [0, 0, 3 * bg(9), 0], rtol=1e-6)
    np.testing.assert_allclose(mult(29, base=1.0, lower=0.5),
                               [0.5 * bg(9), 0.5 * bg(9), bg(9), 0], rtol=1e-6)


def _pkt_params():
    rng = np.random.default_rng(7)
    leaf = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    layer = lambda: {"attention": {"self": {"query": {"kernel": leaf(3, 3), "bias": leaf(3)}}},  # noqa
                     "output": {"FakeLayerNorm": {"gamma": leaf(3), "beta": leaf(3)}}}
    return {"bert": {"embeddings": {"word_embeddings": leaf(4, 3)},
                     "encoder": {f"layer_{i}": layer() for i in range(3)}}}


def _transfer_cfg(**overrides):
    return ml_collections.ConfigDict(dict(
        dict(learning_rate=1e-2, multiplier=3.0, lower_multiplier=0.1, hard_freeze=False,
             optimizer="lamb", weight_decay=0.01, clip_norm=1.0), **overrides))


@pytest.mark.parametrize("hard_freeze", [False, True])
def test_transfer_optimizer_moves_only_the_right_layers(hard_freeze):
    # The PKT optimizer the distillation trainer builds (distill_stages.transfer_optimizer).
    params = _pkt_params()
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * 0.7 + x, params)
    p, step, base_lr = 10, 15, 1e-2  # stage 1, t = 5
    cfg = _transfer_cfg(learning_rate=base_lr, hard_freeze=hard_freeze)
    tx = distill_stages.transfer_optimizer(
        cfg, distill_stages.transfer_multipliers(cfg, "pkt", 3, p))
    state = layer_multipliers.set_layer_multiplier_step(tx.init(params), step)
    upd, state = jax.jit(tx.update)(grads, state, params)
    new = optax.apply_updates(params, upd)
    enc, old_enc = new["bert"]["encoder"], params["bert"]["encoder"]
    same = lambda a, b: jax.tree.all(jax.tree.map(jnp.array_equal, a, b))  # noqa: E731
    assert same(enc["layer_2"], old_enc["layer_2"])
    assert same(new["bert"]["embeddings"], params["bert"]["embeddings"])
    assert same(enc["layer_0"], old_enc["layer_0"]) == hard_freeze
    # Reference: plain LAMB at lr * 3 * bg over the same gradients.
    ref_tx = optax.chain(optax.clip_by_global_norm(1.0), optim.lamb_direction(),
                         optax.scale_by_learning_rate(base_lr * 3 * (0.1 * math.sqrt(0.5) + 0.9)))
    ref, _ = ref_tx.update(grads, ref_tx.init(params), params)
    ref = ref["bert"]["encoder"]
    for a, b in zip(jax.tree.leaves(upd["bert"]["encoder"]["layer_1"]),
                    jax.tree.leaves(ref["layer_1"])):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    lower = 0.0 if hard_freeze else 0.1
    for a, b in zip(jax.tree.leaves(upd["bert"]["encoder"]["layer_0"]),
                    jax.tree.leaves(ref["layer_0"])):
        np.testing.assert_allclose(a, lower * b, rtol=1e-5, atol=1e-12)
    assert int(layer_multipliers.layer_multiplier_step(state)) == step + 1


def test_transfer_step_restore_and_reset():
    params = _pkt_params()
    cfg = _transfer_cfg()
    tx = distill_stages.transfer_optimizer(
        cfg, distill_stages.transfer_multipliers(cfg, "pkt", 3, 10))
    state = tx.init(params)
    assert int(layer_multipliers.layer_multiplier_step(state)) == 0
    grads = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(grads, state, params)
    assert int(layer_multipliers.layer_multiplier_step(state)) == 1
    moved = layer_multipliers.set_layer_multiplier_step(state, 20)
    assert int(layer_multipliers.layer_multiplier_step(moved)) == 20
    # At step 20 (a stage start) every multiplier is 0: nothing moves at all.
    upd, _ = tx.update(grads, moved, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(upd))
    fresh = layer_multipliers.reset_opt_state(tx, params, step=21)
    assert int(layer_multipliers.layer_multiplier_step(fresh)) == 21
    adam = [s for s in jax.tree.leaves(
        fresh, is_leaf=lambda s: isinstance(s, optim.StackedAdamState))
        if isinstance(s, optim.StackedAdamState)]
    assert len(adam) == 1 and all(float(jnp.abs(m).max()) == 0 for m in jax.tree.leaves(adam))


def test_pkt_multipliers_check_their_arguments():
    with pytest.raises(ValueError, match="steps_per_stage"):
        layer_multipliers.pkt_layer_multipliers(0, 0, 2)
