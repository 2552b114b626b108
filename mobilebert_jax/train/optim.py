"""Optimizers and learning-rate schedules (the per-layer multipliers of progressive transfer are
in `layer_multipliers.py`).

What lives here:

* ``lamb_direction`` and ``adamw_direction`` (by name: ``direction``): the update directions of
  the official TF1 MobileBERT optimizers (Adam moments *without* bias correction, weight decay
  added to the Adam direction, LAMB trust ratio ||w|| / ||u||); the learning rate scales them.
  Both are ``stacked_adam``, which updates the same tensor of every layer as one stack
  (``stack_plan``; the moments are stored stacked, ``stacked_slot_shardings`` shards them).
* ``decay_mask``: which parameters get weight decay (and LAMB layer adaptation).
* ``warmup_linear_decay_schedule``, ``make_optimizer`` and ``default_optimizer_config``: the
  optax chain (global-norm clipping, optimizer, gradient accumulation) built from a config.

Masks and layer indices are computed from parameter paths, so they work on plain nested
dicts, ``FrozenDict`` and trees whose leaves are boxed in ``nn.Partitioned``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.core import meta

ScalarOrSchedule = Union[float, optax.Schedule]
MaskOrFn = Union[Any, Callable[[Any], Any]]

_LAYER_RE = re.compile(r"layer_(\d+)")
# Path components that mark a normalization module (LayerNorm, NoNorm named FakeLayerNorm).
_NORM_MARKERS = ("LayerNorm", "layer_norm")
_NO_DECAY_LEAVES = ("gamma", "beta")

# --------------------------------------------------------------------------------------------
# Parameter paths and masks
# --------------------------------------------------------------------------------------------


def _key_name(key: Any) -> str:
    """The name of one key-path entry (dict key, attribute, sequence index)."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
    """A jax key path as a tuple of strings, e.g. ('bert', 'encoder', 'layer_3', ...)."""
    return tuple(_key_name(k) for k in path)


def _is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)


def _map_params_by_path(fn: Callable[[tuple[str, ...]], Any], params: Any) -> Any:
    """Maps ``fn(path_names)`` over the leaves of ``params``; boxed leaves keep their box."""

    def visit(path, leaf):
        value = fn(path_names(path))
        return leaf.replace_boxed(value) if _is_box(leaf) else value

    return jax.tree_util.tree_map_with_path(visit, params, is_leaf=_is_box)


def decays(names: Sequence[str]) -> bool:
    """Whether the parameter at ``names`` gets weight decay (the official exclusion list).

    Excluded: everything under a top-level ``teacher`` collection, norm parameters
    (``gamma``/``beta``, or anything inside a module whose name contains ``LayerNorm`` or
    ``layer_norm``, which covers ``FakeLayerNorm``) and biases (``bias``, ``output_bias``).
    Kernels, embeddings and ``output_weights``/``extra_output_weights`` decay.
    """
    if not names:
        return True
    if names[0] == "teacher":
        return False
    leaf = names[-1]
    if leaf in _NO_DECAY_LEAVES or "bias" in leaf:
        return False
    return not any(marker in n for n in names[:-1] for marker in _NORM_MARKERS)


def decay_mask(params: Any) -> Any:
    """Boolean tree: True for kernels/embeddings, False for norm gamma/beta and biases."""
    return _map_params_by_path(decays, params)


def layer_index_of_path(path: Sequence[Any]) -> Optional[int]:
    """The encoder layer index ``i`` of a path containing a ``layer_{i}`` component, else None.

    Accepts a tuple of strings or a jax key path. Only a whole component matches, so
    ``ffn_layer_0`` is not a layer index.
    """
    names = path if all(isinstance(n, str) for n in path) else path_names(path)
    for name in names:
        match = _LAYER_RE.fullmatch(name)
        if match:
            return int(match.group(1))
    return None


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------


