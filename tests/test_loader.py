"""Tests of data preparation (prepare.py) and the grain loader (loader.py): determinism, exact
resume, sharding across processes, dynamic masking, and clear errors on bad input."""
import glob
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from mobilebert_jax.data import dataset_layout, prepare, tokenizers
from mobilebert_jax.data import loader as loader_lib

SEQ_LEN, MAX_PRED = 64, 10


@pytest.fixture(scope="module")
def vocab_path(bert_vocab_path):
    return bert_vocab_path


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, vocab_words):
    """~25k words of pseudo-English in BERT's layout, built from whole-word vocab entries."""
    words = vocab_words
    rng = random.Random(0)
    lines = []
    for _ in range(50):
        for _ in range(rng.randint(15, 30)):
            n = rng.randint(5, 25)
            lines.append(" ".join(rng.choice(words) for _ in range(n)).capitalize() + ".")
        lines.append("")
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _prepare(corpus_file, vocab_path, out, **kwargs):
    kwargs.setdefault("seq_len", SEQ_LEN)
    kwargs.setdefault("max_predictions_per_seq", MAX_PRED)
    kwargs.setdefault("eval_fraction", 0.1)
    kwargs.setdefault("dupe_factor", 1)
    kwargs.setdefault("progress", False)
    return prepare.prepare_dataset(f"text:{corpus_file}", vocab_path, str(out), **kwargs)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, corpus_file, vocab_path):
    return _prepare(corpus_file, vocab_path, tmp_path_factory.mktemp("data") / "ds")


def _records(data_dir, split="train"):
    info = loader_lib.load_dataset_info(data_dir)
    src = loader_lib.open_source(info, split)
    return [tuple(np.asarray(src[i][k]).tobytes() for k in sorted(src[i]))
            for i in range(len(src))]


def _unmasked_rows(batch):
    """Each row's original token ids (masked positions restored), as bytes: an example id."""
    ids = batch["input_ids"].copy()
    for r in range(len(ids)):
        k = int(batch["masked_lm_weights"][r].sum())
        ids[r, batch["masked_lm_positions"][r, :k]] = batch["masked_lm_ids"][r, :k]
    return [row.tobytes() for row in ids]


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same_batches(xs, ys):
    return len(xs) == len(ys) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(xs, ys))


def test_prepared_layout_and_metadata(data_dir):
    info = loader_lib.load_dataset_info(data_dir)
    assert (info.seq_len, info.max_predictions_per_seq, info.vocab_size) == (SEQ_LEN, MAX_PRED,
                                                                             30522)
    assert info.num_examples["train"] > 300 and info.num_examples["validation"] > 10
    assert glob.glob(os.path.join(dataset_layout.tfds_dir(data_dir), "*.array_record-*"))
    assert not [p for p in os.listdir(os.path.dirname(data_dir)) if ".tmp-" in p]
    loader_lib.check_vocab_size(info, 30522)
    with pytest.raises(ValueError, match="vocab_size=30000 but the pretraining data"):
        loader_lib.check_vocab_size(info, 30000)


def test_batches_fixed_shapes_and_valid_layout(data_dir):
    it = loader_lib.make_pretraining_loader(data_dir, "train", 16, seed=0)
    total_tokens = masked = 0
    nsp = []
    for batch in _take(it, 20):
        for key, shape in it.element_shapes.items():
            assert batch[key].shape == shape, key
        assert batch["masked_lm_weights"].dtype == np.float32
        for r in range(16):
            n = int(batch["input_mask"][r].sum())
            assert batch["input_mask"][r].tolist() == [1] * n + [0] * (SEQ_LEN - n)
            ids = batch["input_ids"][r]
            assert ids[0] == 101 and ids[n - 1] == 102 and (ids[n:] == 0).all()
            seps = np.flatnonzero(ids[:n] == 102)
            assert len(seps) == 2
            seg = batch["segment_ids"][r]
            assert (seg[:seps[0] + 1] == 0).all() and (seg[seps[0] + 1:n] == 1).all()
            assert (seg[n:] == 0).all()
            total_tokens += n - 3
            masked += int(batch["masked_lm_weights"][r].sum())
        nsp.extend(batch["next_sentence_labels"].tolist())
    assert abs(masked / total_tokens - 0.15) < 0.015
    assert 0.35 < np.mean(nsp) < 0.7


def test_prepare_is_deterministic(tmp_path, data_dir, corpus_file, vocab_path):
    again = _prepare(corpus_file, vocab_path, tmp_path / "again")
    assert _records(again) == _records(data_dir)
    assert _records(again, "validation") == _records(data_dir, "validation")
    for name in ("mobilebert_pretraining-train.array_record-00000-of-00001",):
        a = os.path.join(dataset_layout.tfds_dir(data_dir), name)
        b = os.path.join(dataset_layout.tfds_dir(again), name)
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()
    other = _prepare(corpus_file, vocab_path, tmp_path / "other", seed=99)
    assert _records(other) != _records(data_dir)


