"""Pretraining data preparation: corpus -> tokenized NSP pairs -> TFDS ArrayRecord dataset.

    python -m mobilebert_jax.data.prepare --corpus=gensim_wiki --tokenizer=bert-base-uncased \\
        --seq_len=128 --out=/tmp/pretrain_data

writes, atomically (a temp directory renamed into place):

    OUT/pretraining_meta.json     settings, vocabulary facts and example counts
    OUT/vocab_arrays.npz          replacement_ids and continuation_mask, for masking at load time
    OUT/mobilebert_pretraining/1.0.0/*.array_record-*   TFDS dataset, splits train + validation

Each record holds the unmasked `token_ids` (`[CLS] A [SEP] B [SEP]`), `segment_ids` and
`next_sentence_label`; with static masking the stored `token_ids` are already masked and
`masked_lm_positions` / `masked_lm_ids` are stored too. The validation split is made from
held-out documents (`eval_fraction`), so no text is shared between the splits.
`prepare_dataset` is the same as a function; it reuses a complete dataset prepared with the
same settings.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from mobilebert_jax import cli, files
from mobilebert_jax.data import corpus as corpus_lib
from mobilebert_jax.data import pretraining
from mobilebert_jax.data import tokenizers

FORMAT_VERSION = 1
DATASET_NAME = "mobilebert_pretraining"
DATASET_VERSION = "1.0.0"
META_FILE = "pretraining_meta.json"
VOCAB_ARRAYS_FILE = "vocab_arrays.npz"
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"
_ENCODE_CHUNK = 8192


def tfds_dir(data_dir: str) -> str:
    """The TFDS builder directory inside a prepared dataset directory."""
    return files.join(data_dir, DATASET_NAME, DATASET_VERSION)


def _features(static_masking: bool):
    import tensorflow_datasets as tfds

    def ids():
        return tfds.features.Tensor(shape=(None,), dtype=np.int32,
                                    encoding=tfds.features.Encoding.BYTES)

    spec = {"token_ids": ids(), "segment_ids": ids(),
            "next_sentence_label": tfds.features.Scalar(dtype=np.int32)}
    if static_masking:
        spec.update(masked_lm_positions=ids(), masked_lm_ids=ids())
    return tfds.features.FeaturesDict(spec)


def _progress(iterable, progress: bool, **kwargs):
    if not progress:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, file=sys.stderr, **kwargs)


def tokenize_documents(docs: Sequence[Sequence[str]], tokenizer: tokenizers.Tokenizer,
                       progress: bool = False) -> list[list[list[int]]]:
    """Token ids of every sentence, grouped by document (batch encoding, in chunks)."""
    flat = [s for doc in docs for s in doc]
    encoded: list[list[int]] = []
    starts = range(0, len(flat), _ENCODE_CHUNK)
    for start in _progress(starts, progress, desc="tokenize", unit="chunk"):
        encoded.extend(tokenizer.encode_batch(flat[start:start + _ENCODE_CHUNK]))
    out, pos = [], 0
    for doc in docs:
        out.append(encoded[pos:pos + len(doc)])
        pos += len(doc)
    return out


def split_documents(num_docs: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the train and held-out documents (at least one each when eval_fraction>0)."""
    order = list(range(num_docs))
    random.Random(seed ^ 0x5EED).shuffle(order)
    if eval_fraction <= 0 or num_docs < 2:
        return sorted(order), []
    n_eval = max(2 if num_docs >= 4 else 1, int(round(eval_fraction * num_docs)))
    n_eval = min(n_eval, num_docs - 1)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def _check_settings(seq_len, max_predictions_per_seq, dupe_factor, short_seq_prob,
                    masked_lm_prob, eval_fraction) -> None:
    if seq_len < 8:
        raise ValueError(f"seq_len={seq_len} is too short (need at least 8)")
    if not 1 <= max_predictions_per_seq <= seq_len:
        raise ValueError(f"max_predictions_per_seq={max_predictions_per_seq} must be in "
                         f"[1, seq_len={seq_len}]")
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor={dupe_factor} must be at least 1")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob={short_seq_prob} must be in [0, 1]")
    if not 0.0 < masked_lm_prob < 1.0:
        raise ValueError(f"masked_lm_prob={masked_lm_prob} must be in (0, 1)")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={eval_fraction} must be in [0, 1)")


