"""The training core every trainer (pretrain, distill, finetune) builds on; the design is in
docs/architecture.md.

* state: `TrainState`, its sharded creation (`create_sharded_state`, the optimizer slots
  sharded like their params by `opt_state_shardings`), checkpoint save and restore-or-init,
  the workdir's model-config check and run record;
* the update: `make_train_step` (gradients accumulated over micro-batches by
  `accumulate_gradients`, then `apply_gradients`, which reports the gradient and update norms
  that the loop's NaN guard reads);
* compilation: `compile_step` (AOT, with XLA's memory report);
* evaluation: `evaluate` (sums of per-batch eval outputs).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct

from mobilebert_jax import checkpoint, compile_cache, files, parallel
from mobilebert_jax.console import log
from mobilebert_jax.models.config import MobileBertConfig
from mobilebert_jax.train import optim


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2] key data; step RNG = fold_in(rng, step)
    extra: Any = None  # trainer-specific scalars (e.g. the distillation stage)


def opt_state_shardings(tx, params, param_sh, mesh):
    """Shardings of `tx.init(params)`: every slot like its param (a stacked Adam moment like
    the params stacked in it), counters replicated."""
    repl = parallel.replicated(mesh)
    abstract = jax.eval_shape(tx.init, params)
    params_def = jax.tree.structure(params)

    def is_slot(x):
        return isinstance(x, optim.StackedAdamState) or jax.tree.structure(x) == params_def

    def place(node):
        if isinstance(node, optim.StackedAdamState):
            return optim.stacked_slot_shardings(params, param_sh, repl)
        return param_sh if jax.tree.structure(node) == params_def else repl

    return jax.tree.map(place, abstract, is_leaf=is_slot)


@dataclasses.dataclass
class Program:
    """What a run compiles, built without data or a workdir: the state's shardings and
    abstract value, and each step function (jitted with its shardings) with the abstract
    arguments it is compiled for (`steps[name] = (jitted, args)`); `init_params` and `tx`
    build the concrete state (`create_sharded_state`)."""
    shardings: TrainState
    abstract_state: TrainState
    steps: dict[str, tuple[Any, tuple]]
    init_params: Callable[[], Any]
    tx: optax.GradientTransformation


def state_shardings(init_params: Callable[[], Any], tx: optax.GradientTransformation, mesh,
                    rules, extra: Any = None) -> tuple[TrainState, TrainState]:
    """(abstract state, state shardings) of the state `create_sharded_state` builds, without
    allocating it: the params' shardings from their logical axes, the optimizer slots like
    their params, scalars replicated."""
    boxed = jax.eval_shape(init_params)
    param_sh = parallel.logical_shardings(boxed, mesh, rules)
    params = abstract_like(nn.meta.unbox(boxed), param_sh)
    repl = parallel.replicated(mesh)
    opt_sh = opt_state_shardings(tx, params, param_sh, mesh)
    opt_state = abstract_like(jax.eval_shape(tx.init, params), opt_sh)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl)
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)
    extra_sh = jax.tree_util.tree_map(lambda _: repl, extra)
    extra = None if extra is None else abstract_like(extra, extra_sh)
    shardings = TrainState(repl, param_sh, opt_sh, repl, extra_sh)
    return TrainState(step, params, opt_state, key, extra), shardings


def create_sharded_state(program: Program, seed: int, mesh, rules, extra: Any = None):
    """Builds `program`'s TrainState directly in its shardings (never materialised on one
    host first); returns (state, state shardings)."""
    shardings = program.shardings
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        params = jax.jit(lambda: nn.meta.unbox(program.init_params()),
                         out_shardings=shardings.params)()
        opt_state = jax.jit(program.tx.init, out_shardings=shardings.opt_state)(params)
    repl = shardings.step
    rng = jax.device_put(jax.random.key_data(jax.random.PRNGKey(seed)), repl)
    step = jax.device_put(jnp.zeros((), jnp.int32), repl)
    extra = jax.device_put(extra, shardings.extra) if extra is not None else None
    return TrainState(step, params, opt_state, rng, extra), shardings


def abstract_like(tree, shardings):
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# -- the update ------------------------------------------------------------------------------------
def accumulate_gradients(loss_fn, params, batch, rng, accum_steps: int, grad_shardings=None):
    """Mean gradient and metrics over `accum_steps` micro-batches of `batch` (lax.scan);
    `loss_fn(params, micro_batch, rng) -> (loss, metrics)`. `grad_shardings` (the params'
    shardings) lays every micro-batch's gradient out like its param: on an FSDP mesh each is
    reduce-scattered onto its shard, never all-reduced whole."""
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def grad_fn(p, b, r):
        out, grads = value_and_grad(p, b, r)
        if grad_shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
        return out, grads

    if accum_steps == 1:
        (loss, metrics), grads = grad_fn(params, batch, rng)
        return grads, dict(metrics, loss=loss)

    def split(x):  # rows i*accum + j go to micro-batch j: each stays spread over the devices
        x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
        return jnp.moveaxis(x, 1, 0)

    micro = jax.tree_util.tree_map(split, batch)

    def body(carry, xs):
        acc, i = carry
        (loss, metrics), g = grad_fn(params, xs, jax.random.fold_in(rng, i))
        acc = jax.tree_util.tree_map(jnp.add, acc, g)
        return (acc, i + 1), dict(metrics, loss=loss)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    (grads, _), metrics = jax.lax.scan(body, (zeros, 0), micro)
    grads = jax.tree_util.tree_map(lambda g: g / accum_steps, grads)
    return grads, jax.tree_util.tree_map(jnp.mean, metrics)


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation):
    """One optimizer update; returns (new state, {grad_norm, update_norm}). A non-finite
    update norm means the new params broke: the loop's NaN guard reads it."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    norms = {"grad_norm": optim.global_norm(grads), "update_norm": optim.global_norm(updates)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), norms


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, accum_steps: int = 1,
                    log_fields: Callable[[TrainState], dict] | None = None,
                    grad_shardings: Any = None):
    """`train_step(state, batch, *frozen) -> (state, metrics)`, the update of every trainer.

    `loss_fn(params, micro_batch, rng, *frozen) -> (loss, metrics)` is differentiated in the
    params only (`frozen`: e.g. a teacher's params, neither updated nor donated); `rng` is the
    step's key (`fold_in(state.rng, state.step)`, per micro-batch folded again), for dropout.
    `log_fields(state)` adds scalars of the state before the update (learning rates);
    `grad_shardings` (the params' shardings) constrains the gradients to them
    (`accumulate_gradients`).
    """
    if int(accum_steps) < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {accum_steps}")

    def train_step(state: TrainState, batch, *frozen):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grads, metrics = accumulate_gradients(
            lambda p, b, r: loss_fn(p, b, r, *frozen), state.params, batch, rng,
            int(accum_steps), grad_shardings)
        if log_fields is not None:
            metrics.update(log_fields(state))
        new_state, norms = apply_gradients(state, grads, tx)
        metrics.update(norms)
        return new_state, metrics

    return train_step