def test_loader_is_deterministic(data_dir):
    a = _take(loader_lib.make_pretraining_loader(data_dir, "train", 8, seed=3), 5)
    b = _take(loader_lib.make_pretraining_loader(data_dir, "train", 8, seed=3, num_threads=1),
              5)
    c = _take(loader_lib.make_pretraining_loader(data_dir, "train", 8, seed=4), 5)
    assert _same_batches(a, b)
    assert not _same_batches(a, c)


def test_exact_resume(data_dir):
    info = loader_lib.load_dataset_info(data_dir)
    batch = 16
    k = info.num_examples["train"] // batch + 3  # resume past an epoch boundary
    it = loader_lib.make_pretraining_loader(data_dir, "train", batch, seed=1)
    _take(it, k)
    state = it.get_state()
    expected = _take(it, 4)
    restored = loader_lib.make_pretraining_loader(data_dir, "train", batch, seed=1)
    restored.set_state(state)
    assert _same_batches(_take(restored, 4), expected)


def test_resume_rejects_other_settings(data_dir):
    it = loader_lib.make_pretraining_loader(data_dir, "train", 16, seed=1)
    next(it)
    state = it.get_state()
    other = loader_lib.make_pretraining_loader(data_dir, "train", 32, seed=1)
    with pytest.raises(ValueError, match="global_batch_size=16"):
        other.set_state(state)


def test_epochs_cover_data_with_fresh_shuffle_and_masks(data_dir):
    info = loader_lib.load_dataset_info(data_dir)
    n = info.num_examples["train"]
    it = loader_lib.make_pretraining_loader(data_dir, "train", n, seed=5)
    first, second = next(it), next(it)  # one batch per epoch
    rows1, rows2 = _unmasked_rows(first), _unmasked_rows(second)
    assert len(set(rows1)) == len(rows1) == n  # every example once per epoch
    assert sorted(rows1) == sorted(rows2)
    assert rows1 != rows2  # reshuffled
    # Dynamic masking: the same example gets a different mask in the next epoch.
    order1 = {r: i for i, r in enumerate(rows1)}
    perm = [order1[r] for r in rows2]
    assert not np.array_equal(first["masked_lm_positions"][perm], second["masked_lm_positions"])
    fixed = loader_lib.make_pretraining_loader(data_dir, "train", n, seed=5,
                                               dynamic_masking=False)
    f1, f2 = next(fixed), next(fixed)
    order = {r: i for i, r in enumerate(_unmasked_rows(f1))}
    perm = [order[r] for r in _unmasked_rows(f2)]
    assert np.array_equal(f1["input_ids"][perm], f2["input_ids"])


