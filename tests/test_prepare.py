"""Tests of the Beam preparation pipeline (data/prepare.py): the same bytes for any worker count
and any cut of the corpus into read tasks, the statistics of its multi-shard output, exact
loader resume on it, a killed run, and the trainer's settings check."""
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

from mobilebert_jax.data import corpus, dataset_layout, prepare
from mobilebert_jax.data import loader as loader_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_LEN, MAX_PRED = 64, 10
NUM_TEXT_DOCS, NUM_ARTICLES, NUM_TFDS_DOCS = 60, 30, 20
SETTINGS = dict(seq_len=SEQ_LEN, max_predictions_per_seq=MAX_PRED, dupe_factor=2,
                eval_fraction=0.1, shard_mb=0.05)


def _sentences(rng, words, n):
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 18))).capitalize() + "."
            for _ in range(n)]


@pytest.fixture(scope="module")
def corpus_spec(tmp_path_factory, vocab_words):
    """Three sources mixed: BERT-layout text, `= Title =` articles, a TFDS text dataset."""
    import tensorflow_datasets as tfds

    words = vocab_words
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("mixed")
    text = []
    for i in range(NUM_TEXT_DOCS):
        text.extend(" ".join(_sentences(rng, words, rng.randint(1, 3)))
                    for _ in range(rng.randint(3, 12)))
        text.extend([""] * rng.randint(1, 3))  # one or more blank lines end a document
    (d / "books.txt").write_text("\n".join(text))  # no final newline
    wiki = []
    for i in range(NUM_ARTICLES):
        wiki.append(f"= Article {i} =")
        wiki.extend(" ".join(_sentences(rng, words, rng.randint(2, 5)))
                    for _ in range(rng.randint(2, 8)))
    (d / "wiki.txt").write_text("\n".join(wiki) + "\n")
    examples = [(i, {"text": "\n".join(" ".join(_sentences(rng, words, 3))
                                       for _ in range(rng.randint(2, 6)))})
                for i in range(NUM_TFDS_DOCS)]
    tfds.dataset_builders.store_as_tfds_dataset(
        name="tiny_mixed_text", version="1.0.0",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        split_datasets={"train": examples}, data_dir=str(d / "tfds"), disable_shuffling=True)
    return (f"text:{d}/books.txt;wiki_articles:{d}/wiki.txt;"
            f"tfds:tiny_mixed_text:train:text@{d}/tfds")


def _prepare(spec, out, **kwargs):
    return prepare.prepare_dataset(spec, "bert-base-uncased", str(out), progress=False,
                                   **{**SETTINGS, **kwargs})


def _dataset_files(data_dir):
    d = dataset_layout.tfds_dir(data_dir)
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out[name] = f.read()
    return out


@pytest.fixture(scope="module")
def reference(corpus_spec, tmp_path_factory):
    """The mixed corpus prepared in this process (one worker, the default read tasks)."""
    return _prepare(corpus_spec, tmp_path_factory.mktemp("ref") / "ds")


@pytest.mark.parametrize("chunk", [1, 7, 64, 333, 5000])
def test_any_cut_into_read_tasks_yields_each_document_once(tmp_path, chunk):
    books = tmp_path / "books.txt"
    books.write_bytes(b"\n\nFirst doc. Two.\nMore of it\n\n\n\nSecond doc.\n \nThird\xff bad "
                      b"line\nthird doc\n\nLast doc without a final newline")
    wiki = tmp_path / "wiki.txt"
    wiki.write_text("Text before any title.\n= A =\nAlpha one.\n\nAlpha two.\n= B =\n= C =\n"
                    "Gamma.\n")
    specs = corpus.parse_corpus_specs(f"text:{books};wiki_articles:{wiki}")
    whole, _ = corpus.read_tasks(specs, chunk_bytes=1 << 40)
    cut, _ = corpus.read_tasks(specs, chunk_bytes=chunk)
    assert len(cut) >= len(whole)
    expected = [kd for t in whole for kd in corpus.task_documents(t)]
    assert [kd for t in cut for kd in corpus.task_documents(t)] == expected
    assert [doc for _, doc in expected] == [
        ["First doc.", "Two.", "More of it"], ["Second doc."],
        ["Third\u00ff bad line", "third doc"],
        ["Last doc without a final newline"], ["Text before any title."],
        ["Alpha one.", "Alpha two."], ["Gamma."]]


@pytest.mark.slow
def test_same_bytes_with_two_workers_and_other_read_tasks(reference, corpus_spec, tmp_path):
    meta = dataset_layout.read_meta(reference)
    assert meta["num_shards"]["train"] >= 3  # several shards, so the grouping is exercised
    assert sum(meta["num_documents"].values()) == NUM_TEXT_DOCS + NUM_ARTICLES + NUM_TFDS_DOCS
    other = _prepare(corpus_spec, tmp_path / "two", num_workers=2, read_chunk_mb=0.003)
    assert _dataset_files(other) == _dataset_files(reference)
    again = dataset_layout.read_meta(other)
    for key in ("num_examples", "num_documents", "num_shards", "text_bytes", "num_tokens"):
        assert again[key] == meta[key], key
    assert again["num_workers"] == 2
    # What the stages stage (token ids by read task, per-shard counts) does not stay.
    for data_dir in (reference, other):
        assert sorted(os.listdir(data_dir)) == sorted(
            [dataset_layout.META_FILE, dataset_layout.VOCAB_ARRAYS_FILE,
             dataset_layout.DATASET_NAME])
    reseeded = _prepare(corpus_spec, tmp_path / "seed", seed=1)
    assert _dataset_files(reseeded) != _dataset_files(reference)


