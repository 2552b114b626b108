"""Building blocks of the encoder: dense layers with logical axes, NoNorm/LayerNorm, attention,
stacked feed-forward networks and the bottleneck transformer block (reference §2).

Module and parameter names mirror the official TF1 variable names (`attention/self/query/kernel`,
`ffn_layer_0/output/FakeLayerNorm/gamma`, ...), so the TF1 checkpoint maps one to one.

Precision: kernels are applied in the config's compute dtype (float32 or bfloat16); parameters,
norms, the residual stream, attention scores and softmax stay in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from mobilebert_jax.models.config import MobileBertConfig

# Logical axis names used on parameters and activations; `parallel.py` maps them to mesh axes.
BATCH, LENGTH = "batch", "length"
VOCAB, EMBEDDING, EMBED = "vocab", "embedding", "embed"  # vocab rows, 128-d table, 512-d hidden
INNER, QKV, MLP = "inner", "qkv", "mlp"  # bottleneck width, attention projections, FFN width
# the input side of the kernels that leave the attention and the FFN (row-parallel kernels)
QKV_ROWS, MLP_ROWS = "qkv_rows", "mlp_rows"
POSITION, TYPE, CLASSES = "position", "token_type", "classes"
EMBED_OUT = "embed_out"  # output side of the hidden→hidden kernels (pooler, MLM transform)
ACT_EMBED = "act_embed"  # feature axis of hidden-state activations


DROPOUT_BITS = 16  # the resolution of a dropout rate: multiples of 2**-16


class Dropout(nn.Module):
    """Inverted dropout (as `flax.linen.Dropout`: the `dropout` RNG stream, `deterministic`
    off in training) from 16 random bits per element: each 32-bit word of `jax.random.bits`
    gives two elements their draws, so the PRNG (threefry on CPU and GPU) runs half as many
    times, and the compare is on integers. Bernoulli's float draw costs about twice as much,
    which in a fine-tuning step of BERT's attention probabilities is a quarter of the step on a
    CPU. The rate is rounded to a multiple of 2**-16 (an error below 8e-6); kept values are
    scaled by 1 / (1 - that rate)."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        levels = 1 << DROPOUT_BITS
        threshold = int(round(float(self.rate) * levels))
        if deterministic or threshold == 0:
            return x
        if threshold >= levels:
            return jnp.zeros_like(x)
        # The words keep every leading axis of `x` (batch, heads, ...), so they shard as `x`
        # does; only the last axis is halved and split back.
        shape = x.shape if x.ndim else (1,)
        half = (shape[-1] + 1) // 2
        words = jax.random.bits(self.make_rng("dropout"), shape[:-1] + (half,), jnp.uint32)
        draws = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(shape[:-1] + (2 * half,))
        if 2 * half != shape[-1]:
            draws = draws[..., :shape[-1]]
        keep = draws.reshape(x.shape) >= threshold
        scale = jnp.asarray(levels / (levels - threshold), x.dtype)
        return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))


def compute_dtype(config: MobileBertConfig):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def activation(name: str):
    return {
        "gelu": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
        "relu": jax.nn.relu,
        "relu6": jax.nn.relu6,
        "tanh": jnp.tanh,
    }[name]


def truncated_normal(stddev: float):
    """The TF1 initializer: normal(0, stddev) truncated at two standard deviations."""
    return nn.initializers.truncated_normal(stddev=stddev)