def test_sharding_two_processes(data_dir):
    info = loader_lib.load_dataset_info(data_dir)
    batch = 16
    single = loader_lib.make_pretraining_loader(data_dir, "train", batch, seed=2, num_epochs=1,
                                                shuffle=True)
    shards = [loader_lib.make_pretraining_loader(data_dir, "train", batch, seed=2,
                                                 process_index=p, process_count=2,
                                                 num_epochs=1) for p in range(2)]
    steps = info.num_examples["train"] // batch
    all_rows = [[], []]
    for _ in range(steps):
        full = next(single)
        parts = [next(s) for s in shards]
        assert all(p["input_ids"].shape == (batch // 2, SEQ_LEN) for p in parts)
        rows = [_unmasked_rows(p) for p in parts]
        assert not set(rows[0]) & set(rows[1])
        # Process p holds the p-th contiguous half of the global batch, in the same order.
        for key in full:
            merged = np.concatenate([parts[0][key], parts[1][key]])
            assert np.array_equal(merged, full[key]), key
        all_rows[0] += rows[0]
        all_rows[1] += rows[1]
    for it in (single, *shards):  # a finite run ends at the same step everywhere
        with pytest.raises(StopIteration):
            next(it)
    assert not set(all_rows[0]) & set(all_rows[1])
    assert len(set(all_rows[0]) | set(all_rows[1])) == steps * batch


def test_resume_with_other_process_count(data_dir):
    single = loader_lib.make_pretraining_loader(data_dir, "train", 8, seed=6)
    _take(single, 7)
    state = single.get_state()
    expected = next(single)
    parts = []
    for p in range(2):
        it = loader_lib.make_pretraining_loader(data_dir, "train", 8, seed=6, process_index=p,
                                                process_count=2)
        it.set_state(state)
        parts.append(next(it))
    assert np.array_equal(expected["input_ids"][:4], parts[0]["input_ids"])
    assert np.array_equal(expected["input_ids"][4:], parts[1]["input_ids"])


def test_static_masking(tmp_path, corpus_file, vocab_path):
    out = _prepare(corpus_file, vocab_path, tmp_path / "static", static_masking=True,
                   eval_fraction=0.0)
    info = loader_lib.load_dataset_info(out)
    n = info.num_examples["train"]
    assert info.static_masking and info.num_examples["validation"] == 0
    it = loader_lib.make_pretraining_loader(out, "train", n, seed=0, shuffle=False)
    e1, e2 = next(it), next(it)
    for key in e1:  # the same mask in every epoch
        assert np.array_equal(e1[key], e2[key])
    assert abs(e1["masked_lm_weights"].sum() / (e1["input_mask"].sum() - 3 * n) - 0.15) < 0.015
    with pytest.raises(ValueError, match="static masking"):
        loader_lib.make_pretraining_loader(out, "train", 8, seed=0, dynamic_masking=True)
    with pytest.raises(ValueError, match="has no examples"):
        loader_lib.make_pretraining_loader(out, "validation", 8, seed=0)


def test_reuse_and_overwrite(tmp_path, corpus_file, vocab_path):
    out = _prepare(corpus_file, vocab_path, tmp_path / "ds", eval_fraction=0.0)
    meta = os.path.join(out, dataset_layout.META_FILE)
    stamp = os.stat(meta).st_mtime_ns
    assert _prepare(corpus_file, vocab_path, out, eval_fraction=0.0) == out
    assert os.stat(meta).st_mtime_ns == stamp  # same settings: reused, not rewritten
    with pytest.raises(FileExistsError, match="--overwrite"):
        _prepare(corpus_file, vocab_path, out, eval_fraction=0.0, seed=1)
    with pytest.raises(FileExistsError, match="--overwrite"):
        _prepare(corpus_file, vocab_path, out, eval_fraction=0.0, reuse=False)
    _prepare(corpus_file, vocab_path, out, eval_fraction=0.0, seed=1, overwrite=True)
    assert loader_lib.load_dataset_info(out).meta["settings"]["seed"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_bad_data_dirs(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loader_lib.make_pretraining_loader(str(tmp_path / "missing"), "train", 8, seed=0)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a prepared pretraining dataset"):
        loader_lib.make_pretraining_loader(str(tmp_path / "plain"), "train", 8, seed=0)
    with pytest.raises(ValueError, match="split 'test' not in"):
        loader_lib.make_pretraining_loader(data_dir, "test", 8, seed=0)
    with pytest.raises(ValueError, match="not divisible"):
        loader_lib.make_pretraining_loader(data_dir, "train", 9, seed=0, process_count=2)
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", data_dir, str(broken)], check=True)
    (broken / dataset_layout.META_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt metadata"):
        loader_lib.make_pretraining_loader(str(broken), "train", 8, seed=0)
    truncated = tmp_path / "truncated"
    subprocess.run(["cp", "-r", data_dir, str(truncated)], check=True)
    shard = glob.glob(os.path.join(dataset_layout.tfds_dir(str(truncated)),
                                   "*train.array_record*"))[0]
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    with pytest.raises(ValueError, match="corrupt pretraining dataset"):
        loader_lib.make_pretraining_loader(str(truncated), "train", 8, seed=0)


def test_prepare_bad_input(tmp_path, vocab_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        prepare.prepare_dataset(f"text:{empty}", vocab_path, str(tmp_path / "o"),
                                progress=False)
    with pytest.raises(FileNotFoundError):
        prepare.prepare_dataset(f"text:{empty}", str(tmp_path / "nope.txt"),
                                str(tmp_path / "o"), progress=False)
    with pytest.raises(ValueError, match="max_predictions_per_seq"):
        prepare.prepare_dataset(f"text:{empty}", vocab_path, str(tmp_path / "o"), seq_len=16,
                                max_predictions_per_seq=40, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["empty.txt"]


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mobilebert_jax.data.prepare", f"--corpus=text:{tmp_path}/x.txt",
         f"--out={tmp_path}/out"], capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode != 0
    assert "error: corpus file" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "out")


def test_sentencepiece_dataset_with_whole_word_masking(tmp_path, corpus_file):
    sp = tokenizers.train_sentencepiece([str(corpus_file)], str(tmp_path / "sp"),
                                        vocab_size=300)
    out = prepare.prepare_dataset(f"text:{corpus_file}", sp.path, str(tmp_path / "ds"),
                                  seq_len=SEQ_LEN, max_predictions_per_seq=MAX_PRED,
                                  whole_word_masking=True, eval_fraction=0.0, progress=False)
    info = loader_lib.load_dataset_info(out)
    assert info.vocab_size == 300 and info.whole_word_masking
    batch = next(loader_lib.make_pretraining_loader(out, "train", 32, seed=0))
    assert batch["input_ids"].max() < 300
    assert (batch["input_ids"][:, 0] == sp.cls_id).all()
    assert (batch["input_ids"] == sp.mask_id).any()
    continuation = sp.continuation_mask()
    for r in range(32):
        k = int(batch["masked_lm_weights"][r].sum())
        chosen = set(batch["masked_lm_positions"][r, :k].tolist())
        n = int(batch["input_mask"][r].sum())
        original = batch["input_ids"][r].copy()
        original[list(chosen)] = batch["masked_lm_ids"][r, :k]
        for i in chosen:  # a masked word's pieces are all masked
            j = i + 1
            while j < n and continuation[original[j]]:
                assert j in chosen
                j += 1
