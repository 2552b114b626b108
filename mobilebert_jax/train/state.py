"""Train state and the pieces every trainer shares: sharded creation, checkpoint save/restore
of (params, optimizer, step, RNG, data position), preemption signals, the NaN guard, and the
workdir's model-config check."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mobilebert_jax import checkpoint, parallel
from mobilebert_jax.models.config import MobileBertConfig


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2] key data; step RNG = fold_in(rng, step)
    extra: Any = None  # trainer-specific scalars (e.g. the distillation stage)


def create_sharded_state(init_params: Callable[[], Any], tx: optax.GradientTransformation,
                         seed: int, mesh, rules, extra: Any = None):
    """Builds the TrainState directly in its shardings; returns (state, state shardings)."""
    params, param_sh = parallel.sharded_init(init_params, mesh, rules)
    repl = parallel.replicated(mesh)
    abstract_opt = jax.eval_shape(tx.init, params)
    opt_sh = optax.tree_utils.tree_map_params(
        tx, lambda _, sh: sh, abstract_opt, param_sh, transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    with jax.set_mesh(mesh):
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    rng = jax.device_put(jax.random.key_data(jax.random.PRNGKey(seed)), repl)
    step = jax.device_put(jnp.zeros((), jnp.int32), repl)
    extra_sh = jax.tree_util.tree_map(lambda _: repl, extra)
    extra = jax.device_put(extra, extra_sh) if extra is not None else None
    state = TrainState(step, params, opt_state, rng, extra)
    shardings = TrainState(repl, param_sh, opt_sh, repl, extra_sh)
    return state, shardings


def abstract_like(tree, shardings):
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# -- checkpoints ------------------------------------------------------------------------------------
ITEMS = ("params", "opt_state", "meta", "data")


def state_manager(workdir: str, config) -> Any:
    import grain
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, enable_async_checkpointing=config.async_checkpointing,
        create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), checkpoint.CHECKPOINTS), options=options,
        item_handlers={"params": ocp.StandardCheckpointHandler(),
                       "opt_state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})


def save_state(mngr, state: TrainState, data_iter, force: bool = False) -> bool:
    import grain
    import orbax.checkpoint as ocp

    step = int(state.step)
    if mngr.latest_step() == step:
        return False
    meta = {"step": state.step, "rng": state.rng, "extra": state.extra}
    args = dict(params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave(state.opt_state),
                meta=ocp.args.StandardSave(meta),
                data=grain.checkpoint.CheckpointSave(data_iter))
    return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def restore_state(mngr, state: TrainState, shardings: TrainState, data_iter) -> TrainState:
    """Restores the latest step onto the shardings of `state` (and the data iterator in place)."""
    import grain
    import orbax.checkpoint as ocp

    step = mngr.latest_step()
    meta = {"step": state.step, "rng": state.rng, "extra": state.extra}
    meta_sh = {"step": shardings.step, "rng": shardings.rng, "extra": shardings.extra}
    args = dict(params=ocp.args.StandardRestore(abstract_like(state.params, shardings.params)),
                opt_state=ocp.args.StandardRestore(abstract_like(state.opt_state,
                                                                 shardings.opt_state)),
                meta=ocp.args.StandardRestore(abstract_like(meta, meta_sh)),
                data=grain.checkpoint.CheckpointRestore(data_iter))
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**args))
    except ValueError as e:
        raise ValueError(f"checkpoint step {step} in {mngr.directory} does not fit this "
                         f"model/optimizer config: {str(e).splitlines()[0]}") from None
    m = restored["meta"]
    return TrainState(m["step"], restored["params"], restored["opt_state"], m["rng"],
                      m["extra"])


def check_workdir_model(workdir: str, model_config: MobileBertConfig) -> None:
    """A workdir that already holds checkpoints of another model shape is an error, not a
    silent re-initialisation. Writes `model_config.json` for a new workdir."""
    path = os.path.join(workdir, checkpoint.MODEL_CONFIG)
    has_ckpt = checkpoint.latest_step(workdir) is not None
    if os.path.isfile(path) and has_ckpt:
        old = MobileBertConfig.from_json_file(path)
        shape_fields = [f.name for f in dataclasses.fields(MobileBertConfig)
                        if f.name not in ("dtype", "remat", "hidden_dropout_prob",
                                          "attention_probs_dropout_prob")]
        diff = [f for f in shape_fields if getattr(old, f) != getattr(model_config, f)]
        if diff:
            f = diff[0]
            raise ValueError(f"workdir {workdir} holds checkpoints of another model "
                             f"({f}={getattr(old, f)!r}, config has {getattr(model_config, f)!r}); "
                             f"use a new --workdir")
    if jax.process_index() == 0:
        model_config.to_json(path)


def write_config(workdir: str, config) -> None:
    if jax.process_index() == 0:
        tmp = os.path.join(workdir, "config.json.tmp")
        with open(tmp, "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
        os.replace(tmp, os.path.join(workdir, "config.json"))


# -- preemption -------------------------------------------------------------------------------------
class PreemptionGuard:
    """Turns SIGTERM/SIGINT into a flag that the loop polls (then saves and exits cleanly)."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum, frame):
        del frame
        self.requested = True

    def should_stop(self, mngr, step: int) -> bool:
        return self.requested or bool(mngr.reached_preemption(step))

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(metrics: dict[str, float], step: int, mngr) -> None:
    """Raises NonFiniteLoss when the loss or the update norm is NaN/inf (before any save)."""
    bad = {k: metrics[k] for k in ("loss", "update_norm")
           if k in metrics and not np.isfinite(metrics[k])}
    if bad:
        last = mngr.latest_step()
        kept = f"last good checkpoint: step {last}" if last is not None else "no checkpoint kept"
        what = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteLoss(f"non-finite training values ({what}) at step {step}; "
                            f"stopping ({kept})")


def checked_save(mngr, state: TrainState, data_iter, metrics: dict, step: int) -> None:
    """Saves `state` unless the step's loss or update norm is non-finite (then NonFiniteLoss,
    and the last good checkpoint stays the latest)."""
    check_finite({k: float(jax.device_get(metrics[k])) for k in ("loss", "update_norm")},
                 step, mngr)
    save_state(mngr, state, data_iter)


def window_means(window: list[dict]) -> dict[str, float]:
    """Host means of the per-step metric dicts logged since the last log line (one fetch)."""
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.mean(jnp.stack(xs)), *window)
    return {k: float(v) for k, v in to_host(stacked).items()}


def to_host(tree) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def dump_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
