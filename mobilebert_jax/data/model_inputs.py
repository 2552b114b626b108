"""The model's inputs for one text or a text pair: `[CLS] a [SEP] (b [SEP])`, padded.

Used by every sentence-level task (GLUE, your own files) and by prediction, so that training,
evaluation and `predict` feed the model the same way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

INPUT_NAMES = ("input_ids", "input_mask", "segment_ids")


def truncate_pair_lengths(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Lengths after BERT's pair truncation: drop the last token of the longer side (of the
    second side on a tie) until both fit in `max_tokens`."""
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return len_a, len_b
    gap = abs(len_a - len_b)
    if excess <= gap:
        return (len_a - excess, len_b) if len_a > len_b else (len_a, len_b - excess)
    common = min(len_a, len_b)
    rest = excess - gap
    return common - rest // 2, common - (rest + 1) // 2


def encode_sentences(tokenizer, texts_a: Sequence[str], texts_b: Sequence[str | None] | None,
                     max_seq_length: int) -> dict[str, np.ndarray]:
    """int32 `input_ids`, `input_mask` (1 for real tokens, 0 for padding) and `segment_ids`
    (0 for the first text, 1 for the second) of shape [N, max_seq_length]; `texts_b` None (or
    a None entry) for single texts."""
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for tokens")
    n = len(texts_a)
    ids_a = tokenizer.encode_batch(list(texts_a))
    pair_idx = [] if texts_b is None else [i for i, t in enumerate(texts_b) if t is not None]
    ids_b = dict(zip(pair_idx, tokenizer.encode_batch([texts_b[i] for i in pair_idx])))
    input_ids = np.full((n, max_seq_length), tokenizer.pad_id, dtype=np.int32)
    input_mask = np.zeros((n, max_seq_length), dtype=np.int32)
    segment_ids = np.zeros((n, max_seq_length), dtype=np.int32)
    for i, a in enumerate(ids_a):
        b = ids_b.get(i)
        if b is None:
            tokens = [tokenizer.cls_id, *a[:max_seq_length - 2], tokenizer.sep_id]
            first = len(tokens)
        else:
            len_a, len_b = truncate_pair_lengths(len(a), len(b), max_seq_length - 3)
            tokens = [tokenizer.cls_id, *a[:len_a], tokenizer.sep_id, *b[:len_b],
                      tokenizer.sep_id]
            first = len_a + 2
        input_ids[i, :len(tokens)] = tokens
        input_mask[i, :len(tokens)] = 1
        segment_ids[i, first:len(tokens)] = 1
    return {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids}
