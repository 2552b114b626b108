"""Pretraining data preparation, an Apache Beam pipeline: corpus -> tokenized documents ->
NSP sentence pairs per shard -> a TFDS ArrayRecord dataset. This module holds the dataset's
settings, staging and CLI; `beam_job.py` the Beam stages, `dataset_layout.py` the files they
write.

    python -m mobilebert_jax.data.prepare --corpus=gensim_wiki --tokenizer=bert-base-uncased \\
        --seq_len=128 --out=/tmp/pretrain_data [--num_workers=2] [-- BEAM PIPELINE OPTIONS]

runs locally on Beam's DirectRunner (in this process, or `--num_workers` local worker
processes); Beam pipeline options after `--` choose another runner (Dataflow, Flink, Spark) and
its settings, passed through unchanged. The stages:

1. read: the corpus is cut into read tasks (`corpus.read_tasks`: byte ranges of text files,
   example ranges of TFDS splits); a worker reads a task, tokenizes its documents (the
   tokenizer travels inside the pipeline as its file's bytes, so any runner's workers build it)
   and writes their token ids to one file under the staging directory's `.documents/`; what
   travels on through Beam is a reference per document (hash, key, file, offset), about 100
   bytes, so the shuffle and the runner's buffers do not grow with the token ids.
2. layout: each document's 64-bit hash (blake2b of the seed and the document's key) is all
   that is gathered in one place, with its text size: the sorted hashes fix the held-out
   documents (the `eval_fraction` with the smallest hashes) and the shard boundaries (equal
   shares of the text, at least two documents a shard).
3. shard: the references of a (split, shard) are grouped and sorted by hash, their ids read
   back from the read stage's files and cut into NSP pairs (random next segments and
   `dupe_factor` passes drawn within the shard, as BERT's create_pretraining_data did per
   input file), serialized as TFDS examples and written as one ArrayRecord file. A worker
   holds one read task or one shard at a time: memory follows the shard size (`shard_mb` of
   text), not the corpus size.
4. finish (this process): the TFDS metadata from the shards' counts, the vocabulary arrays, and
   last `pretraining_meta.json`, whose presence marks the dataset complete.

The output is a function of the corpus and the settings only: the same bytes for any worker
count and runner. Layout:

    OUT/pretraining_meta.json     settings, vocabulary facts and example counts (written last)
    OUT/vocab_arrays.npz          replacement_ids and continuation_mask, for masking at load time
    OUT/mobilebert_pretraining/1.0.0/mobilebert_pretraining-{train,validation}.array_record-*

Each record holds the unmasked `token_ids` (`[CLS] A [SEP] B [SEP]`), `segment_ids` and
`next_sentence_label`; with static masking the stored `token_ids` are already masked and
`masked_lm_positions` / `masked_lm_ids` are stored too. A local output is built in a temporary
directory beside it and renamed into place; a `gs://` output is written in place, its metadata
last, with a `.incomplete` marker until then, so a killed run leaves nothing a reader takes for a
dataset (and the next run starts it clean). `prepare_dataset` is the same as a function; it
reuses a complete dataset prepared with the same settings.
"""
from __future__ import annotations

import io
import math
import os
import re
import shutil
import tempfile
import time
from typing import Sequence

import numpy as np

from mobilebert_jax import cli, files
from mobilebert_jax.data import beam_job, pretraining, tokenizers
from mobilebert_jax.data import corpus as corpus_lib
from mobilebert_jax.data import dataset_layout as layout


def _check_settings(seq_len, max_predictions_per_seq, dupe_factor, short_seq_prob,
                    masked_lm_prob, eval_fraction, num_workers, shard_mb) -> None:
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
    if num_workers < 1:
        raise ValueError(f"num_workers={num_workers} must be at least 1")
    if not shard_mb > 0:
        raise ValueError(f"shard_mb={shard_mb} must be > 0")


def _shard_stats(staging: str) -> list[dict]:
    stats_dir = files.join(staging, layout.SHARD_STATS_DIR)
    return [files.read_json(files.join(stats_dir, name))
            for name in sorted(files.listdir(stats_dir)) if name.endswith(".json")]


