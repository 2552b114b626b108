"""Throughput accounting: analytic FLOPs of a training step, per-device peak table, MFU.

FLOPs count the matrix multiplications (2 per multiply-add) of the encoder, attention and heads;
a training step is 3× the forward (forward + two backward matmuls). Norms, activations and the
optimizer are left out, as is usual for MFU.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax.models.config import MobileBertConfig

# Dense peak FLOP/s per device (bf16 unless noted), from the vendors' data sheets.
PEAK_FLOPS = {
    "TPU v2": 45e12 / 2, "TPU v3": 123e12 / 2, "TPU v4": 275e12, "TPU v5 lite": 197e12,
    "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA A100": 312e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA L4": 121e12,
    "NVIDIA A10G": 125e12,
}


def encoder_forward_flops(c: MobileBertConfig, batch: int, seq: int,
                          num_layers: int | None = None) -> float:
    """Forward matmul FLOPs of embeddings + `num_layers` blocks (default: all)."""
    tokens = batch * seq
    h, d, i = c.hidden_size, c.inner_size, c.intermediate_size
    macs = 0
    if c.has_embedding_transformation:
        macs += c.embedding_input_width * h
    per_layer = 0
    if c.use_bottleneck:
        per_layer += h * d * (2 if c.key_query_shared_bottleneck else 1)  # bottleneck(s)
        per_layer += d * h  # output bottleneck
    qk_in = d if c.use_bottleneck_attention or c.key_query_shared_bottleneck else h
    v_in = d if c.use_bottleneck_attention else h
    if not c.use_bottleneck:
        qk_in = v_in = h
    per_layer += 2 * qk_in * d + v_in * d + d * d  # q, k, v, attention output
    per_layer += c.num_feedforward_networks * 2 * d * i
    layers = c.num_hidden_layers if num_layers is None else num_layers
    macs = tokens * (macs + layers * per_layer) + layers * 2 * batch * seq * seq * d
    return 2.0 * macs


def pretraining_step_flops(c: MobileBertConfig, batch: int, seq: int, predictions: int) -> float:
    """Training FLOPs of one MLM (gathered) + NSP step."""
    h = c.hidden_size
    head_macs = batch * predictions * (h * h + h * c.vocab_size) + batch * (2 * h)
    if c.has_pooler:
        head_macs += batch * h * h
    return 3.0 * (encoder_forward_flops(c, batch, seq) + 2.0 * head_macs)


def device_peak_flops(device=None) -> float | None:
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_FLOPS.items():
        if kind.lower().startswith(name.lower()):
            return peak
    return None


def measure_matmul_peak(size: int = 1024, dtype=jnp.float32, repeats: int = 10,
                        trials: int = 3) -> float:
    """FLOP/s of a jitted square matmul on the default device (the CPU's practical peak): the
    best of `trials` timings, so that a moment of contention does not lower the peak (and
    inflate MFU)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), dtype)
    f = jax.jit(lambda x: x @ x * (1.0 / size))
    f(a).block_until_ready()
    best = 0.0
    for _ in range(trials):
        x = a
        start = time.perf_counter()
        for _ in range(repeats):
            x = f(x)
        x.block_until_ready()
        best = max(best, 2.0 * size ** 3 * repeats / (time.perf_counter() - start))
    return best


def mfu(flops_per_step: float, steps_per_second: float, peak_per_device: float | None,
        num_devices: int | None = None) -> float | None:
    if not peak_per_device:
        return None
    num_devices = num_devices or jax.device_count()
    return flops_per_step * steps_per_second / (peak_per_device * num_devices)
