"""grain loader of a prepared pretraining dataset (see `dataset_layout.py`), with exact resume.

The global example stream of a split is fixed by the seed alone: `range(N)`, shuffled (a new
permutation each epoch), repeated. Global batch k is stream elements [k*B, (k+1)*B); process p
of P reads elements p, p+P, p+2P, ... of the stream, so its k-th batch of B/P rows is its share
of global batch k, and the processes' rows together form the global batch. Each element is
read from the TFDS ArrayRecord source and masked (dynamic masking) as a pure function of
(seed, epoch, example index), so the stream does not depend on threads, prefetch or restarts.

`PretrainingLoader` is a grain `DatasetIterator` whose state (`get_state`, JSON) counts global
batches, so the trainers store it in their checkpoint and restore it with any process count as
long as the global batch size is the same. Batches are dicts of numpy arrays:

    input_ids, input_mask, segment_ids   int32 [b, seq_len]
    masked_lm_positions, masked_lm_ids   int32 [b, max_predictions_per_seq]
    masked_lm_weights                    float32 [b, max_predictions_per_seq] (0 on padding)
    next_sentence_labels                 int32 [b]  (0 = B follows A, 1 = random)
"""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import grain
import numpy as np

from mobilebert_jax import files
from mobilebert_jax.data import dataset_layout as layout
from mobilebert_jax.data import pretraining

_MASK_SEED_OFFSET = 0x6D61736B  # keeps mask draws independent of the shuffle's seed


@dataclasses.dataclass(frozen=True)
class PretrainingDatasetInfo:
    """What a trainer needs to know about a prepared dataset."""

    data_dir: str
    seq_len: int
    max_predictions_per_seq: int
    vocab_size: int
    special_ids: dict[str, int]
    num_examples: dict[str, int]
    masked_lm_prob: float
    static_masking: bool
    whole_word_masking: bool
    meta: dict[str, Any]


def load_dataset_info(data_dir: str) -> PretrainingDatasetInfo:
    """Reads a prepared dataset's metadata; clear errors for a missing or corrupt directory."""
    data_dir = files.resolve(data_dir)
    if not files.isdir(data_dir):
        raise FileNotFoundError(f"pretraining data directory {data_dir} does not exist")
    meta_path = files.join(data_dir, layout.META_FILE)
    if not files.isfile(meta_path):
        raise ValueError(f"{data_dir} is not a prepared pretraining dataset (no "
                         f"{layout.META_FILE}; run python -m mobilebert_jax.data.prepare)")
    try:
        meta = json.loads(files.read_bytes(meta_path))
        settings = meta["settings"]
        info = PretrainingDatasetInfo(
            data_dir=data_dir, seq_len=int(settings["seq_len"]),
            max_predictions_per_seq=int(settings["max_predictions_per_seq"]),
            vocab_size=int(meta["vocab_size"]), special_ids=dict(meta["special_ids"]),
            num_examples=dict(meta["num_examples"]),
            masked_lm_prob=float(settings["masked_lm_prob"]),
            static_masking=bool(settings["static_masking"]),
            whole_word_masking=bool(settings["whole_word_masking"]), meta=meta)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"corrupt metadata {meta_path}: {type(e).__name__}: {e}") from None
    if settings.get("format_version") != layout.FORMAT_VERSION:
        raise ValueError(f"{data_dir} was prepared in format {settings.get('format_version')}, "
                         f"this code reads format {layout.FORMAT_VERSION}; prepare it again")
    if not files.isfile(files.join(layout.tfds_dir(data_dir), "dataset_info.json")):
        raise ValueError(f"corrupt pretraining dataset {data_dir}: TFDS files missing under "
                         f"{layout.tfds_dir(data_dir)}")
    return info


