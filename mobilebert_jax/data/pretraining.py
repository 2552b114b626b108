"""MLM + NSP pretraining examples, following BERT's `create_pretraining_data.py`.

* `create_pairs` cuts tokenized documents into `[CLS] A [SEP] B [SEP]` sentence pairs: a target
  length of `seq_len - 3` tokens (a random shorter one with probability `short_seq_prob`),
  B the actual continuation or, with probability 0.5, a span of another document, both
  truncated by `truncate_seq_pair`. Pairs are stored unmasked (`PairExample`).
* `mask_tokens` picks 15% of the non-special tokens (at most `max_predictions_per_seq`,
  optionally whole words) and replaces 80% of them with [MASK], 10% with a random vocabulary
  token, keeping 10%. It is a pure function of the example and a numpy Generator;
  `masking_rng(seed, epoch, index)` makes dynamic masking deterministic.
* `make_features` / `features_from_mask` pad everything to fixed shapes and return the model's
  input dict: input_ids, input_mask, segment_ids, masked_lm_positions, masked_lm_ids,
  masked_lm_weights (float32, 0 on padding slots), next_sentence_labels.

NSP label convention: 0 = B follows A (is next), 1 = B is random.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import numpy as np

IS_NEXT = 0
IS_RANDOM_NEXT = 1
FEATURE_KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions",
                "masked_lm_ids", "masked_lm_weights", "next_sentence_labels")


def default_max_predictions(seq_len: int) -> int:
    """BERT's max_predictions_per_seq: 20 up to seq 128, else 80 (as at seq 512)."""
    return 20 if seq_len <= 128 else 80


@dataclasses.dataclass
class PairExample:
    """An unmasked NSP pair: `[CLS] A [SEP] B [SEP]` token ids, segment ids, NSP label."""

    token_ids: np.ndarray  # int32 [n]
    segment_ids: np.ndarray  # int32 [n]
    next_sentence_label: int


def truncate_seq_pair(tokens_a: list[int], tokens_b: list[int], max_num_tokens: int,
                      rng: random.Random) -> None:
    """BERT's truncation, in place: trims the longer list, from the front or back at random.

    The same draws as removing one token at a time, but counted first and cut once, so a
    sentence of a million tokens costs linear time."""
    lengths = [len(tokens_a), len(tokens_b)]
    front, back = [0, 0], [0, 0]
    while lengths[0] + lengths[1] > max_num_tokens:
        i = 0 if lengths[0] > lengths[1] else 1
        if rng.random() < 0.5:
            front[i] += 1
        else:
            back[i] += 1
        lengths[i] -= 1
    for i, tokens in enumerate((tokens_a, tokens_b)):
        if back[i]:
            del tokens[len(tokens) - back[i]:]
        if front[i]:
            del tokens[:front[i]]


def _pair_example(tokens_a: list[int], tokens_b: list[int], is_random_next: bool,
                  cls_id: int, sep_id: int) -> PairExample:
    ids = np.asarray([cls_id, *tokens_a, sep_id, *tokens_b, sep_id], dtype=np.int32)
    seg = np.zeros(len(ids), dtype=np.int32)
    seg[len(tokens_a) + 2:] = 1
    return PairExample(ids, seg, IS_RANDOM_NEXT if is_random_next else IS_NEXT)


