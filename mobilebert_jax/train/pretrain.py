"""Teacher (IB-BERT_LARGE) pretraining with MLM + NSP on a device mesh.

Reads top to bottom in the order it runs: workdir and logging → mesh → input → model and
optimizer → sharded state → checkpoint restore → step functions (AOT-compiled) → loop with
logging, evaluation, checkpoints and preemption handling.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from mobilebert_jax import checkpoint, files, parallel
from mobilebert_jax.console import log
from mobilebert_jax.data import pretraining_input
from mobilebert_jax.metrics import throughput
from mobilebert_jax.metrics.writers import MetricsWriter
from mobilebert_jax.models.config import MobileBertConfig
from mobilebert_jax.models.heads import MobileBertForPreTraining
from mobilebert_jax.train import core, loop, objectives, optim


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


def make_train_step(model, tx, schedule, accum_steps: int, grad_shardings=None):
    """`train_step(state, batch) -> (state, metrics)`: MLM + NSP with dropout through the
    training core, logging the learning rate."""
    return core.make_train_step(objectives.make_loss_fn(model), tx, accum_steps,
                                log_fields=lambda state: {"learning_rate": schedule(state.step)},
                                grad_shardings=grad_shardings)


def build_program(config, mesh, rules, seq_len: int, max_predictions: int) -> core.Program:
    """The teacher run's state shardings, jitted train and eval steps and their abstract
    arguments, from the config alone (no data, no workdir): what `train_and_evaluate` compiles
    and runs, and what a compile check builds for another mesh."""
    model = MobileBertForPreTraining(MobileBertConfig.from_dict(config.model.to_dict()))
    tx, schedule = optim.make_optimizer(optimizer_config(config))
    ids = jnp.zeros((1, seq_len), jnp.int32)

    def init_params():
        return model.init(jax.random.PRNGKey(config.seed), ids)["params"]

    abstract_state, shardings = core.state_shardings(init_params, tx, mesh, rules)
    batch_sh = parallel.batch_sharding(mesh)
    repl = parallel.replicated(mesh)
    train_step = jax.jit(make_train_step(model, tx, schedule, config.grad_accum_steps,
                                         shardings.params),
                         in_shardings=(shardings, batch_sh), out_shardings=(shardings, repl),
                         donate_argnums=0)
    eval_step = jax.jit(objectives.make_eval_step(model),
                        in_shardings=(shardings.params, batch_sh), out_shardings=repl)
    batch = pretraining_input.abstract_batch(config.batch_size, seq_len, max_predictions,
                                             batch_sh)
    return core.Program(shardings, abstract_state,
                        {"train step": (train_step, (abstract_state, batch)),
                         "eval step": (eval_step, (abstract_state.params, batch))},
                        init_params, tx)


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Runs (or resumes) teacher pretraining; returns the last logged training metrics."""
    # -- workdir, model config -------------------------------------------------------------------
    model_config = MobileBertConfig.from_dict(config.model.to_dict())
    files.makedirs(workdir)
    core.check_workdir_model(workdir, model_config, config.trainer)

    # -- mesh ------------------------------------------------------------------------------------
    mesh = parallel.make_mesh(config.mesh.shape, dcn_shape=config.mesh.dcn_shape)
    rules = parallel.rules_from_config(config.mesh.rules)
    parallel.check_batch_divisible(config.batch_size, mesh)
    core.check_accumulation(config.batch_size, config.grad_accum_steps)
    log(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices "
        f"({jax.process_count()} processes, {jax.devices()[0].device_kind})")

    # -- input -----------------------------------------------------------------------------------
    info, tokenizer = pretraining_input.prepare_if_needed(config, workdir, model_config.vocab_size)
    train_iter = pretraining_input.train_loader(config, info)
    log(f"data: {info.num_examples} examples at seq {info.seq_len} in {info.data_dir}")

    # -- model, optimizer, sharded state, step functions ---------------------------------------
    program = build_program(config, mesh, rules, info.seq_len, info.max_predictions_per_seq)
    state, shardings = core.create_sharded_state(program, config.seed, mesh, rules)
    log(f"model: {sum(x.size for x in jax.tree_util.tree_leaves(state.params)):,} parameters")
    log(f"sharding: {parallel.sharding_report(state.params, shardings.params).summary()}")

    # -- checkpoints -----------------------------------------------------------------------------
    ckpt = checkpoint.TrainCheckpointer(workdir, config.keep_checkpoints,
                                        config.async_checkpointing)
    state, host_state = core.restore_state(ckpt, state, shardings)
    if host_state is not None:
        train_iter.set_state(host_state["data"])
        log(f"resumed from step {int(state.step)}")
    elif config.init_checkpoint:
        target = core.abstract_like(state.params, shardings.params)
        state = state.replace(params=checkpoint.load_params(config.init_checkpoint,
                                                            target=target))
        log(f"initialised params from {config.init_checkpoint}")
    core.record_run(workdir, config, model_config, tokenizer.path)

    # -- AOT compilation -------------------------------------------------------------------------
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled_train, compiled_eval = (core.compile_step(fn, args, name)
                                         for name, (fn, args) in program.steps.items())
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
        if loader is None:
            return None
        return objectives.summarize_eval(*core.evaluate(compiled_eval, state.params, loader,
                                                        mesh, config.eval_steps))

    hooks = loop.Hooks(train_step=step_fn, evaluate=evaluate_fn,
                       host_state=lambda: {"data": train_iter.get_state()})
    _, last = loop.run(state, hooks, loop.cadence(config), ckpt, MetricsWriter(workdir),
                       tokens_per_step=config.batch_size * info.seq_len, flops_per_step=flops,
                       peak_flops=peak)
    return last