def check_vocab_size(info: PretrainingDatasetInfo, vocab_size: int) -> None:
    """Raises ValueError when a model config's `vocab_size` differs from the dataset's."""
    if int(vocab_size) != info.vocab_size:
        raise ValueError(f"model config vocab_size={vocab_size} but the pretraining data "
                         f"{info.data_dir} was tokenized with {info.meta.get('tokenizer_path')} "
                         f"which has {info.vocab_size} entries")


def masking_config(info: PretrainingDatasetInfo,
                   whole_word_masking: bool | None = None) -> pretraining.MaskingConfig:
    """The masking config of a prepared dataset (its vocabulary arrays and shapes)."""
    path = files.join(info.data_dir, layout.VOCAB_ARRAYS_FILE)
    try:
        with np.load(io.BytesIO(files.read_bytes(path))) as arrays:
            replacement_ids = arrays["replacement_ids"].astype(np.int32)
            continuation_mask = arrays["continuation_mask"].astype(bool)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"corrupt pretraining dataset {info.data_dir}: cannot read {path} "
                         f"({e})") from None
    s = info.special_ids
    return pretraining.MaskingConfig(
        seq_len=info.seq_len, max_predictions_per_seq=info.max_predictions_per_seq,
        pad_id=s["[PAD]"], cls_id=s["[CLS]"], sep_id=s["[SEP]"], mask_id=s["[MASK]"],
        replacement_ids=replacement_ids, continuation_mask=continuation_mask,
        masked_lm_prob=info.masked_lm_prob,
        whole_word_masking=(info.whole_word_masking if whole_word_masking is None
                            else whole_word_masking))


def open_source(info: PretrainingDatasetInfo, split: str):
    """The random-access TFDS ArrayRecord source of `split`, checked against the metadata."""
    import tensorflow_datasets as tfds

    if split not in info.num_examples:
        raise ValueError(f"split {split!r} not in {info.data_dir} (splits: "
                         f"{sorted(info.num_examples)})")
    if info.num_examples[split] == 0:
        raise ValueError(f"split {split!r} of {info.data_dir} has no examples")
    try:
        source = tfds.builder_from_directory(layout.tfds_dir(info.data_dir)).as_data_source(
            split)
        n = len(source)
        if n:
            _ = source[0], source[n - 1]
    except Exception as e:  # tfds/array_record raise many types for damaged files
        raise ValueError(f"corrupt pretraining dataset {info.data_dir} (split {split!r}): "
                         f"{type(e).__name__}: {e}") from None
    if n != info.num_examples[split]:
        raise ValueError(f"corrupt pretraining dataset {info.data_dir}: split {split!r} has "
                         f"{n} records, the metadata says {info.num_examples[split]}")
    return source


class ExampleFeatures:
    """Maps (stream position, example index) to the example's fixed-shape features."""

    def __init__(self, source, config: pretraining.MaskingConfig, seed: int, num_examples: int,
                 dynamic_masking: bool, stored_masks: bool):
        self.source = source
        self.config = config
        self.seed = int(seed)
        self.num_examples = int(num_examples)
        self.dynamic_masking = dynamic_masking
        self.stored_masks = stored_masks

    def __call__(self, position: int, index: int) -> dict[str, np.ndarray]:
        record = self.source[int(index)]
        token_ids = np.asarray(record["token_ids"], dtype=np.int32)
        segment_ids = np.asarray(record["segment_ids"], dtype=np.int32)
        label = int(record["next_sentence_label"])
        if self.stored_masks:
            return pretraining.features_from_mask(
                token_ids, segment_ids, label, np.asarray(record["masked_lm_positions"]),
                np.asarray(record["masked_lm_ids"]), self.config)
        epoch = position // self.num_examples if self.dynamic_masking else 0
        return pretraining.make_features(token_ids, segment_ids, label, self.config,
                                         self.seed + _MASK_SEED_OFFSET, epoch, int(index))


