"""Per-layer learning-rate multipliers of progressive knowledge transfer (PKT): the boundary
gate ``pkt_boundary_gate``, the layer multipliers ``pkt_layer_multipliers``, the optax
transformation ``scale_by_layer_multipliers`` that applies them, and the helpers that read, set
and reset its step. The transfer optimizer itself is built in
``distill_stages.transfer_optimizer``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.train.optim import layer_index_of_path, path_names


def _check_stage_args(steps_per_stage: int, num_layers: Optional[int] = None) -> None:
    if int(steps_per_stage) < 1:
        raise ValueError(f"steps_per_stage must be >= 1, got {steps_per_stage}")
    if num_layers is not None and int(num_layers) < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")


def pkt_boundary_gate(t: Any, steps_per_stage: int) -> jax.Array:
    """bg(t) = min(0.1 * sqrt(1 - t/P) + 0.9, 10 * t/P) with t = step mod P.

    0 at the start of every stage, rising linearly to ~0.995 at 10% of the stage, then
    decaying to 0.9 at its end. With P == 1 the gate is 1 (as in the official code).
    """
    _check_stage_args(steps_per_stage)
    if steps_per_stage == 1:
        return jnp.ones(jnp.shape(t), jnp.float32)
    frac = jnp.mod(jnp.asarray(t), steps_per_stage).astype(jnp.float32) / steps_per_stage
    return jnp.minimum(0.1 * jnp.sqrt(1.0 - frac) + 0.9, 10.0 * frac)


def pkt_stage(step: Any, steps_per_stage: int, num_layers: int) -> jax.Array:
    """The PKT stage (= the layer being transferred) at ``step``, clamped to num_layers-1."""
    _check_stage_args(steps_per_stage, num_layers)
    return jnp.minimum(jnp.asarray(step) // steps_per_stage, num_layers - 1)


def pkt_layer_multipliers(step: Any, steps_per_stage: int, num_layers: int,
                          base: float = 3.0, lower: float = 0.1,
                          hard_freeze: bool = False) -> jax.Array:
    """Per-layer learning-rate multipliers [num_layers] at ``step``.

    base * bg(t) * {0 for layers above stage k, 1 for layer k, ``lower`` below it (0 with
    ``hard_freeze``)}, k = step // steps_per_stage.
    """
    k = pkt_stage(step, steps_per_stage, num_layers)
    layers = jnp.arange(num_layers)
    below = 0.0 if hard_freeze else lower
    shape = jnp.where(layers == k, 1.0, jnp.where(layers < k, below, 0.0))
    return base * pkt_boundary_gate(step, steps_per_stage) * shape.astype(jnp.float32)


class ScaleByLayerMultipliersState(NamedTuple):
    """The global step the layer multipliers are evaluated at (advanced every update)."""
    count: jax.Array


def scale_by_layer_multipliers(
        layer_of_param: Optional[Callable[[tuple[str, ...]], Optional[int]]],
        multiplier_fn: Callable[[jax.Array], jax.Array],
        other_multiplier: float = 0.0,
        initial_step: int = 0) -> optax.GradientTransformation:
    """Multiplies each update by ``multiplier_fn(count)[layer]`` of its layer.

    ``layer_of_param(path_names)`` gives a parameter's layer index, or None for parameters
    outside the layers (embeddings, heads), which are scaled by ``other_multiplier``; None
    means ``layer_index_of_path``. ``count`` starts at ``initial_step`` and advances by one
    per update; read and set it with ``layer_multiplier_step`` / ``set_layer_multiplier_step``
    when restoring or rebuilding.
    """
    if not callable(multiplier_fn):
        raise ValueError("scale_by_layer_multipliers needs a multiplier_fn(step) -> [layers]")
    layer_of_param = layer_index_of_path if layer_of_param is None else layer_of_param

    def init_fn(params):
        del params
        return ScaleByLayerMultipliersState(count=jnp.asarray(initial_step, jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        multipliers = multiplier_fn(state.count)

        def scale(path, u):
            layer = layer_of_param(path_names(path))
            m = other_multiplier if layer is None else multipliers[layer]
            return (u * m).astype(u.dtype)

        new_updates = jax.tree_util.tree_map_with_path(scale, updates)
        return new_updates, ScaleByLayerMultipliersState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def _is_multiplier_state(x: Any) -> bool:
    return isinstance(x, ScaleByLayerMultipliersState)


def layer_multiplier_step(opt_state: Any) -> jax.Array:
    """The step held by the (single) ``scale_by_layer_multipliers`` state in ``opt_state``."""
    found = [s.count for s in jax.tree.leaves(opt_state, is_leaf=_is_multiplier_state)
             if _is_multiplier_state(s)]
    if len(found) != 1:
        raise ValueError(f"expected one layer-multiplier state in opt_state, found {len(found)}")
    return found[0]


def set_layer_multiplier_step(opt_state: Any, step: Any) -> Any:
    """``opt_state`` with every layer-multiplier step set to ``step`` (e.g. the global step)."""
    def put(s):
        if _is_multiplier_state(s):
            return ScaleByLayerMultipliersState(jnp.asarray(step, jnp.int32))
        return s

    return jax.tree.map(put, opt_state, is_leaf=_is_multiplier_state)


def reset_opt_state(tx: optax.GradientTransformation, params: Any,
                    step: Optional[Any] = None) -> Any:
    """Fresh optimizer slots (zero moments), e.g. at a PKT stage boundary; the layer
    multipliers keep following the global ``step`` when one is given."""
    state = tx.init(params)
    return state if step is None else set_layer_multiplier_step(state, step)
