"""The encoder: embeddings (trigram input + transformation), the stack of blocks and the pooler.

`MobileBertModel` (params under `bert/`) returns all 25 hidden states, the 24 masked pre-softmax
attention-score tensors, the sequence output and the pooled output.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from mobilebert_jax.models import layers
from mobilebert_jax.models.config import MobileBertConfig


@struct.dataclass
class EncoderOutput:
    hidden_states: tuple  # embedding output, then each block's output: num_hidden_layers + 1
    attention_scores: tuple  # per block, [B, N, S, S], masked and scaled, before softmax
    sequence_output: jnp.ndarray
    pooled_output: jnp.ndarray


def trigram(e: jnp.ndarray) -> jnp.ndarray:
    """concat([e_{t+1}, e_t, e_{t-1}]) with zero vectors beyond the sequence ends."""
    zeros = jnp.zeros_like(e[:, :1])
    left = jnp.concatenate([e[:, 1:], zeros], axis=1)
    right = jnp.concatenate([zeros, e[:, :-1]], axis=1)
    return jnp.concatenate([left, e, right], axis=-1)


class Embeddings(nn.Module):
    config: MobileBertConfig

    @nn.compact
    def __call__(self, input_ids, segment_ids, deterministic: bool = True):
        c = self.config
        init = layers.truncated_normal(c.initializer_range)
        table = self.param("word_embeddings",
                           nn.with_logical_partitioning(init, (layers.VOCAB, layers.EMBEDDING)),
                           (c.vocab_size, c.embedding_size), jnp.float32)
        e = jnp.take(table, input_ids, axis=0)
        if c.trigram_input:
            e = trigram(e)
        if c.has_embedding_transformation:
            e = layers.dense(c, c.hidden_size, (layers.EMBEDDING, layers.EMBED),
                             "embedding_transformation")(e)
        positions = self.param("position_embeddings",
                               nn.with_logical_partitioning(init, (layers.POSITION, layers.EMBED)),
                               (c.max_position_embeddings, c.hidden_size), jnp.float32)
        types = self.param("token_type_embeddings",
                           nn.with_logical_partitioning(init, (layers.TYPE, layers.EMBED)),
                           (c.type_vocab_size, c.hidden_size), jnp.float32)
        seq_len = input_ids.shape[1]
        h = (e.astype(jnp.float32) + positions[None, :seq_len]
             + jnp.take(types, segment_ids, axis=0))
        h = layers.make_norm(c, layers.EMBED, c.embedding_and_output_norm_eps)(h)
        h = layers.Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        return nn.with_logical_constraint(h, (layers.BATCH, layers.LENGTH, layers.ACT_EMBED))


REMAT_POLICIES = {"full": None,
                  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class Encoder(nn.Module):
    """`encoder/layer_{i}` for i < num_hidden_layers; each block rematerialised under the
    config's `remat` policy ("none": not at all)."""

    config: MobileBertConfig
    num_layers: int | None = None  # run only the first `num_layers` blocks (None: all)

    @nn.compact
    def __call__(self, h, key_mask, deterministic: bool = True):
        c = self.config
        block = layers.Block
        if c.remat != "none":
            block = nn.remat(layers.Block, static_argnums=(3,), policy=REMAT_POLICIES[c.remat])
        hidden_states, scores = [h], []
        n = c.num_hidden_layers if self.num_layers is None else self.num_layers
        for i in range(n):
            h, s = block(c, name=f"layer_{i}")(h, key_mask, deterministic)
            hidden_states.append(h)
            scores.append(s)
        return tuple(hidden_states), tuple(scores)


class Pooler(nn.Module):
    config: MobileBertConfig

    @nn.compact
    def __call__(self, sequence_output):
        first = sequence_output[:, 0]
        if not self.config.classifier_activation:
            return first
        dense = layers.dense(self.config, self.config.hidden_size,
                             (layers.EMBED, layers.EMBED_OUT), "dense")
        return jnp.tanh(dense(first).astype(jnp.float32))


class MobileBertModel(nn.Module):
    """Embeddings + encoder + pooler. `num_layers` truncates the stack (used by distillation)."""

    config: MobileBertConfig
    num_layers: int | None = None

    @nn.compact
    def __call__(self, input_ids, segment_ids=None, input_mask=None,
                 deterministic: bool = True) -> EncoderOutput:
        if segment_ids is None:
            segment_ids = jnp.zeros_like(input_ids)
        if input_mask is None:
            input_mask = jnp.ones_like(input_ids)
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        h = Embeddings(self.config, name="embeddings")(input_ids, segment_ids, deterministic)
        hidden_states, scores = Encoder(self.config, self.num_layers, name="encoder")(
            h, input_mask, deterministic)
        sequence_output = hidden_states[-1]
        pooled = Pooler(self.config, name="pooler")(sequence_output)
        return EncoderOutput(hidden_states, scores, sequence_output, pooled)
