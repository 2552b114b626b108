"""Pretraining input for the trainers: tokenizer check, dataset preparation on first use, and
the train/eval loaders of this process."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mobilebert_jax import files
from mobilebert_jax.console import log
from mobilebert_jax.data import dataset_layout as layout
from mobilebert_jax.data import loader as loader_lib
from mobilebert_jax.data import prepare as prepare_lib
from mobilebert_jax.data import tokenizers


def dataset_dir(config, workdir: str) -> str:
    return files.resolve(config.data.dataset_dir or files.join(workdir, "data"))


def expected_settings(config, tokenizer) -> dict:
    """The dataset settings the config asks for (`layout.EXAMPLE_SETTINGS`)."""
    d = config.data
    return {"tokenizer_fingerprint": tokenizer.fingerprint(), "seq_len": d.seq_len,
            "max_predictions_per_seq": d.max_predictions_per_seq, "dupe_factor": d.dupe_factor,
            "short_seq_prob": d.short_seq_prob, "masked_lm_prob": d.masked_lm_prob,
            "whole_word_masking": d.whole_word_masking, "static_masking": d.static_masking,
            "eval_fraction": d.eval_fraction, "seed": d.seed}


def check_dataset_settings(info, config, tokenizer) -> None:
    """Refuses a dataset prepared with other settings than the config's, naming the field."""
    field = layout.settings_mismatch(info.meta, expected_settings(config, tokenizer))
    if field is None:
        return
    stored = info.meta.get("settings", {}).get(field)
    if field == "tokenizer_fingerprint":
        raise ValueError(
            f"dataset {info.data_dir} was tokenized with {info.meta.get('tokenizer_path')} "
            f"(fingerprint {stored}), not data.tokenizer={config.data.tokenizer} (fingerprint "
            f"{tokenizer.fingerprint()}); prepare it again or point data.dataset_dir elsewhere")
    raise ValueError(f"dataset {info.data_dir} was prepared with {field}={stored!r} but the "
                     f"config has data.{field}={config.data[field]!r}; prepare it again with "
                     "the config's settings (or set the config to the dataset's)")


def prepare_if_needed(config, workdir: str, vocab_size: int
                      ) -> tuple[loader_lib.PretrainingDatasetInfo, tokenizers.Tokenizer]:
    """Checks the tokenizer against the model, prepares the dataset unless `data.dataset_dir`
    already holds one, and checks its settings against the config; returns the dataset's info
    and the tokenizer (the trainer stores it in the workdir).

    Process 0 alone looks for the dataset and prepares it; every process then reaches the same
    collective with process 0's outcome, so hosts never wait on each other in different
    branches, and all of them fail alike when process 0 failed or when one cannot read it."""
    d = config.data
    tokenizer = tokenizers.load_tokenizer(d.tokenizer)
    tokenizers.check_vocab(tokenizer, vocab_size)
    out = dataset_dir(config, workdir)
    error = ""
    if jax.process_index() == 0 and layout.read_meta(out) is None:
        if config.data.dataset_dir and not d.corpus:
            error = f"data.dataset_dir={out} holds no prepared dataset"
        else:
            log(f"preparing pretraining data from {d.corpus} into {out}")
            try:
                prepare_lib.prepare_dataset(
                    d.corpus, d.tokenizer, out, seq_len=d.seq_len,
                    max_predictions_per_seq=d.max_predictions_per_seq,
                    dupe_factor=d.dupe_factor, short_seq_prob=d.short_seq_prob,
                    masked_lm_prob=d.masked_lm_prob, seed=d.seed,
                    eval_fraction=d.eval_fraction, static_masking=d.static_masking,
                    whole_word_masking=d.whole_word_masking, num_workers=d.num_workers)
            except (ValueError, OSError) as e:
                if jax.process_count() == 1:
                    raise
                error = f"preparing {out} failed on process 0: {e}"
    if not all_processes_agree(not error):
        raise FileNotFoundError(error or f"process 0 could not provide the dataset {out}")
    try:
        info = loader_lib.load_dataset_info(out)
        error = ""
    except (ValueError, OSError) as e:
        info, error = None, str(e)
    if not all_processes_agree(not error):
        raise FileNotFoundError(error or f"another process cannot read the dataset {out}; "
                                "every process needs the same (shared) dataset path")
    loader_lib.check_vocab_size(info, vocab_size)
    check_dataset_settings(info, config, tokenizer)
    return info, tokenizer


def all_processes_agree(ok: bool) -> bool:
    """True when `ok` holds on every process (a collective every process must reach)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def abstract_batch(global_batch_size: int, seq_len: int, max_predictions: int,
                   sharding) -> dict:
    """`jax.ShapeDtypeStruct`s of one global pretraining batch (the loader's features), to
    compile the steps ahead of any data."""
    shapes = {"input_ids": (seq_len,), "input_mask": (seq_len,), "segment_ids": (seq_len,),
              "masked_lm_positions": (max_predictions,), "masked_lm_ids": (max_predictions,),
              "masked_lm_weights": (max_predictions,), "next_sentence_labels": ()}
    return {k: jax.ShapeDtypeStruct((global_batch_size,) + shape,
                                    jnp.float32 if k == "masked_lm_weights" else jnp.int32,
                                    sharding=sharding)
            for k, shape in shapes.items()}


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