def check_accumulation(batch_size: int, accum_steps: int) -> None:
    if int(accum_steps) < 1 or int(batch_size) % int(accum_steps):
        raise ValueError(f"batch_size={batch_size} is not divisible by "
                         f"grad_accum_steps={accum_steps}")


# -- compilation and evaluation -----------------------------------------------------------------
def compile_step(step_fn, args, name: str):
    """AOT-compiles `step_fn` for `args`; logs compile time and XLA's memory analysis."""
    start, hits = time.perf_counter(), compile_cache.hits()
    compiled = step_fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    how = "loaded from the compilation cache" if compile_cache.hits() > hits else "compiled"
    mem = compiled.memory_analysis()
    if mem is not None:
        gib = 1 / 2 ** 30
        log(f"{name}: {how} in {seconds:.1f}s; per-device memory: arguments "
            f"{mem.argument_size_in_bytes * gib:.3f} GiB, outputs "
            f"{mem.output_size_in_bytes * gib:.3f} GiB, temporaries "
            f"{mem.temp_size_in_bytes * gib:.3f} GiB, generated code "
            f"{mem.generated_code_size_in_bytes * gib:.3f} GiB")
    else:
        log(f"{name}: {how} in {seconds:.1f}s")
    return compiled


def evaluate(eval_fn, params, batches, mesh, max_steps: int | None = None) -> tuple[dict, int]:
    """Sums of `eval_fn(params, global batch)`'s outputs over host `batches` (at most
    `max_steps`), and the number of batches."""
    sums, n = {}, 0
    for batch in batches:
        if max_steps is not None and n >= max_steps:
            break
        out = to_host(eval_fn(params, parallel.global_batch(batch, mesh)))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
    return sums, n


# -- checkpoints ----------------------------------------------------------------------------------
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


def check_workdir_model(workdir: str, model_config: MobileBertConfig, trainer: str) -> None:
    """A workdir that holds another job's run (its `config.json` names another trainer), a
    checkpoint directory that is no run's workdir (a converted model), or checkpoints of another
    model shape is an error, not a silent re-initialisation or an overwrite. Writes nothing:
    `record_run` does, once the state is restored (the restore checks the params themselves
    against the config, `model_config.json` or not)."""
    run_config = files.join(workdir, "config.json")
    path = files.join(workdir, checkpoint.MODEL_CONFIG)
    if files.isfile(run_config):
        previous = files.read_json(run_config, "run config").get("trainer")
        if previous != trainer:
            raise ValueError(f"workdir {workdir} holds a {previous} run (its config.json), not "
                             f"a {trainer} run; use a new --workdir")
    elif files.isfile(path):
        raise ValueError(f"workdir {workdir} is a checkpoint directory ({checkpoint.MODEL_CONFIG}"
                         f" without a run's config.json); use a new --workdir and point "
                         f"init_checkpoint or teacher_checkpoint at it")
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


