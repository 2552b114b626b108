"""Task heads and the full models: pretraining (MLM + NSP), sequence classification/regression and
SQuAD span prediction.

MLM head (`cls/predictions`): t = LayerNorm(act(Dense(h))) — a real LayerNorm even in the NoNorm
student — then logits = t · concat([word_embeddings, extra_output_weights], axis=1)ᵀ + output_bias,
the first `embedding_size` columns tied to the input table (computed as one matmul per table).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from mobilebert_jax.models import layers
from mobilebert_jax.models.config import MobileBertConfig
from mobilebert_jax.models.encoder import MobileBertModel


@struct.dataclass
class PreTrainingOutput:
    hidden_states: tuple
    attention_scores: tuple
    sequence_output: jnp.ndarray
    pooled_output: jnp.ndarray
    mlm_logits: jnp.ndarray  # [B, P, V] at the gathered positions, or [B, S, V]
    nsp_logits: jnp.ndarray  # [B, 2]; label 0 = "B follows A"


@struct.dataclass
class ClassificationOutput:
    logits: jnp.ndarray  # [B, num_labels] (1: regression), or [B, S, num_labels] for tagging
    pooled_output: jnp.ndarray


@struct.dataclass
class SpanOutput:
    start_logits: jnp.ndarray  # [B, S]
    end_logits: jnp.ndarray


def gather_positions(sequence: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
    """[B, S, H] gathered at [B, P] positions → [B, P, H]."""
    return jnp.take_along_axis(sequence, positions[..., None].astype(jnp.int32), axis=1)


class MaskedLMHead(nn.Module):
    """`cls/predictions`: transform, then scores against the tied + extra output embedding."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, h, word_embeddings):
        c = self.config
        t = TransformDense(c, name="transform")(h)
        dtype = layers.compute_dtype(c)
        t = t.astype(dtype)

        def scores(x, table):  # one matmul per table, float32 logits: the tables stay in
            # their own shardings (no concatenated [V, H] copy to reshard, whose gradient an
            # FSDP mesh would all-reduce whole)
            return jnp.einsum("...h,vh->...v", x, table.astype(dtype),
                              preferred_element_type=jnp.float32)

        embedding_size = word_embeddings.shape[1]
        logits = scores(t[..., :embedding_size], word_embeddings)
        if c.mlm_extra_columns:
            extra = self.param(
                "extra_output_weights",
                nn.with_logical_partitioning(layers.truncated_normal(c.initializer_range),
                                             (layers.VOCAB, layers.EMBED)),
                (c.vocab_size, c.mlm_extra_columns), jnp.float32)
            logits = logits + scores(t[..., embedding_size:], extra)
        bias = self.param("output_bias",
                          nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                       (layers.VOCAB,)),
                          (c.vocab_size,), jnp.float32)
        return logits + bias


class TransformDense(nn.Module):
    """`transform/dense` + activation + `transform/LayerNorm` (always a true LayerNorm)."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, h):
        c = self.config
        t = layers.dense(c, c.hidden_size, (layers.EMBED, layers.EMBED_OUT), "dense")(h)
        t = layers.activation(c.hidden_act)(t)
        return layers.Norm("layer_norm", c.layer_norm_eps, layers.EMBED, name="LayerNorm")(t)


class NextSentenceHead(nn.Module):
    """`cls/seq_relationship`: output_weights [2, H] (TF1 layout) and output_bias."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, pooled):
        c = self.config
        w = self.param("output_weights",
                       nn.with_logical_partitioning(layers.truncated_normal(c.initializer_range),
                                                    (layers.CLASSES, layers.EMBED)),
                       (2, c.hidden_size), jnp.float32)
        b = self.param("output_bias",
                       nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                    (layers.CLASSES,)),
                       (2,), jnp.float32)
        return pooled.astype(jnp.float32) @ w.T + b


class PreTrainingHeads(nn.Module):
    config: MobileBertConfig

    @nn.compact
    def __call__(self, sequence_output, pooled_output, word_embeddings, masked_lm_positions=None):
        h = sequence_output
        if masked_lm_positions is not None:
            h = gather_positions(h, masked_lm_positions)
        mlm = MaskedLMHead(self.config, name="predictions")(h, word_embeddings)
        nsp = NextSentenceHead(self.config, name="seq_relationship")(pooled_output)
        return mlm, nsp


def _word_embeddings(bert: nn.Module) -> jnp.ndarray:
    table = bert.variables["params"]["embeddings"]["word_embeddings"]
    return nn.meta.unbox(table)


class MobileBertForPreTraining(nn.Module):
    """Encoder + MLM + NSP heads (`bert/...`, `cls/...`)."""

    config: MobileBertConfig
    num_layers: int | None = None

    @nn.compact
    def __call__(self, input_ids, segment_ids=None, input_mask=None,
                 deterministic: bool = True, masked_lm_positions=None) -> PreTrainingOutput:
        bert = MobileBertModel(self.config, self.num_layers, name="bert")
        out = bert(input_ids, segment_ids, input_mask, deterministic)
        mlm, nsp = PreTrainingHeads(self.config, name="cls")(
            out.sequence_output, out.pooled_output, _word_embeddings(bert), masked_lm_positions)
        return PreTrainingOutput(out.hidden_states, out.attention_scores, out.sequence_output,
                                 out.pooled_output, mlm, nsp)


class MobileBertForSequenceClassification(nn.Module):
    """Dropout on the pooled [CLS] vector, then `classifier` (num_labels=1: regression)."""

    config: MobileBertConfig
    num_labels: int
    classifier_dropout: float = 0.1

    @nn.compact
    def __call__(self, input_ids, segment_ids=None, input_mask=None,
                 deterministic: bool = True) -> ClassificationOutput:
        out = MobileBertModel(self.config, name="bert")(input_ids, segment_ids,
                                                        input_mask, deterministic)
        x = layers.Dropout(self.classifier_dropout)(out.pooled_output, deterministic=deterministic)
        logits = layers.dense(self.config, self.num_labels, (layers.EMBED, layers.CLASSES),
                              "classifier")(x)
        return ClassificationOutput(logits.astype(jnp.float32), out.pooled_output)


class MobileBertForTokenClassification(nn.Module):
    """Dropout on every position's final hidden state, then `classifier` (tagging, e.g. NER)."""

    config: MobileBertConfig
    num_labels: int
    classifier_dropout: float = 0.1

    @nn.compact
    def __call__(self, input_ids, segment_ids=None, input_mask=None,
                 deterministic: bool = True) -> ClassificationOutput:
        out = MobileBertModel(self.config, name="bert")(input_ids, segment_ids,
                                                        input_mask, deterministic)
        x = layers.Dropout(self.classifier_dropout)(out.sequence_output,
                                                    deterministic=deterministic)
        logits = layers.dense(self.config, self.num_labels, (layers.EMBED, layers.CLASSES),
                              "classifier")(x)
        return ClassificationOutput(logits.astype(jnp.float32), out.pooled_output)


class MobileBertForQuestionAnswering(nn.Module):
    """`qa_outputs`: a Dense H→2 on every position gives start and end logits."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, input_ids, segment_ids=None, input_mask=None,
                 deterministic: bool = True) -> SpanOutput:
        out = MobileBertModel(self.config, name="bert")(input_ids, segment_ids,
                                                        input_mask, deterministic)
        logits = layers.dense(self.config, 2, (layers.EMBED, layers.CLASSES),
                              "qa_outputs")(out.sequence_output)
        logits = logits.astype(jnp.float32)
        return SpanOutput(logits[..., 0], logits[..., 1])