def create_pairs_from_document(documents: Sequence[Sequence[Sequence[int]]], document_index: int,
                               seq_len: int, short_seq_prob: float, rng: random.Random,
                               cls_id: int, sep_id: int,
                               random_next_prob: float = 0.5) -> list[PairExample]:
    """BERT's `create_instances_from_document` for one document of tokenized segments."""
    document = documents[document_index]
    max_num_tokens = seq_len - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    examples: list[PairExample] = []
    current_chunk: list[Sequence[int]] = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = [t for seg in current_chunk[:a_end] for t in seg]
                tokens_b: list[int] = []
                is_random_next = len(current_chunk) == 1 or rng.random() < random_next_prob
                if is_random_next:
                    target_b_length = target_seq_length - len(tokens_a)
                    random_index = document_index
                    for _ in range(10):
                        random_index = rng.randint(0, len(documents) - 1)
                        if random_index != document_index:
                            break
                    random_document = documents[random_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    # The unused segments go back to be used in the next pair.
                    i -= len(current_chunk) - a_end
                else:
                    for seg in current_chunk[a_end:]:
                        tokens_b.extend(seg)
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                if tokens_a and tokens_b:
                    examples.append(_pair_example(tokens_a, tokens_b, is_random_next,
                                                  cls_id, sep_id))
            current_chunk = []
            current_length = 0
        i += 1
    return examples


def create_pairs(documents: Sequence[Sequence[Sequence[int]]], seq_len: int, cls_id: int,
                 sep_id: int, short_seq_prob: float = 0.1, dupe_factor: int = 1,
                 seed: int = 12345, random_next_prob: float = 0.5) -> list[PairExample]:
    """NSP pairs of all documents (lists of tokenized segments), `dupe_factor` passes over the
    data with different random cuts; shuffled; deterministic in `seed`."""
    if seq_len < 5:
        raise ValueError(f"seq_len={seq_len} is too short for [CLS] A [SEP] B [SEP]")
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor={dupe_factor} must be at least 1")
    documents = [[list(s) for s in doc if len(s)] for doc in documents]
    documents = [doc for doc in documents if doc]
    if len(documents) < 2:
        raise ValueError(f"{len(documents)} non-empty document(s): next-sentence pairs need at "
                         "least 2, as a random next segment comes from another document")
    rng = random.Random(seed)
    rng.shuffle(documents)
    examples: list[PairExample] = []
    for _ in range(dupe_factor):
        for index in range(len(documents)):
            examples.extend(create_pairs_from_document(
                documents, index, seq_len, short_seq_prob, rng, cls_id, sep_id,
                random_next_prob))
    rng.shuffle(examples)
    return examples


@dataclasses.dataclass(frozen=True, eq=False)
class MaskingConfig:
    """What masking needs to know about the vocabulary and the fixed shapes."""

    seq_len: int
    max_predictions_per_seq: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    replacement_ids: np.ndarray  # ids random replacements are drawn from (no specials)
    continuation_mask: np.ndarray | None = None  # bool [vocab]: "##"-style pieces
    masked_lm_prob: float = 0.15
    whole_word_masking: bool = False

    def __post_init__(self):
        if self.whole_word_masking and self.continuation_mask is None:
            raise ValueError("whole-word masking needs the tokenizer's continuation mask")
        if len(self.replacement_ids) == 0:
            raise ValueError("no replacement token ids for random masking")

    @classmethod
    def from_tokenizer(cls, tokenizer, seq_len: int, max_predictions_per_seq: int,
                       masked_lm_prob: float = 0.15,
                       whole_word_masking: bool = False) -> "MaskingConfig":
        return cls(seq_len=seq_len, max_predictions_per_seq=max_predictions_per_seq,
                   pad_id=tokenizer.pad_id, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                   mask_id=tokenizer.mask_id, replacement_ids=tokenizer.replacement_ids(),
                   continuation_mask=tokenizer.continuation_mask(),
                   masked_lm_prob=masked_lm_prob, whole_word_masking=whole_word_masking)


def masking_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator of one example's dynamic mask: a function of (seed, epoch, index) only."""
    # Philox is counter-based: distinct keys give independent streams (no entropy gathering).
    key = [int(seed) & (2**64 - 1), ((int(epoch) << 40) + int(index)) & (2**64 - 1)]
    return np.random.Generator(np.random.Philox(counter=0, key=key))


def _maskable_positions(token_ids: np.ndarray, config: MaskingConfig) -> np.ndarray:
    special = ((token_ids == config.cls_id) | (token_ids == config.sep_id)
               | (token_ids == config.pad_id))
    return np.flatnonzero(~special)


def num_to_predict(num_maskable: int, config: MaskingConfig) -> int:
    """round(masked_lm_prob * maskable tokens), at least 1, at most max_predictions_per_seq."""
    if num_maskable == 0:
        return 0
    n = int(np.floor(num_maskable * config.masked_lm_prob + 0.5))
    return min(config.max_predictions_per_seq, max(1, n), num_maskable)


def _choose_positions(token_ids: np.ndarray, config: MaskingConfig,
                      rng: np.random.Generator) -> np.ndarray:
    cand = _maskable_positions(token_ids, config)
    n = num_to_predict(len(cand), config)
    if n == 0:
        return cand[:0]
    if not config.whole_word_masking:
        return np.sort(rng.permutation(cand)[:n])
    # Group each word's pieces: a continuation piece joins the previous maskable position.
    cont = config.continuation_mask[token_ids[cand]]
    joins = cont & np.concatenate([[False], np.diff(cand) == 1])
    word_starts = np.flatnonzero(~joins)
    words = np.split(cand, word_starts[1:])
    chosen: list[np.ndarray] = []
    count = 0
    for w in rng.permutation(len(words)):
        if count >= n:
            break
        if count + len(words[w]) > n:
            continue
        chosen.append(words[w])
        count += len(words[w])
    return np.sort(np.concatenate(chosen)) if chosen else cand[:0]


def mask_tokens(token_ids: np.ndarray, config: MaskingConfig, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT masking of one unpadded example.

    Returns (masked token ids, masked positions (ascending), original ids at those positions).
    Of the chosen positions 80% become [MASK], 10% a random non-special token, 10% stay.
    """
    token_ids = np.asarray(token_ids, dtype=np.int32)
    positions = _choose_positions(token_ids, config, rng).astype(np.int32)
    labels = token_ids[positions]
    u = rng.random(len(positions))
    random_ids = config.replacement_ids[rng.integers(0, len(config.replacement_ids),
                                                     size=len(positions))]
    new = np.where(u < 0.8, config.mask_id, np.where(u < 0.9, labels, random_ids))
    masked = token_ids.copy()
    masked[positions] = new
    return masked, positions, labels


def features_from_mask(token_ids: np.ndarray, segment_ids: np.ndarray, next_sentence_label: int,
                       positions: np.ndarray, labels: np.ndarray, config: MaskingConfig,
                       masked_token_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Fixed-shape model features of an example and its mask (positions, original ids).

    `masked_token_ids` is the masked input; when None it is rebuilt from `token_ids`, which
    then must already be the masked input (as stored by static masking).
    """
    s, p = config.seq_len, config.max_predictions_per_seq
    n = len(token_ids)
    if n > s:
        raise ValueError(f"example of {n} tokens exceeds seq_len={s}")
    if len(positions) > p:
        raise ValueError(f"{len(positions)} masked positions exceed max_predictions_per_seq={p}")
    ids = masked_token_ids if masked_token_ids is not None else token_ids
    input_ids = np.full(s, config.pad_id, dtype=np.int32)
    input_ids[:n] = ids
    input_mask = np.zeros(s, dtype=np.int32)
    input_mask[:n] = 1
    seg = np.zeros(s, dtype=np.int32)
    seg[:n] = segment_ids
    mlm_pos = np.zeros(p, dtype=np.int32)
    mlm_ids = np.zeros(p, dtype=np.int32)
    mlm_w = np.zeros(p, dtype=np.float32)
    k = len(positions)
    mlm_pos[:k] = positions
    mlm_ids[:k] = labels
    mlm_w[:k] = 1.0
    return {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": seg,
            "masked_lm_positions": mlm_pos, "masked_lm_ids": mlm_ids,
            "masked_lm_weights": mlm_w,
            "next_sentence_labels": np.asarray(next_sentence_label, dtype=np.int32)}


def make_features(token_ids: np.ndarray, segment_ids: np.ndarray, next_sentence_label: int,
                  config: MaskingConfig, seed: int, epoch: int, index: int
                  ) -> dict[str, np.ndarray]:
    """Dynamic masking: the fixed-shape features of example `index` in `epoch`."""
    masked, positions, labels = mask_tokens(token_ids, config, masking_rng(seed, epoch, index))
    return features_from_mask(token_ids, segment_ids, next_sentence_label, positions, labels,
                              config, masked_token_ids=masked)
