"""Teacher (IB-BERT_LARGE) pretraining with MLM + NSP on a device mesh.

Reads top to bottom in the order it runs: workdir and logging → mesh → input → model and
optimizer → sharded state → checkpoint restore → step functions (AOT-compiled) → loop with
logging, evaluation, checkpoints and preemption handling.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from mobilebert_jax import checkpoint, compile_cache, files, parallel
from mobilebert_jax.console import log
from mobilebert_jax.data import pretraining_input
from mobilebert_jax.metrics import throughput
from mobilebert_jax.metrics.writers import MetricsWriter
from mobilebert_jax.models.config import MobileBertConfig
from mobilebert_jax.models.heads import MobileBertForPreTraining
from mobilebert_jax.train import loop, losses, optim
from mobilebert_jax.train import state as state_lib


def pretraining_losses(out, batch) -> tuple[jax.Array, dict]:
    mlm = losses.mlm_loss(out.mlm_logits, batch["masked_lm_ids"], batch["masked_lm_weights"])
    nsp = losses.nsp_loss(out.nsp_logits, batch["next_sentence_labels"])
    metrics = {
        "mlm_loss": mlm, "nsp_loss": nsp,
        "mlm_accuracy": losses.mlm_accuracy(out.mlm_logits, batch["masked_lm_ids"],
                                            batch["masked_lm_weights"]),
        "nsp_accuracy": losses.nsp_accuracy(out.nsp_logits, batch["next_sentence_labels"]),
    }
    return mlm + nsp, metrics


def forward(model, params, batch, deterministic: bool, rng=None):
    return model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                       batch["input_mask"], deterministic=deterministic,
                       masked_lm_positions=batch["masked_lm_positions"],
                       rngs=None if deterministic else {"dropout": rng})


def accumulate_gradients(loss_fn, params, batch, rng, accum_steps: int):
    """Mean gradient and metrics over `accum_steps` micro-batches of `batch` (lax.scan)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
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