class PretrainingLoader(grain.DatasetIterator):
    """Iterator of per-process batches with savable state; see the module docstring."""

    def __init__(self, inner: grain.DatasetIterator, info: PretrainingDatasetInfo, split: str,
                 global_batch_size: int, seed: int, process_index: int, process_count: int,
                 shuffle: bool, num_workers: int = 0):
        super().__init__(inner)
        self._inner = inner
        self.info = info
        self.split = split
        self.global_batch_size = global_batch_size
        self.batch_size = global_batch_size // process_count
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.num_examples = info.num_examples[split]
        self.steps_per_epoch = self.num_examples // global_batch_size
        self.seq_len = info.seq_len
        self.max_predictions_per_seq = info.max_predictions_per_seq

    @property
    def element_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of one batch's arrays."""
        b, s, p = self.batch_size, self.seq_len, self.max_predictions_per_seq
        return {"input_ids": (b, s), "input_mask": (b, s), "segment_ids": (b, s),
                "masked_lm_positions": (b, p), "masked_lm_ids": (b, p),
                "masked_lm_weights": (b, p), "next_sentence_labels": (b,)}

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._inner)

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._inner.get_state(), "split": self.split,
                "global_batch_size": self.global_batch_size, "seed": self.seed,
                "shuffle": self.shuffle, "num_examples": self.num_examples,
                "num_workers": self.num_workers, "process_count": self.process_count}

    def set_state(self, state: dict[str, Any]) -> None:
        for key in ("split", "global_batch_size", "seed", "shuffle", "num_examples",
                    "num_workers"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"cannot restore data iterator state: {key}={state[key]!r} in "
                                 f"the checkpoint but {getattr(self, key)!r} now")
        if "grain" not in state:
            raise ValueError("cannot restore data iterator state: no 'grain' entry")
        # The grain state counts batches; batch k of every process belongs to global batch k,
        # so the same state holds for any process count.
        self._inner.set_state(state["grain"])

    def close(self) -> None:
        self._inner.close()
        super().close()


def make_pretraining_loader(data_dir: str, split: str, global_batch_size: int, seed: int,
                            process_index: int = 0, process_count: int = 1,
                            dynamic_masking: bool | None = None,
                            num_epochs: int | None = None, shuffle: bool = True,
                            whole_word_masking: bool | None = None, num_threads: int = 1,
                            prefetch_batches: int = 8, num_workers: int = 0
                            ) -> PretrainingLoader:
    """A resumable iterator of this process's share of each global batch.

    `dynamic_masking`: None follows the dataset (dynamic unless prepared with static masking);
    False masks every epoch alike. `num_epochs=None` repeats forever; a finite run ends after
    the last full global batch (all processes get the same number of batches).
    `num_workers > 0` adds grain multiprocess prefetch (deterministic too; its saved state
    can only be restored with the same `num_workers`).
    """
    info = load_dataset_info(data_dir)
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size={global_batch_size} must be positive")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                         f"process_count={process_count}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs} must be positive or None")
    if info.static_masking and dynamic_masking:
        raise ValueError(f"{info.data_dir} was prepared with static masking (the stored ids "
                         "are masked); use dynamic_masking=None/False or prepare it again")
    if dynamic_masking is None:
        dynamic_masking = not info.static_masking
    source = open_source(info, split)
    n = len(source)
    config = masking_config(info, whole_word_masking)

    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if num_epochs is not None:
        usable = (n * num_epochs) // global_batch_size * global_batch_size
        if usable == 0:
            raise ValueError(f"split {split!r} has {n} examples, fewer than one global batch "
                             f"of {global_batch_size}")
        ds = ds[:usable]
    ds = ds.map_with_index(ExampleFeatures(source, config, seed, n, dynamic_masking,
                                           info.static_masking))
    # Process i takes the i-th contiguous block of every global batch, so the processes' rows,
    # concatenated in process order, are the global batch in the same order as one process.
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    ds = ds[process_index::process_count]
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=prefetch_batches))
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return PretrainingLoader(iter(iter_ds), info, split, global_batch_size, seed,
                             process_index, process_count, shuffle, num_workers)