def stack_plan(tree: Any) -> list[tuple[tuple[str, ...], list[int]]]:
    """How the optimizer stacks parameters: [(name of the stack, indices of its leaves)].

    One stack per role, shape and dtype, where a role is a leaf's path with its numbers left
    out (``layer_3/ffn_2/kernel`` and ``layer_7/ffn_0/kernel`` are both ``layer_n/ffn_n/
    kernel``): the same tensor in every layer, which has one shape and one sharding. The name
    is that role's path (a suffix tells apart one role of two shapes). Leaves are arrays or
    ``ShapeDtypeStruct``.
    """
    path_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    groups: dict[Any, list[int]] = {}
    for i, (path, leaf) in enumerate(path_leaves):
        role = tuple(re.sub(r"\d+", "n", name) for name in path_names(path)) or ("value",)
        groups.setdefault((role, tuple(leaf.shape), str(leaf.dtype)), []).append(i)
    plan, taken = [], set()
    for (role, _, _), index in groups.items():
        name, k = role, 1
        while name in taken:
            name, k = role[:-1] + (f"{role[-1]}_{k}",), k + 1
        taken.add(name)
        plan.append((name, index))
    return plan


def _nest(plan, values) -> dict:
    out: dict = {}
    for (name, _), value in zip(plan, values):
        node = out
        for part in name[:-1]:
            node = node.setdefault(part, {})
        node[name[-1]] = value
    return out


def _lookup(tree: dict, name: tuple[str, ...]) -> Any:
    for part in name:
        tree = tree[part]
    return tree


class StackedAdamState(NamedTuple):
    """Adam's moments (float32; the official ``adam_m``/``adam_v`` slots), one ``[n, *shape]``
    stack per entry of ``stack_plan(params)`` (a nested dict named after the stacks), and the
    update count (for bias correction)."""
    count: jax.Array
    mu: Any
    nu: Any


def _mask_flags(mask: MaskOrFn, params: Any, n: int) -> list[bool]:
    """The leaves of a mask (True, False, a tree of bools or a function of the params) as
    Python bools, known when the update is traced."""
    if mask is True or mask is False:
        return [mask] * n
    tree = mask(params) if callable(mask) else mask
    flags = [bool(x) for x in jax.tree.leaves(tree)]
    if len(flags) != n:
        raise ValueError(f"optimizer mask has {len(flags)} leaves, the parameters {n}")
    return flags


def _per_slice(flags: list[bool], ndim: int):
    """Static True/False when every slice of a stack agrees, else a [n, 1, ...] float mask."""
    if all(flags) or not any(flags):
        return flags[0]
    return jnp.asarray(flags, jnp.float32).reshape((len(flags),) + (1,) * (ndim - 1))


def _stacks(tree: Any, plan) -> list[jax.Array]:
    leaves = jax.tree.leaves(tree)
    return [jnp.stack([leaves[i] for i in index]) for _, index in plan]


def global_norm(tree: Any) -> jax.Array:
    """``optax.global_norm`` summed over the ``stack_plan`` stacks: one reduction per stack
    (in a training step XLA shares the stacks with the optimizer's)."""
    stacks = _stacks(tree, stack_plan(tree))
    return jnp.sqrt(sum(jnp.sum(jnp.square(s.astype(jnp.float32))) for s in stacks))