def make_train_step(model, tx, schedule, accum_steps: int):
    def loss_fn(params, batch, rng):
        out = forward(model, params, batch, deterministic=False, rng=rng)
        return pretraining_losses(out, batch)

    def train_step(state: state_lib.TrainState, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grads, metrics = accumulate_gradients(loss_fn, state.params, batch, rng, accum_steps)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optim.global_norm(grads)
        metrics["update_norm"] = optim.global_norm(updates)  # non-finite: the params broke
        metrics["learning_rate"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(model):
    def eval_step(params, batch):
        out = forward(model, params, batch, deterministic=True)
        loss, m = pretraining_losses(out, batch)
        w = batch["masked_lm_weights"]
        return {"loss": loss, "mlm_loss": m["mlm_loss"], "nsp_loss": m["nsp_loss"],
                "mlm_correct": m["mlm_accuracy"] * jnp.sum(w), "mlm_count": jnp.sum(w),
                "nsp_correct": m["nsp_accuracy"] * w.shape[0], "nsp_count": w.shape[0] * 1.0}
    return eval_step


def evaluate(eval_fn, params, loader, mesh, max_steps: int) -> dict[str, float]:
    sums, n = {}, 0
    for batch in loader:
        out = state_lib.to_host(eval_fn(params, parallel.global_batch(batch, mesh)))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
        if n >= max_steps:
            break
    if not n:
        return {}
    return {"loss": sums["loss"] / n, "mlm_loss": sums["mlm_loss"] / n,
            "nsp_loss": sums["nsp_loss"] / n,
            "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0),
            "nsp_accuracy": sums["nsp_correct"] / max(sums["nsp_count"], 1.0), "batches": n}


def compile_step(step_fn, args, name: str):
    """AOT-compiles `step_fn` for `args`; prints compile time and the memory analysis."""
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


def peak_flops_per_device() -> tuple[float | None, str]:
    peak = throughput.device_peak_flops()
    if peak:
        return peak, "data sheet"
    if jax.devices()[0].platform == "cpu":
        # All fake CPU devices share the host's cores: the measured host peak is split.
        return throughput.measure_matmul_peak() / jax.local_device_count(), "measured matmul"
    return None, "unknown"


def optimizer_config(config):
    """The optimizer section with `total_steps` 0 resolved to the run's `total_steps`."""
    opt = config.optimizer.copy_and_resolve_references()
    if not opt.total_steps:
        opt.total_steps = config.total_steps
    return opt


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Runs (or resumes) teacher pretraining; returns the last logged training metrics."""
    # -- workdir, model config -------------------------------------------------------------------
    model_config = MobileBertConfig.from_dict(config.model.to_dict())
    files.makedirs(workdir)
    state_lib.check_workdir_model(workdir, model_config)

    # -- mesh ------------------------------------------------------------------------------------
    mesh = parallel.make_mesh(config.mesh.shape)
    rules = parallel.rules_from_config(config.mesh.rules)
    parallel.check_batch_divisible(config.batch_size, mesh)
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by "
                         f"grad_accum_steps={config.grad_accum_steps}")
    log(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices "
        f"({jax.process_count()} processes, {jax.devices()[0].device_kind})")

    # -- input -----------------------------------------------------------------------------------
    info, tokenizer = pretraining_input.prepare_if_needed(config, workdir, model_config.vocab_size)
    train_iter = pretraining_input.train_loader(config, info)
    log(f"data: {info.num_examples} examples at seq {info.seq_len} in {info.data_dir}")

    # -- model, optimizer, sharded state ---------------------------------------------------------
    model = MobileBertForPreTraining(model_config)
    tx, schedule = optim.make_optimizer(optimizer_config(config))
    ids = jnp.zeros((1, info.seq_len), jnp.int32)
    init_params = functools.partial(
        lambda: model.init(jax.random.PRNGKey(config.seed), ids)["params"])
    state, shardings = state_lib.create_sharded_state(init_params, tx, config.seed, mesh, rules)
    log(f"model: {sum(x.size for x in jax.tree_util.tree_leaves(state.params)):,} parameters")
    log(f"sharding: {parallel.sharding_report(state.params, shardings.params).summary()}")

    # -- checkpoints -----------------------------------------------------------------------------
    ckpt = checkpoint.TrainCheckpointer(workdir, config.keep_checkpoints,
                                        config.async_checkpointing)
    state, host_state = state_lib.restore_state(ckpt, state, shardings)
    if host_state is not None:
        train_iter.set_state(host_state["data"])
        log(f"resumed from step {int(state.step)}")
    elif config.init_checkpoint:
        target = state_lib.abstract_like(state.params, shardings.params)
        state = state.replace(params=checkpoint.load_params(config.init_checkpoint,
                                                            target=target))
        log(f"initialised params from {config.init_checkpoint}")
    state_lib.record_run(workdir, config, model_config, tokenizer.path)

    # -- step functions --------------------------------------------------------------------------
    batch_sh = parallel.batch_sharding(mesh)
    repl = parallel.replicated(mesh)
    train_step = jax.jit(make_train_step(model, tx, schedule, config.grad_accum_steps),
                         in_shardings=(shardings, batch_sh), out_shardings=(shardings, repl),
                         donate_argnums=0)
    eval_step = jax.jit(make_eval_step(model), in_shardings=(shardings.params, batch_sh),
                        out_shardings=repl)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        example = pretraining_input.abstract_batch(train_iter, config.batch_size, batch_sh)
        abstract_state = state_lib.abstract_like(state, shardings)
        compiled_train = compile_step(train_step, (abstract_state, example), "train step")
        compiled_eval = compile_step(eval_step, (abstract_state.params, example), "eval step")
    flops = throughput.pretraining_step_flops(model_config, config.batch_size, info.seq_len,
                                              info.max_predictions_per_seq)
    peak, peak_source = peak_flops_per_device()
    log(f"step: {flops / 1e9:.1f} GFLOP; peak {peak / 1e12 if peak else float('nan'):.2f} "
        f"TFLOP/s per device ({peak_source})")

    # -- loop ------------------------------------------------------------------------------------
    def step_fn(state, step):
        return compiled_train(state, parallel.global_batch(next(train_iter), mesh))

    def evaluate_fn(state, step):
        loader = pretraining_input.eval_loader(config, info)
        return None if loader is None else evaluate(compiled_eval, state.params, loader, mesh,
                                                    config.eval_steps)

    hooks = loop.Hooks(train_step=step_fn, evaluate=evaluate_fn,
                       host_state=lambda: {"data": train_iter.get_state()})
    _, last = loop.run(state, hooks, loop.cadence(config), ckpt, MetricsWriter(workdir),
                       tokens_per_step=config.batch_size * info.seq_len, flops_per_step=flops,
                       peak_flops=peak)
    return last
