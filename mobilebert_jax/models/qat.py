"""Quantization-aware fine-tuning with qwix (Google's JAX quantization library).

`quantization_aware(model)` returns the same Linen model with int8 fake quantization where the
int8 TFLite export (`mobilebert_jax.export`, its default `INT8_FLOAT_OPS`) computes in int8:
every dense layer (`lax.dot_general`: the embedding transformation, the bottlenecks, the
Q/K/V and attention-output projections, the stacked FFNs, the pooler and the task head) gets
int8 weights (symmetric, per output channel) and int8 inputs, rounded in the forward pass with
straight-through gradients. The attention core (the two `einsum`s, i.e. TFLite's BATCH_MATMUL
and the softmax between them), the norms and the residual additions stay in float, as the
export keeps them. The parameter tree is the float model's (same paths, shapes and sharding
annotations), so a checkpoint fine-tuned this way converts and exports like any other: the
int8 export then calibrates activations on the parameters the training adapted to rounding.

Why qwix and not aqtp: qwix quantizes an unmodified Linen module by intercepting its ops,
where aqtp needs the model to take injected `dot_general` / einsum classes.
"""
from __future__ import annotations

import jax.numpy as jnp
import qwix
from flax import linen as nn

# dot_general only: the attention einsums (BATCH_MATMUL in TFLite) stay float, as in the export.
QUANTIZED_OPS = ("dot_general",)


def quantization_aware(model: nn.Module) -> nn.Module:
    """`model` with int8 weights and activations faked in every dense layer (see above)."""
    rule = qwix.QtRule(module_path=".*", op_names=QUANTIZED_OPS, weight_qtype=jnp.int8,
                       act_qtype=jnp.int8)
    return qwix.quantize_model(model, qwix.QtProvider([rule]))