def _check_splits(stats: list[dict], counters: dict, corpus_spec: str
                  ) -> dict[str, list[dict]]:
    by_split: dict[str, list[dict]] = {}
    for s in stats:
        by_split.setdefault(s["split"], []).append(s)
    if not counters.get("documents"):
        raise ValueError(f"corpus {corpus_spec!r} is empty (no documents with text)")
    if not counters.get("documents_with_tokens"):
        raise ValueError(f"corpus {corpus_spec!r} tokenizes to no tokens")
    total = sum(s["num_documents"] for s in stats)
    for name in (layout.TRAIN_SPLIT, layout.EVAL_SPLIT):
        shards = sorted(by_split.get(name, []), key=lambda s: s["shard"])
        if [s["shard"] for s in shards] != list(range(shards[0]["num_shards"] if shards
                                                     else 0)):
            raise ValueError(f"the pipeline's output is incomplete: {name} shards "
                             f"{[s['shard'] for s in shards]}")
        by_split[name] = shards
        if sum(s["num_documents"] for s in shards) == 1:
            raise ValueError(
                f"corpus {corpus_spec!r} has {total} document(s), so its {name} split has 1: "
                "next-sentence pairs draw a random next segment from another document of the "
                "split (give more documents, separated by blank lines"
                f"{', or eval_fraction=0' if name == layout.EVAL_SPLIT else ''})")
    if not sum(s["num_examples"] for s in by_split[layout.TRAIN_SPLIT]):
        raise ValueError(f"corpus {corpus_spec!r} yields no training pairs")
    return by_split


def _write_tfds_metadata(staging: str, by_split: dict[str, list[dict]],
                         static_masking: bool) -> None:
    import tensorflow_datasets as tfds

    split_infos = [tfds.core.SplitInfo(name=name, shard_lengths=[s["num_examples"]
                                                                 for s in shards],
                                       num_bytes=sum(s["num_bytes"] for s in shards))
                   for name, shards in by_split.items() if shards and
                   sum(s["num_examples"] for s in shards)]
    # TFDS reads the dataset's name, version and file format off the shard files beside it.
    tfds.folder_dataset.write_metadata(
        data_dir=layout.tfds_dir(staging), features=layout.features(static_masking),
        split_infos=split_infos,
        filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_INDEX}-of-{NUM_SHARDS}",
        check_data=False,
        description="MobileBERT MLM+NSP pretraining pairs (BERT create_pretraining_data).")


def _finish(staging: str, tokenizer, settings: dict, by_split: dict[str, list[dict]],
            counters: dict, extra: dict) -> None:
    _write_tfds_metadata(staging, by_split, settings["static_masking"])
    buf = io.BytesIO()
    np.savez(buf, replacement_ids=tokenizer.replacement_ids(),
             continuation_mask=tokenizer.continuation_mask())
    files.write_bytes(files.join(staging, layout.VOCAB_ARRAYS_FILE), buf.getvalue())
    files.remove_tree(files.join(staging, layout.SHARD_STATS_DIR))
    files.remove_tree(files.join(staging, layout.DOCUMENTS_DIR))
    train = by_split[layout.TRAIN_SPLIT]
    examples = {name: sum(s["num_examples"] for s in shards)
                for name, shards in by_split.items()}
    meta = {
        "settings": settings, "tokenizer_path": str(tokenizer.path),
        "vocab_size": tokenizer.vocab_size, "special_ids": tokenizer.special_ids,
        "num_examples": examples,
        "num_documents": {name: sum(s["num_documents"] for s in shards)
                          for name, shards in by_split.items()},
        "num_shards": {name: len(shards) for name, shards in by_split.items()},
        "text_bytes": sum(s["text_bytes"] for ss in by_split.values() for s in ss),
        "num_tokens": sum(s["num_tokens"] for ss in by_split.values() for s in ss),
        "next_sentence_random_fraction": (sum(s["random_next"] for s in train)
                                          / max(1, examples[layout.TRAIN_SPLIT])),
        "skipped_lines": int(counters.get("skipped_lines", 0)),
        # lines past a file's first MB whose bytes that are not UTF-8 were read as cp1252
        "stray_byte_lines": int(counters.get("stray_byte_lines", 0)),
        **extra,
    }
    # The metadata goes last: its presence marks the dataset complete.
    files.write_json(files.join(staging, layout.META_FILE), meta)


def _remove_stale_staging(parent: str, name: str) -> None:
    """Temporary directories of killed runs beside a local output (their process is gone)."""
    for entry in os.listdir(parent):
        m = re.fullmatch(re.escape(f".{name}.tmp-") + r"(\d+)-.*", entry)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except PermissionError:
            pass


def _staging_dir(out_dir: str) -> str:
    """Where the pipeline writes: a new directory beside a local output (renamed into place
    at the end), or the remote output itself, marked incomplete until its metadata is there."""
    if files.is_remote(out_dir):
        files.write_json(files.join(out_dir, layout.INCOMPLETE_FILE), {"pid": os.getpid()})
        return out_dir
    parent, name = os.path.dirname(out_dir), os.path.basename(out_dir)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_staging(parent, name)
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent)
    os.chmod(staging, 0o755)
    return staging