def stacked_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                 bias_correction: bool = False, weight_decay: float = 0.0,
                 weight_decay_mask: MaskOrFn = False,
                 trust_ratio_mask: MaskOrFn = False,
                 clip_norm: Optional[float] = None) -> optax.GradientTransformation:
    """Global-norm clipping (``clip_norm``; None or 0 = off) + the Adam direction + decoupled
    weight decay (where ``weight_decay_mask``) + LAMB's per-tensor trust ratio ||w|| / ||u||
    (where ``trust_ratio_mask``), many tensors at a time.

    Per tensor this is ``chain(clip_by_global_norm, scale_by_adam, masked(add_decayed_weights),
    masked(scale_by_trust_ratio))``, with the official TF1 Adam (no bias correction). The
    update stacks the gradients and parameters of each ``stack_plan`` entry and updates each
    stack in one go, the trust ratio from norms over each slice, and keeps the moments stacked:
    on the 24-layer models some 25 times fewer (and larger) kernels than one update per tensor.
    """
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"Adam betas must lie in [0, 1), got b1={b1}, b2={b2}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if clip_norm is not None and clip_norm < 0:
        raise ValueError(f"clip_norm must be >= 0 (0 or None = off), got {clip_norm}")

    def init_fn(params):
        plan = stack_plan(params)
        leaves = jax.tree.leaves(params)

        def zeros():  # new arrays for each moment: a donated state may not share buffers
            return _nest(plan, [jnp.zeros((len(index),) + tuple(leaves[index[0]].shape),
                                          jnp.float32) for _, index in plan])

        return StackedAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("this optimizer needs the params: pass them to its update")
        grads, treedef = jax.tree.flatten(updates)
        weights = treedef.flatten_up_to(params)
        n = len(grads)
        decay = _mask_flags(weight_decay_mask, params, n) if weight_decay else [False] * n
        trust = _mask_flags(trust_ratio_mask, params, n)
        count = optax.safe_increment(state.count)
        if bias_correction:  # 1 - b^t as -expm1(t log b): float32's 1 - b ** t is off by up to
            # 1e-4 relative for b2 = 0.999 in the first steps
            t = count.astype(jnp.float32)
            c1, c2 = -jnp.expm1(t * math.log(b1)), -jnp.expm1(t * math.log(b2))
        new_updates = [None] * n
        plan = stack_plan(updates)
        stacks = [g.astype(jnp.float32) for g in _stacks(updates, plan)]
        if clip_norm:  # as optax.clip_by_global_norm
            norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in stacks))
            stacks = [jnp.where(norm < clip_norm, g, (g / norm) * clip_norm) for g in stacks]
        mus, nus = [], []
        for (name, index), g in zip(plan, stacks):
            mu = b1 * _lookup(state.mu, name) + (1.0 - b1) * g
            nu = b2 * _lookup(state.nu, name) + (1.0 - b2) * jnp.square(g)
            mus.append(mu)
            nus.append(nu)
            if bias_correction:
                u = (mu / c1) / (jnp.sqrt(nu / c2) + eps)
            else:
                u = mu / (jnp.sqrt(nu) + eps)
            decays_ = _per_slice([decay[i] for i in index], u.ndim)
            trusts = _per_slice([trust[i] for i in index], u.ndim)
            if decays_ is not False or trusts is not False:
                w = jnp.stack([weights[i] for i in index]).astype(jnp.float32)
            if decays_ is not False:
                u = u + (weight_decay if decays_ is True else weight_decay * decays_) * w
            if trusts is not False:
                axes = tuple(range(1, u.ndim))
                w_norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=axes, keepdims=True))
                u_norm = jnp.sqrt(jnp.sum(jnp.square(u), axis=axes, keepdims=True))
                ratio = jnp.where((w_norm == 0) | (u_norm == 0), 1.0, w_norm / u_norm)
                u = u * (ratio if trusts is True else jnp.where(trusts > 0, ratio, 1.0))
            for j, i in enumerate(index):
                new_updates[i] = u[j].astype(grads[i].dtype)
        return treedef.unflatten(new_updates), StackedAdamState(
            count=count, mu=_nest(plan, mus), nu=_nest(plan, nus))

    return optax.GradientTransformation(init_fn, update_fn)


def stacked_slot_shardings(params: Any, param_shardings: Any, replicated: Any
                           ) -> StackedAdamState:
    """The shardings of a ``StackedAdamState`` of ``params``: each moment stack sharded like
    the parameters in it, the stacking axis unsharded; the count ``replicated``."""
    members = jax.tree.leaves(param_shardings)

    def stacked(sharding):
        spec = jax.sharding.PartitionSpec(None, *sharding.spec)
        return jax.sharding.NamedSharding(sharding.mesh, spec)

    plan = stack_plan(params)
    slots = _nest(plan, [stacked(members[index[0]]) for _, index in plan])
    return StackedAdamState(count=replicated, mu=slots, nu=slots)


def lamb_direction(weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-6, bias_correction: bool = False,
                   weight_decay_mask: MaskOrFn = None, trust_ratio_mask: MaskOrFn = None,
                   clip_norm: Optional[float] = None) -> optax.GradientTransformation:
    """LAMB without the learning rate: trust_ratio(w, u) * u with u = adam + wd * w, on
    gradients clipped to global norm ``clip_norm`` (None or 0 = unclipped).

    ``weight_decay_mask`` defaults to ``decay_mask``; ``trust_ratio_mask`` defaults to the
    weight-decay mask (the official code excludes the same parameters from both).
    """
    weight_decay_mask = decay_mask if weight_decay_mask is None else weight_decay_mask
    trust_ratio_mask = weight_decay_mask if trust_ratio_mask is None else trust_ratio_mask
    return stacked_adam(b1, b2, eps, bias_correction, weight_decay, weight_decay_mask,
                        trust_ratio_mask, clip_norm)