def dense(config: MobileBertConfig, features: int, axes: tuple[str, str], name: str,
          use_bias: bool = True) -> nn.Dense:
    """A Dense layer whose kernel and bias carry logical axis names."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=compute_dtype(config), param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(truncated_normal(config.initializer_range), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name)


def norm_name(config: MobileBertConfig) -> str:
    return "FakeLayerNorm" if config.normalization_type == "no_norm" else "LayerNorm"


class Norm(nn.Module):
    """NoNorm (`h * gamma + beta`, no statistics) or LayerNorm, per `kind`; always in float32."""

    kind: str
    eps: float
    axis_name: str

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        gamma = self.param("gamma", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                 (self.axis_name,)),
                           (features,), jnp.float32)
        beta = self.param("beta", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               (self.axis_name,)),
                          (features,), jnp.float32)
        x = x.astype(jnp.float32)
        if self.kind == "layer_norm":
            mean = jnp.mean(x, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
            x = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return x * gamma + beta


def make_norm(config: MobileBertConfig, axis_name: str, eps: float | None = None) -> Norm:
    return Norm(config.normalization_type, config.layer_norm_eps if eps is None else eps,
                axis_name, name=norm_name(config))


class DenseNorm(nn.Module):
    """`Norm(dropout?(Dense(x)) + residual?)`: the pattern of every projection in a block."""

    config: MobileBertConfig
    features: int
    axes: tuple[str, str]
    use_dropout: bool = False
    norm_eps: float | None = None

    @nn.compact
    def __call__(self, x, residual=None, deterministic: bool = True):
        h = dense(self.config, self.features, self.axes, "dense")(x)
        if self.use_dropout:
            h = Dropout(self.config.hidden_dropout_prob)(h, deterministic=deterministic)
        h = h.astype(jnp.float32)
        if residual is not None:
            h = h + residual
        return make_norm(self.config, self.axes[1], self.norm_eps)(h)


class SelfAttention(nn.Module):
    """Multi-head attention over `inner_size` columns split into contiguous heads.

    Returns the context [B,S,d] and the masked, scaled, pre-softmax scores [B,N,S,S] (float32).
    """

    config: MobileBertConfig

    @nn.compact
    def __call__(self, q_in, k_in, v_in, key_mask, deterministic: bool = True):
        c = self.config
        d, n = c.inner_size, c.num_attention_heads

        def project(x, name):
            in_axis = EMBED if x.shape[-1] == c.hidden_size else INNER
            y = dense(c, d, (in_axis, QKV), name)(x)
            return y.reshape(y.shape[:-1] + (n, d // n))

        q, k, v = project(q_in, "query"), project(k_in, "key"), project(v_in, "value")
        scores = jnp.einsum("bqnh,bknh->bnqk", q, k).astype(jnp.float32)
        scores = scores / jnp.sqrt(jnp.float32(d // n))
        keep = key_mask[:, None, None, :].astype(bool)
        if c.attention_mask_mode == "add":
            scores = scores + (1.0 - keep.astype(jnp.float32)) * -10000.0
        else:
            scores = jnp.where(keep, scores, -6.0)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = Dropout(c.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        ctx = jnp.einsum("bnqk,bknh->bqnh", probs.astype(v.dtype), v)
        return ctx.reshape(ctx.shape[:2] + (d,)), scores


class Attention(nn.Module):
    """`attention/self` then `attention/output`: Norm(dropout?(Dense(ctx)) + residual)."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, q_in, k_in, v_in, residual, key_mask, deterministic: bool = True):
        c = self.config
        ctx, scores = SelfAttention(c, name="self")(q_in, k_in, v_in, key_mask, deterministic)
        out_axis = INNER if c.use_bottleneck else EMBED
        out = DenseNorm(c, c.inner_size, (QKV_ROWS, out_axis), use_dropout=not c.use_bottleneck,
                        name="output")(ctx, residual, deterministic)
        return out, scores


class Intermediate(nn.Module):
    """`intermediate/dense` followed by the activation."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, x):
        in_axis = INNER if self.config.use_bottleneck else EMBED
        h = dense(self.config, self.config.intermediate_size, (in_axis, MLP), "dense")(x)
        return activation(self.config.hidden_act)(h)


class FeedForward(nn.Module):
    """One of the first F−1 stacked FFNs (`ffn_layer_j`): Norm(Dense(act(Dense(a))) + a)."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, a):
        c = self.config
        h = Intermediate(c, name="intermediate")(a)
        out_axis = INNER if c.use_bottleneck else EMBED
        return DenseNorm(c, c.inner_size, (MLP_ROWS, out_axis), name="output")(h, a)


class LayerOutput(nn.Module):
    """The last FFN's `output`: Norm(dropout?(Dense(h)) + a), then in bottleneck mode
    `output/bottleneck`: Norm(dropout(Dense(o)) + x) back to the hidden width."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, h, a, x, deterministic: bool = True):
        c = self.config
        out_axis = INNER if c.use_bottleneck else EMBED
        eps = c.embedding_and_output_norm_eps
        o = dense(c, c.inner_size, (MLP_ROWS, out_axis), "dense")(h)
        if not c.use_bottleneck:
            o = Dropout(c.hidden_dropout_prob)(o, deterministic=deterministic)
        o = make_norm(c, out_axis, eps)(o.astype(jnp.float32) + a)
        if not c.use_bottleneck:
            return o
        return DenseNorm(c, c.hidden_size, (INNER, EMBED), use_dropout=True,
                         name="bottleneck")(o, x, deterministic)


class Bottleneck(nn.Module):
    """`bottleneck/input` (and `bottleneck/attention` with a shared key/query bottleneck)."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        b = DenseNorm(c, c.inner_size, (EMBED, INNER), name="input")(x)
        s = None
        if c.key_query_shared_bottleneck:
            s = DenseNorm(c, c.inner_size, (EMBED, INNER), name="attention")(x)
        return b, s


class Block(nn.Module):
    """One transformer block (`layer_i`); returns (block output [B,S,H], attention scores)."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, x, key_mask, deterministic: bool = True):
        c = self.config
        if c.use_bottleneck:
            b, s = Bottleneck(c, name="bottleneck")(x)
            if c.use_bottleneck_attention:
                q_in = k_in = v_in = b
            elif c.key_query_shared_bottleneck:
                q_in, k_in, v_in = s, s, x
            else:
                q_in = k_in = v_in = x
            residual = b
        else:
            q_in = k_in = v_in = residual = x
        a, scores = Attention(c, name="attention")(q_in, k_in, v_in, residual, key_mask,
                                                   deterministic)
        for j in range(c.num_feedforward_networks - 1):
            a = FeedForward(c, name=f"ffn_layer_{j}")(a)
        h = Intermediate(c, name="intermediate")(a)
        y = LayerOutput(c, name="output")(h, a, x, deterministic)
        y = nn.with_logical_constraint(y, (BATCH, LENGTH, ACT_EMBED))
        return y, scores