def _install(staging: str, out_dir: str) -> None:
    if files.is_remote(out_dir):
        files.remove_tree(files.join(out_dir, layout.INCOMPLETE_FILE))
        return
    old = None
    if os.path.lexists(out_dir):
        old = f"{out_dir}.old-{os.getpid()}"
        os.rename(out_dir, old)
    os.rename(staging, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _clear_output(out_dir: str) -> None:
    """Empties an output directory, its metadata first (a reader never sees a dataset whose
    files are going)."""
    if files.is_remote(out_dir):
        files.remove_tree(files.join(out_dir, layout.META_FILE))
        files.remove_tree(out_dir)


def prepare_dataset(corpus_spec: str, tokenizer_path: str, out_dir: str, seq_len: int = 128,
                    max_predictions_per_seq: int | None = None, dupe_factor: int = 5,
                    short_seq_prob: float = 0.1, masked_lm_prob: float = 0.15,
                    seed: int = 0, eval_fraction: float = 0.01,
                    static_masking: bool = False, whole_word_masking: bool = False,
                    lower_case: bool = True, overwrite: bool = False, reuse: bool = True,
                    progress: bool = True, num_workers: int = 1, shard_mb: float = layout.SHARD_MB,
                    read_chunk_mb: float = layout.READ_CHUNK_MB,
                    beam_args: Sequence[str] = ()) -> str:
    """Prepares the pretraining dataset of `corpus_spec` in `out_dir` and returns `out_dir`.

    With `reuse`, a complete dataset already in `out_dir` with the same settings is kept as is.
    A non-empty `out_dir` holding anything else raises FileExistsError unless `overwrite`; the
    remains of a killed run are replaced without it. The defaults are the trainer configs'
    (mobilebert_jax/config_defaults.py).
    """
    if max_predictions_per_seq is None:
        max_predictions_per_seq = pretraining.default_max_predictions(seq_len)
    _check_settings(seq_len, max_predictions_per_seq, dupe_factor, short_seq_prob,
                    masked_lm_prob, eval_fraction, num_workers, shard_mb)
    if not read_chunk_mb > 0:
        raise ValueError(f"read_chunk_mb={read_chunk_mb} must be > 0")

    options = beam_job.options(num_workers, beam_args)
    runner = beam_job.runner_name(options)
    out_dir = files.resolve(out_dir)
    if "Direct" not in runner and not files.is_remote(out_dir):
        raise ValueError(f"the {runner} writes from its own workers: --out must be on shared "
                         f"storage (gs://...), not the local path {out_dir}")
    specs = corpus_lib.parse_corpus_specs(corpus_spec)
    tokenizer = tokenizers.load_tokenizer(tokenizer_path, lower_case=lower_case)
    files.check_can_create(out_dir)
    tasks, input_bytes = corpus_lib.read_tasks(specs, max(1, int(read_chunk_mb * 1e6)))
    settings = {
        "format_version": layout.FORMAT_VERSION, "corpus": corpus_spec,
        "corpus_fingerprint": corpus_lib.corpus_fingerprint(specs),
        "tokenizer_fingerprint": tokenizer.fingerprint(), "seq_len": seq_len,
        "max_predictions_per_seq": max_predictions_per_seq, "dupe_factor": dupe_factor,
        "short_seq_prob": short_seq_prob, "masked_lm_prob": masked_lm_prob, "seed": seed,
        "eval_fraction": eval_fraction, "static_masking": static_masking,
        "whole_word_masking": whole_word_masking, "lower_case": lower_case,
        "num_shards": max(1, math.ceil(input_bytes / (shard_mb * 1e6)))}
    if files.listdir(out_dir):
        existing = layout.read_meta(out_dir)
        if reuse and existing is not None and existing.get("settings") == settings:
            return out_dir
        killed = existing is None and files.isfile(files.join(out_dir, layout.INCOMPLETE_FILE))
        if not overwrite and not killed:
            raise FileExistsError(f"output directory {out_dir} is not empty (pass --overwrite "
                                  "to replace it)")
        _clear_output(out_dir)
    elif files.exists(out_dir) and not files.isdir(out_dir):
        raise FileExistsError(f"output path {out_dir} exists and is not a directory")

    static_cfg = None
    if static_masking:
        static_cfg = pretraining.MaskingConfig.from_tokenizer(
            tokenizer, seq_len, max_predictions_per_seq, masked_lm_prob, whole_word_masking)
    start = time.perf_counter()
    layout.progress_line(progress, f"{len(tasks)} read tasks over {input_bytes / 1e6:.1f} MB of "
                         f"input from {len(specs)} source(s), {settings['num_shards']} train "
                         f"shards; {runner} with "
                         f"{num_workers if 'Direct' in runner else 'its'} worker(s)")
    staging = _staging_dir(out_dir)
    try:
        counters = beam_job.run(tasks, tokenizer, staging, settings, static_cfg, options,
                                 progress)
        by_split = _check_splits(_shard_stats(staging), counters, corpus_spec)
        _finish(staging, tokenizer, settings, by_split, counters,
                {"prepare_seconds": round(time.perf_counter() - start, 3), "runner": runner,
                 "num_workers": num_workers,
                 # how each text file that is not plain UTF-8 was decoded (its note)
                 "decoded_files": {t.path: t.decoding.note for t in tasks
                                   if t.decoding is not None and t.decoding.note}})
        _install(staging, out_dir)
    finally:
        if not files.is_remote(out_dir):
            shutil.rmtree(staging, ignore_errors=True)
    meta = layout.read_meta(out_dir)
    layout.progress_line(progress, f"wrote {out_dir}: {meta['num_examples']} examples in "
                        f"{meta['num_shards']} shards from {meta['text_bytes'] / 1e6:.2f} MB of "
                        f"text in {meta['prepare_seconds']:.1f} s")
    return out_dir


def _define_flags():
    from absl import flags

    flags.DEFINE_string("corpus", "gensim_wiki", "Corpus spec, sources separated by ';': "
                        "gensim_wiki[:PATH], text:PATH[,PATH...][,encoding=NAME], "
                        "wiki_articles:PATH[,...][,encoding=NAME], "
                        "tfds:NAME[:SPLIT[:KEY]][@DATA_DIR]; paths local or gs://.")
    flags.DEFINE_string("tokenizer", tokenizers.BERT_UNCASED,
                        "WordPiece vocab.txt, SentencePiece .model, or bert-base-uncased.")
    flags.DEFINE_integer("seq_len", 128, "Maximum sequence length.")
    flags.DEFINE_integer("max_predictions_per_seq", None,
                         "Masked positions per sequence (default 20 if seq_len<=128 else 80).")
    flags.DEFINE_integer("dupe_factor", 5, "Passes over the corpus with different pair cuts.")
    flags.DEFINE_float("short_seq_prob", 0.1, "Probability of a shorter target length.")
    flags.DEFINE_float("masked_lm_prob", 0.15, "Fraction of tokens to mask.")
    flags.DEFINE_integer("seed", 0, "Random seed (the trainer config's `seed`).")
    flags.DEFINE_string("out", None, "Output dataset directory (local or gs://).")
    flags.DEFINE_float("eval_fraction", 0.01, "Fraction of documents held out for validation.")
    flags.DEFINE_bool("static_masking", False, "Store one fixed mask per example.")
    flags.DEFINE_bool("whole_word_masking", False, "Mask whole words.")
    flags.DEFINE_bool("lower_case", True, "Lower-case text (WordPiece).")
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty output directory.")
    flags.DEFINE_integer("num_workers", 1, "Local DirectRunner worker processes (without "
                         "--runner after `--`).")
    flags.DEFINE_float("shard_mb", layout.SHARD_MB,
                       "MB of text per output shard (a worker's unit of "
                       "memory); part of the settings.")
    flags.DEFINE_float("read_chunk_mb", layout.READ_CHUNK_MB,
                       "MB of a text file per read task (more "
                       "tasks spread reading over more workers; the output does not change).")
    return flags.FLAGS


@cli.guarded
def main(argv: Sequence[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    f = flags.FLAGS
    if not f.out:
        raise ValueError("--out is required")
    beam_args = list(argv[1:])
    unknown = [a for a in beam_args if not a.startswith("--")]
    if unknown:
        raise ValueError(f"unexpected argument {unknown[0]!r} (Beam pipeline options go after "
                         "`--`, each as --name=value)")
    prepare_dataset(
        f.corpus, f.tokenizer, f.out, seq_len=f.seq_len,
        max_predictions_per_seq=f.max_predictions_per_seq, dupe_factor=f.dupe_factor,
        short_seq_prob=f.short_seq_prob, masked_lm_prob=f.masked_lm_prob, seed=f.seed,
        eval_fraction=f.eval_fraction, static_masking=f.static_masking,
        whole_word_masking=f.whole_word_masking, lower_case=f.lower_case,
        overwrite=f.overwrite, reuse=False, num_workers=f.num_workers, shard_mb=f.shard_mb,
        read_chunk_mb=f.read_chunk_mb, beam_args=beam_args)
    meta = layout.read_meta(files.resolve(f.out))
    print(f"wrote {files.resolve(f.out)}: {meta['num_examples']} examples from "
          f"{meta['text_bytes'] / 1e6:.2f} MB of text in {meta['prepare_seconds']:.1f} s")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