def read_meta(data_dir: str) -> dict[str, Any] | None:
    """The metadata of a complete prepared dataset in `data_dir`, or None if there is none."""
    path = files.join(data_dir, META_FILE)
    if not files.isfile(path):
        return None
    try:
        meta = json.loads(files.read_bytes(path))
    except (OSError, ValueError):
        return None
    if not files.isfile(files.join(tfds_dir(data_dir), "dataset_info.json")):
        return None
    return meta


def _examples(pairs: list[pretraining.PairExample], static_cfg, seed: int, split_seed: int,
              progress: bool, desc: str):
    for index, ex in enumerate(_progress(pairs, progress, desc=desc, unit="ex")):
        record = {"token_ids": ex.token_ids, "segment_ids": ex.segment_ids,
                  "next_sentence_label": np.int32(ex.next_sentence_label)}
        if static_cfg is not None:
            masked, positions, labels = pretraining.mask_tokens(
                ex.token_ids, static_cfg, pretraining.masking_rng(seed + split_seed, 0, index))
            record.update(token_ids=masked, masked_lm_positions=positions,
                          masked_lm_ids=labels.astype(np.int32))
        yield index, record


def _write(tmp_dir: str, tokenizer, splits: dict, static_cfg, seed: int,
           progress: bool) -> None:
    import tensorflow_datasets as tfds

    np.savez(os.path.join(tmp_dir, VOCAB_ARRAYS_FILE),
             replacement_ids=tokenizer.replacement_ids(),
             continuation_mask=tokenizer.continuation_mask())
    from tensorflow_datasets.core.utils import tqdm_utils

    split_datasets = {
        name: _examples(pairs, static_cfg, seed, i * 1_000_003, progress, f"write {name}")
        for i, (name, pairs) in enumerate(splits.items()) if pairs}  # TFDS needs examples
    tfds_bars = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)  # one progress bar per stage is ours
    try:
        tfds.dataset_builders.store_as_tfds_dataset(
            name=DATASET_NAME, version=DATASET_VERSION,
            features=_features(static_cfg is not None), split_datasets=split_datasets,
            data_dir=tmp_dir, file_format="array_record", disable_shuffling=True,
            description="MobileBERT MLM+NSP pretraining pairs (BERT create_pretraining_data).")
    finally:
        tfds.display_progress_bar(tfds_bars)
    shutil.rmtree(os.path.join(tmp_dir, "downloads"), ignore_errors=True)


