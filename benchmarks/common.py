"""Pieces the benchmarks share (no flags here, so any benchmark may import them): synthetic
pretraining batches, the call timers, the JAX pretraining-step timing (whole, or split into
forward / gradient / optimizer update) and the JSON results file every benchmark can write."""
from __future__ import annotations

import json
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn

from mobilebert_jax.metrics import throughput
from mobilebert_jax.models import MobileBertForPreTraining, get_config
from mobilebert_jax.train import objectives, optim, pretrain
from mobilebert_jax.train.core import TrainState


def synthetic_batch(config, batch: int, seq: int, predictions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    positions = np.sort(np.stack([rng.choice(np.arange(1, seq), predictions, replace=False)
                                  for _ in range(batch)]), axis=1).astype(np.int32)
    return {
        "input_ids": rng.integers(1000, config.vocab_size, (batch, seq)).astype(np.int32),
        "segment_ids": (np.arange(seq)[None] >= seq // 2).repeat(batch, 0).astype(np.int32),
        "input_mask": np.ones((batch, seq), np.int32),
        "masked_lm_positions": positions,
        "masked_lm_ids": rng.integers(1000, config.vocab_size,
                                      (batch, predictions)).astype(np.int32),
        "masked_lm_weights": np.ones((batch, predictions), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


def call_seconds(fn, runs: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `runs` calls of `fn()`, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def time_calls(fn, steps: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `steps` calls after `warmup` untimed ones."""
    return statistics.median(call_seconds(fn, steps, warmup))


def _pretraining_setup(name: str, batch: int, seq: int, predictions: int, dtype: str):
    config = get_config(name, dtype=dtype)
    model = MobileBertForPreTraining(config)
    opt_cfg = ml_collections.ConfigDict(dict(name="lamb", learning_rate=1e-4, warmup_steps=0,
                                             total_steps=1000))
    tx, schedule = optim.make_optimizer(opt_cfg)
    data = {k: jnp.asarray(v) for k, v in synthetic_batch(config, batch, seq, predictions).items()}
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), data["input_ids"][:1])["params"])
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                       jax.random.key_data(jax.random.PRNGKey(0)))
    return config, model, tx, schedule, data, state


def fusion_count(compiled) -> int:
    """XLA fusion instructions in a compiled program (each one kernel launch on an
    accelerator, one loop nest on the CPU)."""
    return sum(1 for line in compiled.as_text().splitlines()
               if re.search(r"= \S+ fusion\(", line))


def jax_step_runner(name: str, batch: int, seq: int, predictions: int, dtype: str = "float32"):
    """One full pretraining step (forward, backward, LAMB) as a callable that runs it to
    completion; with its FLOPs and the compiled program's fusion count."""
    config, model, tx, schedule, data, state = _pretraining_setup(name, batch, seq, predictions,
                                                                  dtype)
    step = jax.jit(pretrain.make_train_step(model, tx, schedule, 1), donate_argnums=0)
    compiled = step.lower(state, data).compile()
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], data)
        jax.block_until_ready(metrics["loss"])

    return run, throughput.pretraining_step_flops(config, batch, seq, predictions), \
        fusion_count(compiled)


def jax_step_seconds(name: str, batch: int, seq: int, predictions: int, steps: int,
                     dtype: str = "float32"):
    """Median seconds of one full pretraining step (forward, backward, LAMB) and its FLOPs."""
    run, flops, _ = jax_step_runner(name, batch, seq, predictions, dtype)
    return time_calls(run, steps), flops


def alternate(a, b, pairs: int) -> list[tuple[float, float]]:
    """Seconds of `a()` and `b()` timed in turn (a b a b ...) after one warm-up call of each, so
    that the load of a shared machine hits both sides alike."""
    a(), b()
    times = []
    for _ in range(pairs):
        start = time.perf_counter()
        a()
        middle = time.perf_counter()
        b()
        times.append((middle - start, time.perf_counter() - middle))
    return times


def jax_step_split(name: str, batch: int, seq: int, predictions: int, steps: int,
                   dtype: str = "float32") -> dict[str, float]:
    """Median seconds of the parts of a pretraining step, each jitted on its own: the training
    forward pass with the losses, `jax.grad` of it (forward + backward), and the LAMB update
    (`tx.update` + `apply_updates`) on a gradient of the same tree."""
    _, model, tx, _, data, state = _pretraining_setup(name, batch, seq, predictions, dtype)
    rng = jax.random.PRNGKey(1)

    def loss_fn(params):
        out = objectives.forward(model, params, data, deterministic=False, rng=rng)
        return objectives.pretraining_losses(out, data)[0]

    forward = jax.jit(loss_fn)
    grad = jax.jit(jax.grad(loss_fn))
    grads = grad(state.params)

    @jax.jit
    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return {
        "forward": time_calls(lambda: jax.block_until_ready(forward(state.params)), steps),
        "grad": time_calls(lambda: jax.block_until_ready(grad(state.params)), steps),
        "optimizer": time_calls(
            lambda: jax.block_until_ready(update(state.params, state.opt_state, grads)), steps),
    }


def write_json(path: str | None, results) -> None:
    """Writes a benchmark's results to `path` (atomically; nothing when `path` is empty)."""
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True, default=float)
    os.replace(tmp, path)
    print(f"wrote {path}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"