def test_statistics_of_the_multi_shard_output(reference):
    info = loader_lib.load_dataset_info(reference)
    source = loader_lib.open_source(info, "train")
    lengths, nsp = [], []
    for i in range(len(source)):
        ex = source[i]
        ids, seg = np.asarray(ex["token_ids"]), np.asarray(ex["segment_ids"])
        n = len(ids)
        assert 5 <= n <= SEQ_LEN and ids[0] == 101 and ids[-1] == 102
        seps = np.flatnonzero(ids == 102)
        assert len(seps) == 2
        assert (seg[:seps[0] + 1] == 0).all() and (seg[seps[0] + 1:] == 1).all()
        lengths.append(n)
        nsp.append(int(ex["next_sentence_label"]))
    assert 0.4 < np.mean(nsp) < 0.65
    assert np.mean(np.asarray(lengths) < SEQ_LEN // 2) > 0.02  # short_seq_prob's short pairs
    # Dynamic masking on top: 15% of the maskable tokens, 80% [MASK] / 10% kept / 10% random.
    it = loader_lib.make_pretraining_loader(reference, "train", 64, seed=0)
    maskable = masked = as_mask = kept = 0
    for _ in range(12):
        b = next(it)
        for r in range(64):
            k = int(b["masked_lm_weights"][r].sum())
            pos, labels = b["masked_lm_positions"][r, :k], b["masked_lm_ids"][r, :k]
            maskable += int(b["input_mask"][r].sum()) - 3
            masked += k
            as_mask += int((b["input_ids"][r, pos] == 103).sum())
            kept += int((b["input_ids"][r, pos] == labels).sum())
    assert abs(masked / maskable - 0.15) < 0.02
    assert abs(as_mask / masked - 0.8) < 0.04
    assert abs(kept / masked - 0.1) < 0.03


def test_loader_resumes_exactly_on_the_beam_output(reference):
    it = loader_lib.make_pretraining_loader(reference, "train", 16, seed=5)
    for _ in range(3):
        next(it)
    state = it.get_state()
    rest = [next(it) for _ in range(4)]
    resumed = loader_lib.make_pretraining_loader(reference, "train", 16, seed=5)
    resumed.set_state(state)
    for a in rest:
        b = next(resumed)
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_killed_run_is_not_a_dataset_and_a_rerun_finishes(corpus_spec, reference, tmp_path):
    out = tmp_path / "ds"
    args = [f"--{k}={v}" for k, v in SETTINGS.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mobilebert_jax.data.prepare", f"--corpus={corpus_spec}",
         f"--out={out}", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        for line in proc.stderr:
            if "wrote train shard" in line:  # mid-way: shards written, no metadata yet
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    staging = [p for p in os.listdir(tmp_path) if p.startswith(".ds.tmp-")]
    assert staging and not out.exists()
    assert dataset_layout.read_meta(str(out)) is None
    with pytest.raises(FileNotFoundError):
        loader_lib.load_dataset_info(str(out))
    done = _prepare(corpus_spec, out)
    assert _dataset_files(done) == _dataset_files(reference)
    assert os.listdir(tmp_path) == ["ds"]  # the killed run's directory is gone


def test_the_trainer_refuses_a_dataset_prepared_otherwise(reference, bert_vocab_path, tmp_path):
    from mobilebert_jax.data import pretraining_input as inputs
    from tests.helpers import config_module

    def config(**data):
        c = config_module("teacher").get_config("smoke")
        c.data.update(dataset_dir=reference, corpus="", **{
            k: v for k, v in SETTINGS.items() if k != "shard_mb"})
        c.data.update(**data)
        return c

    assert inputs.prepare_if_needed(config(), str(tmp_path), 30522)[0].data_dir == reference
    with pytest.raises(ValueError, match=r"prepared with dupe_factor=2 but the config has "
                                         r"data\.dupe_factor=5"):
        inputs.prepare_if_needed(config(dupe_factor=5), str(tmp_path), 30522)
    with pytest.raises(ValueError, match=r"prepared with seed=0 but the config has data\.seed=3"):
        inputs.prepare_if_needed(config(seed=3), str(tmp_path), 30522)
    with pytest.raises(ValueError, match=r"with short_seq_prob=0\.1 but the config has "
                                         r"data\.short_seq_prob=0\.2"):
        inputs.prepare_if_needed(config(short_seq_prob=0.2), str(tmp_path), 30522)
    vocab = open(bert_vocab_path, encoding="utf-8").read().split("\n")
    vocab[2000], vocab[2001] = vocab[2001], vocab[2000]
    other = tmp_path / "vocab.txt"
    other.write_text("\n".join(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match=r"was tokenized with .* not data\.tokenizer=.*vocab.txt"):
        inputs.prepare_if_needed(config(tokenizer=str(other)), str(tmp_path), 30522)


def test_a_remote_runner_needs_shared_storage(corpus_spec, tmp_path):
    with pytest.raises(ValueError, match="must be on shared storage"):
        prepare.prepare_dataset(corpus_spec, "bert-base-uncased", str(tmp_path / "o"),
                                beam_args=["--runner=DataflowRunner"], progress=False)
    assert not os.listdir(tmp_path)


def test_serialize_record_gives_the_bytes_of_the_tfds_serializer():
    from tensorflow_datasets.core import example_serializer

    rng = np.random.default_rng(0)
    for static in (False, True):
        features = dataset_layout.features(static)
        reference = example_serializer.ExampleSerializer(features.get_serialized_info())
        for n in (5, 64):
            record = {"token_ids": rng.integers(0, 30522, n).astype(np.int32),
                      "segment_ids": (np.arange(n) > n // 2).astype(np.int32),
                      "next_sentence_label": np.int32(rng.integers(0, 2))}
            if static:
                record.update(masked_lm_positions=np.arange(3, dtype=np.int32),
                              masked_lm_ids=rng.integers(0, 30522, 3).astype(np.int32))
            expected = reference.get_tf_example(features.encode_example(record))
            assert dataset_layout.serialize_record(record) == expected.SerializeToString(
                deterministic=True)


def test_latin1_files_prepare_to_the_same_examples_as_their_utf8_reencoding(vocab_words,
                                                                            tmp_path, capsys):
    """A corpus mixing UTF-8 and Latin-1 files (detected, and declared), read by two worker
    processes in small parts, gives the same dataset bytes as the same corpus with every file
    re-encoded to UTF-8, read in this process."""
    rng = random.Random(3)
    accented = ["café", "naïve", "Zürich", "façade", "señor", "crème", "fête", "\u00a0"]
    words = list(vocab_words[:400]) + accented * 20

    def text():
        docs = ["\n".join(" ".join(_sentences(rng, words, rng.randint(1, 3)))
                          for _ in range(rng.randint(2, 6))) for _ in range(12)]
        return "\n\n".join(docs) + "\n"

    texts = [text() for _ in range(3)]
    for i, t in enumerate(texts):
        (tmp_path / f"utf8-{i}.txt").write_text(t, encoding="utf-8")
    (tmp_path / "mixed-0.txt").write_text(texts[0], encoding="utf-8")
    (tmp_path / "mixed-1.txt").write_bytes(texts[1].encode("latin-1"))
    (tmp_path / "mixed-2.txt").write_bytes(texts[2].encode("latin-1"))
    utf8 = _prepare(f"text:{tmp_path}/utf8-0.txt,{tmp_path}/utf8-1.txt;"
                    f"text:{tmp_path}/utf8-2.txt", tmp_path / "utf8")
    capsys.readouterr()
    mixed = _prepare(f"text:{tmp_path}/mixed-0.txt,{tmp_path}/mixed-1.txt;"
                     f"text:{tmp_path}/mixed-2.txt,encoding=latin-1", tmp_path / "mixed",
                     num_workers=2, read_chunk_mb=0.002)  # Beam workers, each file cut in parts
    err = capsys.readouterr().err
    assert f"note: {tmp_path}/mixed-1.txt: not UTF-8 (" in err
    assert f"note: {tmp_path}/mixed-2.txt: decoded as latin-1 (declared)" in err
    assert ("note: 2 of 3 corpus files are not plain UTF-8: 1 in a detected encoding, 1 in a "
            "declared one, 0 UTF-8 with stray bytes") in err
    assert _dataset_files(mixed) == _dataset_files(utf8)
    assert sum(dataset_layout.read_meta(mixed)["num_documents"].values()) == 36
    assert sorted(dataset_layout.read_meta(mixed)["decoded_files"]) == [
        f"{tmp_path}/mixed-1.txt", f"{tmp_path}/mixed-2.txt"]


def test_the_real_text_corpus_prepares(shared_data, tmp_path):
    """All of shared/data/text (Gutenberg books, State of the Union and inaugural addresses,
    Wikipedia, Shakespeare), whose files that are not UTF-8 (found here by Python's own UTF-8
    decoder) are decoded and listed, the rest read as UTF-8."""
    text = shared_data / "text"
    paths = sorted(str(p) for p in text.rglob("*.txt"))
    not_utf8 = []
    for p in paths:
        try:
            open(p, "rb").read().decode("utf-8")
        except UnicodeDecodeError:
            not_utf8.append(p)
    assert f"{text}/inaugural/2005-Bush.txt" in not_utf8
    out = _prepare(f"text:{text}/*.txt,{text}/*/*.txt", tmp_path / "real", dupe_factor=1,
                   shard_mb=4.0)
    meta = dataset_layout.read_meta(out)
    assert sorted(meta["decoded_files"]) == not_utf8
    assert meta["num_examples"]["train"] > 10_000 and meta["skipped_lines"] == 0