def _install(tmp_dir: str, out_dir: str) -> None:
    """Moves the finished local `tmp_dir` to `out_dir`, replacing what was there; to a URI, the
    old dataset's metadata goes first and the new one's last, so that a reader never takes a
    half-uploaded dataset for a complete one."""
    if files.is_remote(out_dir):
        if files.exists(files.join(out_dir, META_FILE)):
            files.remove_tree(files.join(out_dir, META_FILE))
        files.remove_tree(out_dir)
        files.copy_tree(tmp_dir, out_dir, last=[META_FILE])
        return
    old = None
    if os.path.lexists(out_dir):
        old = f"{out_dir}.old-{os.getpid()}"
        os.rename(out_dir, old)
    os.rename(tmp_dir, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def prepare_dataset(corpus_spec: str, tokenizer_path: str, out_dir: str, seq_len: int = 128,
                    max_predictions_per_seq: int | None = None, dupe_factor: int = 1,
                    short_seq_prob: float = 0.1, masked_lm_prob: float = 0.15,
                    seed: int = 12345, eval_fraction: float = 0.01,
                    static_masking: bool = False, whole_word_masking: bool = False,
                    lower_case: bool = True, overwrite: bool = False, reuse: bool = True,
                    progress: bool = True) -> str:
    """Prepares the pretraining dataset of `corpus_spec` in `out_dir` and returns `out_dir`.

    With `reuse`, a complete dataset already in `out_dir` with the same settings is kept as is.
    A non-empty `out_dir` holding anything else raises FileExistsError unless `overwrite`.
    """
    if max_predictions_per_seq is None:
        max_predictions_per_seq = pretraining.default_max_predictions(seq_len)
    _check_settings(seq_len, max_predictions_per_seq, dupe_factor, short_seq_prob,
                    masked_lm_prob, eval_fraction)
    spec = corpus_lib.parse_corpus_spec(corpus_spec)
    tokenizer = tokenizers.load_tokenizer(tokenizer_path, lower_case=lower_case)
    settings = {
        "format_version": FORMAT_VERSION, "corpus": corpus_spec,
        "corpus_fingerprint": corpus_lib.corpus_fingerprint(spec),
        "tokenizer_fingerprint": tokenizer.fingerprint(), "seq_len": seq_len,
        "max_predictions_per_seq": max_predictions_per_seq, "dupe_factor": dupe_factor,
        "short_seq_prob": short_seq_prob, "masked_lm_prob": masked_lm_prob, "seed": seed,
        "eval_fraction": eval_fraction, "static_masking": static_masking,
        "whole_word_masking": whole_word_masking, "lower_case": lower_case}
    out_dir = files.resolve(out_dir)
    files.check_can_create(out_dir)
    if files.listdir(out_dir):
        existing = read_meta(out_dir)
        if reuse and existing is not None and existing.get("settings") == settings:
            return out_dir
        if not overwrite:
            raise FileExistsError(f"output directory {out_dir} is not empty (pass --overwrite "
                                  "to replace it)")
    elif files.exists(out_dir) and not files.isdir(out_dir):
        raise FileExistsError(f"output path {out_dir} exists and is not a directory")

    start = time.perf_counter()
    docs = list(_progress(corpus_lib.iter_documents(spec), progress, desc="read corpus",
                          unit="doc"))
    if not docs:
        raise ValueError(f"corpus {corpus_spec!r} is empty (no documents with text)")
    text_bytes = corpus_lib.corpus_num_bytes(docs)
    token_docs = tokenize_documents(docs, tokenizer, progress)
    num_tokens = sum(len(s) for doc in token_docs for s in doc)
    if num_tokens == 0:
        raise ValueError(f"corpus {corpus_spec!r} tokenizes to no tokens")
    train_idx, eval_idx = split_documents(len(token_docs), eval_fraction, seed)
    for name, idx in ((TRAIN_SPLIT, train_idx), (EVAL_SPLIT, eval_idx)):
        if len(idx) == 1:
            raise ValueError(
                f"corpus {corpus_spec!r} has {len(token_docs)} document(s), so its {name} split "
                "has 1: next-sentence pairs draw a random next segment from another document of "
                "the split (give more documents, separated by blank lines"
                f"{', or eval_fraction=0' if name == EVAL_SPLIT else ''})")
    splits = {}
    for offset, (name, idx) in enumerate(((TRAIN_SPLIT, train_idx), (EVAL_SPLIT, eval_idx))):
        if not idx:
            splits[name] = []
            continue
        splits[name] = pretraining.create_pairs(
            [token_docs[i] for i in idx], seq_len, tokenizer.cls_id, tokenizer.sep_id,
            short_seq_prob=short_seq_prob, dupe_factor=dupe_factor, seed=seed + offset)
    if not splits[TRAIN_SPLIT]:
        raise ValueError(f"corpus {corpus_spec!r} yields no training pairs")
    static_cfg = None
    if static_masking:
        static_cfg = pretraining.MaskingConfig.from_tokenizer(
            tokenizer, seq_len, max_predictions_per_seq, masked_lm_prob, whole_word_masking)
    meta = {
        "settings": settings, "tokenizer_path": str(tokenizer.path),
        "vocab_size": tokenizer.vocab_size, "special_ids": tokenizer.special_ids,
        "num_examples": {k: len(v) for k, v in splits.items()},
        "num_documents": {TRAIN_SPLIT: len(train_idx), EVAL_SPLIT: len(eval_idx)},
        "text_bytes": text_bytes, "num_tokens": num_tokens,
        "next_sentence_random_fraction": float(np.mean(
            [p.next_sentence_label for p in splits[TRAIN_SPLIT]])),
    }
    # Written in a local directory (beside the output when local: one rename installs it; else a
    # temporary one, uploaded with the metadata last, as ArrayRecord files are written locally).
    parent = None if files.is_remote(out_dir) else os.path.dirname(out_dir)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{files.basename(out_dir)}.tmp-", dir=parent)
    os.chmod(tmp_dir, 0o755)
    try:
        _write(tmp_dir, tokenizer, splits, static_cfg, seed, progress)
        # The metadata goes last: its presence marks the dataset complete.
        meta["prepare_seconds"] = round(time.perf_counter() - start, 3)
        with open(os.path.join(tmp_dir, META_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        _install(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _define_flags():
    from absl import flags

    flags.DEFINE_string("corpus", "gensim_wiki", "Corpus spec: gensim_wiki[:PATH], "
                        "text:PATH[,PATH...], wiki_articles:PATH[,...], tfds:NAME[:SPLIT[:KEY]].")
    flags.DEFINE_string("tokenizer", tokenizers.BERT_UNCASED,
                        "WordPiece vocab.txt, SentencePiece .model, or bert-base-uncased.")
    flags.DEFINE_integer("seq_len", 128, "Maximum sequence length.")
    flags.DEFINE_integer("max_predictions_per_seq", None,
                         "Masked positions per sequence (default 20 if seq_len<=128 else 80).")
    flags.DEFINE_integer("dupe_factor", 1, "Passes over the corpus with different pair cuts.")
    flags.DEFINE_float("short_seq_prob", 0.1, "Probability of a shorter target length.")
    flags.DEFINE_float("masked_lm_prob", 0.15, "Fraction of tokens to mask.")
    flags.DEFINE_integer("seed", 12345, "Random seed.")
    flags.DEFINE_string("out", None, "Output dataset directory.")
    flags.DEFINE_float("eval_fraction", 0.01, "Fraction of documents held out for validation.")
    flags.DEFINE_bool("static_masking", False, "Store one fixed mask per example.")
    flags.DEFINE_bool("whole_word_masking", False, "Mask whole words.")
    flags.DEFINE_bool("lower_case", True, "Lower-case text (WordPiece).")
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty output directory.")
    return flags.FLAGS


@cli.guarded
def main(argv: Sequence[str]) -> None:
    del argv
    from absl import flags
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    if not f.out:
        raise ValueError("--out is required")
    out = prepare_dataset(
        f.corpus, f.tokenizer, f.out, seq_len=f.seq_len,
        max_predictions_per_seq=f.max_predictions_per_seq, dupe_factor=f.dupe_factor,
        short_seq_prob=f.short_seq_prob, masked_lm_prob=f.masked_lm_prob, seed=f.seed,
        eval_fraction=f.eval_fraction, static_masking=f.static_masking,
        whole_word_masking=f.whole_word_masking, lower_case=f.lower_case,
        overwrite=f.overwrite, reuse=False)
    meta = read_meta(out)
    print(f"wrote {out}: {meta['num_examples']} examples from {meta['text_bytes'] / 1e6:.2f} MB "
          f"of text in {meta['prepare_seconds']:.1f} s")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
