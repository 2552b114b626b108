"""The layout of a prepared pretraining dataset (written by `prepare.py` and its Beam job
`beam_job.py`, read by `loader.py`): file names, the record format, the metadata and the
settings that change the examples."""
from __future__ import annotations

import json
import math
import sys
from typing import Any

import numpy as np

from mobilebert_jax import files

FORMAT_VERSION = 2
DATASET_NAME = "mobilebert_pretraining"
DATASET_VERSION = "1.0.0"
META_FILE = "pretraining_meta.json"
VOCAB_ARRAYS_FILE = "vocab_arrays.npz"
INCOMPLETE_FILE = ".incomplete"
SHARD_STATS_DIR = ".shards"
DOCUMENTS_DIR = ".documents"  # the read stage's token ids, read back by the shard writers
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"
SHARD_MB = 4.0  # text per shard by default: bounds a worker's memory
READ_CHUNK_MB = 1.0  # a read task's share of a text file (the output does not depend on it)
# The settings that change the examples: a prepared dataset records them, a trainer
# refuses a dataset whose values differ from its config's.
EXAMPLE_SETTINGS = ("tokenizer_fingerprint", "seq_len", "max_predictions_per_seq",
                    "dupe_factor", "short_seq_prob", "masked_lm_prob", "whole_word_masking",
                    "static_masking", "eval_fraction", "seed")


def tfds_dir(data_dir: str) -> str:
    """The TFDS builder directory inside a prepared dataset directory."""
    return files.join(data_dir, DATASET_NAME, DATASET_VERSION)


def shard_file_name(split: str, shard: int, num_shards: int) -> str:
    return f"{DATASET_NAME}-{split}.array_record-{shard:05d}-of-{num_shards:05d}"


def features(static_masking: bool):
    import tensorflow_datasets as tfds

    def ids():
        return tfds.features.Tensor(shape=(None,), dtype=np.int32,
                                    encoding=tfds.features.Encoding.BYTES)

    spec = {"token_ids": ids(), "segment_ids": ids(),
            "next_sentence_label": tfds.features.Scalar(dtype=np.int32)}
    if static_masking:
        spec.update(masked_lm_positions=ids(), masked_lm_ids=ids())
    return tfds.features.FeaturesDict(spec)


def serialize_record(record: dict[str, Any]) -> bytes:
    """A record as the `tf.train.Example` bytes of `features` (int32 arrays as raw bytes,
    scalars as int64), the bytes TFDS's own serializer gives with deterministic map order
    (tested), in under half its time: it is the inner loop of writing a shard."""
    from tensorflow_datasets.proto import tf_example_pb2

    example = tf_example_pb2.Example()
    feature = example.features.feature
    for key, value in record.items():
        if np.ndim(value) == 0:
            feature[key].int64_list.value.append(int(value))
        else:
            feature[key].bytes_list.value.append(np.asarray(value, dtype=np.int32).tobytes())
    # Deterministic: a proto map's order otherwise differs between processes.
    return example.SerializeToString(deterministic=True)


def progress_line(enabled: bool, message: str) -> None:
    if enabled:
        print(f"prepare: {message}", file=sys.stderr, flush=True)


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


def settings_mismatch(meta: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """The first of `EXAMPLE_SETTINGS` in `expected` whose value in a dataset's metadata
    differs; None when they all agree."""
    stored = meta.get("settings", {})
    for field in EXAMPLE_SETTINGS:
        if field not in expected:
            continue
        a, b = stored.get(field), expected[field]
        if isinstance(b, float) and isinstance(a, (int, float)) and not isinstance(a, bool):
            same = math.isclose(float(a), b, rel_tol=0, abs_tol=1e-12)
        else:
            same = a == b
        if not same:
            return field
    return None
