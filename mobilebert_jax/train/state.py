"""Train state and the pieces every trainer shares: sharded creation, its checkpoint save and
restore (params, optimizer, step, RNG, trainer extras, host-side JSON such as the input
position), and the workdir's model-config check."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mobilebert_jax import checkpoint, files, parallel
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
    opt_sh = parallel.opt_state_shardings(tx, params, param_sh, mesh)
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
def save_state(ckpt, state: TrainState, host_state: dict) -> bool:
    """Starts saving `state` (async) with the trainer's host-side JSON `host_state`."""
    meta = {"step": state.step, "rng": state.rng, "extra": state.extra}
    return ckpt.save(int(state.step), state.params, state.opt_state, meta, host_state)


def restore_state(ckpt, state: TrainState, shardings: TrainState):
    """(state, host_state) of the newest intact checkpoint, restored onto the shardings of
    `state`; (state, None) when there is none."""
    meta = {"step": state.step, "rng": state.rng, "extra": state.extra}
    meta_sh = {"step": shardings.step, "rng": shardings.rng, "extra": shardings.extra}
    restored = ckpt.restore(abstract_like(state.params, shardings.params),
                            abstract_like(state.opt_state, shardings.opt_state),
                            abstract_like(meta, meta_sh))
    if restored is None:
        return state, None
    _, params, opt_state, m, host_state = restored
    return TrainState(m["step"], params, opt_state, m["rng"], m["extra"]), host_state


def check_workdir_model(workdir: str, model_config: MobileBertConfig) -> None:
    """A workdir that already holds checkpoints of another model shape is an error, not a
    silent re-initialisation. Writes nothing: `record_run` does, once the state is restored
    (the restore checks the params themselves against the config, `model_config.json` or not)."""
    path = files.join(workdir, checkpoint.MODEL_CONFIG)
    has_ckpt = checkpoint.latest_step(workdir) is not None
    if has_ckpt and files.isfile(path):
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


def record_run(workdir: str, config, model_config: MobileBertConfig,
               tokenizer_path: str | None = None) -> None:
    """Writes the run's `config.json` and `model_config.json` (atomically, on process 0), and
    stores the tokenizer file beside them, so that the workdir is a self-contained checkpoint
    directory: called once the workdir's state is restored or known to be new, so that a start
    that fails any check leaves the workdir as it was."""
    if jax.process_index() == 0:
        if tokenizer_path:
            checkpoint.store_tokenizer(workdir, tokenizer_path)
        files.write_text(files.join(workdir, "config.json"),
                         config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
        model_config.to_json(files.join(workdir, checkpoint.MODEL_CONFIG))


def to_host(tree) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


