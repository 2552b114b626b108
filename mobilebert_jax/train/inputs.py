"""Pretraining input for the trainers: tokenizer check, dataset preparation on first use, and
the train/eval loaders of this process."""
from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils

from mobilebert_jax.data import loader as loader_lib
from mobilebert_jax.data import prepare as prepare_lib
from mobilebert_jax.data import tokenizers
from mobilebert_jax.metrics.writers import log


def dataset_dir(config, workdir: str) -> str:
    return os.path.abspath(config.data.dataset_dir or os.path.join(workdir, "data"))


def prepare_if_needed(config, workdir: str, vocab_size: int) -> loader_lib.PretrainingDatasetInfo:
    """Checks the tokenizer against the model, prepares the dataset (process 0, others wait)
    unless `data.dataset_dir` already holds one, and checks its shapes against the config."""
    d = config.data
    tokenizer = tokenizers.load_tokenizer(d.tokenizer)
    tokenizers.check_vocab(tokenizer, vocab_size)
    out = dataset_dir(config, workdir)
    if prepare_lib.read_meta(out) is None:
        if config.data.dataset_dir and not d.corpus:
            raise FileNotFoundError(f"data.dataset_dir={out} holds no prepared dataset")
        if jax.process_index() == 0:
            log(f"preparing pretraining data from {d.corpus} into {out}")
            prepare_lib.prepare_dataset(
                d.corpus, d.tokenizer, out, seq_len=d.seq_len,
                max_predictions_per_seq=d.max_predictions_per_seq, dupe_factor=d.dupe_factor,
                short_seq_prob=d.short_seq_prob, masked_lm_prob=d.masked_lm_prob,
                seed=config.seed, eval_fraction=d.eval_fraction, static_masking=d.static_masking,
                whole_word_masking=d.whole_word_masking)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("pretraining data prepared")
    info = loader_lib.load_dataset_info(out)
    loader_lib.check_vocab_size(info, vocab_size)
    if (info.seq_len, info.max_predictions_per_seq) != (d.seq_len, d.max_predictions_per_seq):
        raise ValueError(f"dataset {out} has seq_len={info.seq_len}, max_predictions_per_seq="
                         f"{info.max_predictions_per_seq}; config asks for {d.seq_len}, "
                         f"{d.max_predictions_per_seq}")
    return info


def train_loader(config, info) -> loader_lib.PretrainingLoader:
    return loader_lib.make_pretraining_loader(
        info.data_dir, "train", config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())


def eval_loader(config, info) -> loader_lib.PretrainingLoader | None:
    """One pass over (at most `eval_steps` batches of) the held-out split; None if too small."""
    if info.num_examples.get("validation", 0) < config.batch_size:
        return None
    return loader_lib.make_pretraining_loader(
        info.data_dir, "validation", config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(), num_epochs=1,
        shuffle=False, dynamic_masking=False if not info.static_masking else None)