def adamw_direction(weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999,
                    eps: float = 1e-6, bias_correction: bool = False,
                    weight_decay_mask: MaskOrFn = None,
                    clip_norm: Optional[float] = None) -> optax.GradientTransformation:
    """AdamW without the learning rate: u = adam + wd * w (decay masked by ``decay_mask``), on
    gradients clipped to global norm ``clip_norm`` (None or 0 = unclipped)."""
    weight_decay_mask = decay_mask if weight_decay_mask is None else weight_decay_mask
    return stacked_adam(b1, b2, eps, bias_correction, weight_decay, weight_decay_mask, False,
                        clip_norm)


_DIRECTIONS = {"lamb": lamb_direction, "adamw": adamw_direction}


def direction(name: str, **kwargs) -> optax.GradientTransformation:
    if name not in _DIRECTIONS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(_DIRECTIONS)}")
    return _DIRECTIONS[name](**kwargs)


# --------------------------------------------------------------------------------------------
# Schedules and the config-driven optimizer
# --------------------------------------------------------------------------------------------


def warmup_linear_decay_schedule(peak_value: float, warmup_steps: int, total_steps: int,
                                 end_value: float = 0.0,
                                 decay_after_warmup: bool = False) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak_value``, then linear decay to ``end_value`` at
    ``total_steps`` (constant afterwards).

    By default this is the BERT/MobileBERT schedule: the decay line runs from ``peak_value``
    at step 0 to ``end_value`` at ``total_steps`` and the warm-up overrides it for steps below
    ``warmup_steps``, so the rate at the end of warm-up is
    ``peak - (peak - end) * warmup / total``. With ``decay_after_warmup`` the decay starts at
    ``peak_value`` at the end of warm-up instead.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps <= 0 or warmup_steps > total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got "
            f"warmup_steps={warmup_steps}, total_steps={total_steps}")
    if decay_after_warmup:
        start = peak_value
    else:
        start = peak_value + (end_value - peak_value) * warmup_steps / total_steps
    decay = optax.linear_schedule(start, end_value, max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak_value, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def warmup_constant_schedule(peak_value: float, warmup_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak_value``, then constant."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return optax.constant_schedule(peak_value)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_value, warmup_steps),
         optax.constant_schedule(peak_value)], [warmup_steps])


def default_optimizer_config() -> ml_collections.ConfigDict:
    """The official teacher / pre-training distillation optimizer (LAMB, 500k steps)."""
    return ml_collections.ConfigDict(dict(
        name="lamb",
        learning_rate=1.5e-3,
        warmup_steps=10_000,
        total_steps=500_000,
        end_learning_rate=1.5e-7,
        decay="linear",
        decay_after_warmup=False,
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        bias_correction=False,
        clip_norm=1.0,
    ))


def make_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning-rate schedule of an optimizer config section."""
    full = default_optimizer_config()
    get = lambda k: cfg.get(k, full[k])  # noqa: E731
    decay = get("decay")
    if decay == "linear":
        return warmup_linear_decay_schedule(
            get("learning_rate"), int(get("warmup_steps")), int(get("total_steps")),
            get("end_learning_rate"), bool(get("decay_after_warmup")))
    if decay == "constant":
        return warmup_constant_schedule(get("learning_rate"), int(get("warmup_steps")))
    raise ValueError(f"unknown learning-rate decay {decay!r}; expected 'linear' or 'constant'")


def make_optimizer(
        cfg: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax chain, schedule) from a config section like ``default_optimizer_config()``.

    The chain is: LAMB or AdamW on gradients clipped to ``clip_norm`` (0/None = off), with
    the schedule. Missing fields take the default values. (Gradient accumulation happens in the
    trainers' step functions, so one optimizer update is one trainer step.)
    """
    full = default_optimizer_config()
    get = lambda k: cfg.get(k, full[k])  # noqa: E731
    name = get("name")
    if name not in _DIRECTIONS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(_DIRECTIONS)}")
    clip_norm = get("clip_norm")
    schedule = make_schedule(cfg)
    tx = optax.chain(
        direction(name, weight_decay=get("weight_decay"), b1=get("b1"), b2=get("b2"),
                  eps=get("eps"), bias_correction=bool(get("bias_correction")),
                  clip_norm=clip_norm),
        optax.scale_by_learning_rate(schedule),
    )
    return tx, schedule
