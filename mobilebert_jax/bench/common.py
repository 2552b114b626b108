"""Pieces the benchmarks share (no flags here, so any benchmark may import them): synthetic
pretraining batches, a median step timer, and the JAX pretraining-step timing."""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from mobilebert_jax.metrics import throughput
from mobilebert_jax.models import MobileBertForPreTraining, get_config
from mobilebert_jax.train import optim, pretrain
from mobilebert_jax.train.state import TrainState


def synthetic_batch(config, batch: int, seq: int, predictions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    positions = np.sort(np.stack([rng.choice(np.arange(1, seq), predictions, replace=False)
                                  for _ in range(batch)]), axis=1).astype(np.int32)
    return {
        "input_ids": rng.integers(1000, config.vocab_size, (batch, seq)).astype(np.int32),
        "segment_ids": (np.arange(seq)[None] >= seq // 2).repeat(batch, 0).astype(np.int32),
        "input_mask": np.ones((batch, seq), np.int32),
        "masked_lm_positions": positions,
        "masked_lm_ids": rng.integers(1000, config.vocab_size, (batch, predictions)).astype(np.int32),
        "masked_lm_weights": np.ones((batch, predictions), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


def time_calls(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def jax_step_seconds(name: str, batch: int, seq: int, predictions: int, steps: int):
    config = get_config(name)
    model = MobileBertForPreTraining(config)
    opt_cfg = ml_collections.ConfigDict(dict(name="lamb", learning_rate=1e-4, warmup_steps=0,
                                             total_steps=1000))
    tx, schedule = optim.make_optimizer(opt_cfg)
    data = {k: jnp.asarray(v) for k, v in synthetic_batch(config, batch, seq, predictions).items()}
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), data["input_ids"][:1])["params"])
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                       jax.random.key_data(jax.random.PRNGKey(0)))
    step = jax.jit(pretrain.make_train_step(model, tx, schedule, 1), donate_argnums=0)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], data)
        jax.block_until_ready(metrics["loss"])

    seconds = time_calls(run, steps)
    flops = throughput.pretraining_step_flops(config, batch, seq, predictions)
    return seconds, flops
