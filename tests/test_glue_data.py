"""GLUE readers, featurization and submission files: tiny hand-made TSVs and the real files."""

import numpy as np
import pytest

from mobilebert_jax.data.glue import (
    GLUE_TASKS,
    GlueExample,
    featurize_glue,
    get_task,
    load_glue,
    read_glue_predictions,
    read_glue_tsv,
    write_glue_submission,
)
from mobilebert_jax.data.model_inputs import truncate_pair_lengths


@pytest.fixture(scope="module")
def tokenizer(bert_vocab_path):
    from mobilebert_jax.data.tokenizers import load_tokenizer

    return load_tokenizer(str(bert_vocab_path))


def _tsv(path, lines, bom=False):
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_registry_is_complete():
    assert set(GLUE_TASKS) >= {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte",
                               "wnli"}
    files = {f for t in GLUE_TASKS.values() for _, f in t.submission_files}
    assert files >= {"CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv",
                     "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv"}
    assert get_task("STS-B").is_regression and get_task("sts_b").labels is None
    assert get_task("mnli").dev_splits == ("dev_matched", "dev_mismatched")
    assert get_task("mrpc").metrics == ("accuracy", "f1")


def test_mrpc_with_bom_and_literal_quotes(tmp_path):
    path = _tsv(tmp_path / "dev.tsv", [
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        '1\t11\t12\tHe said " hi .\t" Hi , " he said .',
        "0\t13\t14\tOne\tTwo",
    ], bom=True)
    examples = read_glue_tsv(path, "mrpc", "dev")
    assert examples == [GlueExample("0", 'He said " hi .', '" Hi , " he said .', 1),
                        GlueExample("1", "One", "Two", 0)]


def test_cola_headerless_train_and_test_with_header(tmp_path):
    train = _tsv(tmp_path / "train.tsv", ["gj04\t1\t\tGood one .", "gj04\t0\t*\tBad one ."])
    assert [(e.text_a, e.label) for e in read_glue_tsv(train, "cola", "train")] == [
        ("Good one .", 1), ("Bad one .", 0)]
    test = _tsv(tmp_path / "test.tsv", ["index\tsentence", "7\tA test sentence ."])
    assert read_glue_tsv(test, "cola", "test") == [
        GlueExample("7", "A test sentence .", None, None)]


def test_label_names_and_stsb_scores(tmp_path):
    rte = _tsv(tmp_path / "rte.tsv", ["index\tsentence1\tsentence2\tlabel",
                                      "0\ta\tb\tnot_entailment", "1\tc\td\tentailment"])
    assert [e.label for e in read_glue_tsv(rte, "rte", "dev")] == [1, 0]
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    stsb = _tsv(tmp_path / "stsb.tsv", [header + "\tscore", "0\tg\tf\ty\t1\tn\tn\tA.\tB.\t3.800"])
    assert read_glue_tsv(stsb, "stsb", "dev")[0].label == pytest.approx(3.8)


def test_bad_input_names_the_line(tmp_path):
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'"):
        read_glue_tsv(tmp_path / "x.tsv", "squad")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_glue_tsv(tmp_path / "missing.tsv", "rte")
    bad_row = _tsv(tmp_path / "rows.tsv", ["index\tsentence1\tsentence2\tlabel",
                                           "0\ta\tb\tentailment", "1\tonly two fields"])
    with pytest.raises(ValueError, match=r"rows\.tsv:3: expected 4 tab-separated fields, got 2"):
        read_glue_tsv(bad_row, "rte", "dev")
    bad_label = _tsv(tmp_path / "labels.tsv", ["index\tsentence1\tsentence2\tlabel",
                                               "0\ta\tb\tmaybe"])
    with pytest.raises(ValueError, match=r"labels\.tsv:2: label 'maybe' is not one of"):
        read_glue_tsv(bad_label, "rte", "dev")
    bad_sst = _tsv(tmp_path / "sst.tsv", ["sentence\tlabel", "fine\t1", "odd\t2"])
    with pytest.raises(ValueError, match=r"sst\.tsv:3: label '2'"):
        read_glue_tsv(bad_sst, "sst2", "dev")
    no_header = _tsv(tmp_path / "noheader.tsv", ["0\ta\tb\tentailment"])
    with pytest.raises(ValueError, match="header"):
        read_glue_tsv(no_header, "rte", "dev")
    with pytest.raises(ValueError, match="no split 'dev'"):
        read_glue_tsv(bad_row, "mnli", "dev")


def test_load_glue_from_task_folder_and_root(tmp_path):
    folder = tmp_path / "WNLI"
    folder.mkdir()
    _tsv(folder / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\t1"])
    assert load_glue("wnli", folder, "dev") == load_glue("WNLI", tmp_path, "dev")
    with pytest.raises(FileNotFoundError, match="no train.tsv"):
        load_glue("wnli", tmp_path, "train")


def _truncate_by_popping(len_a, len_b, max_tokens):
    """BERT's reference loop, popping one token at a time."""
    while len_a + len_b > max_tokens:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def test_truncation_matches_token_by_token_reference():
    for len_a in range(12):
        for len_b in range(12):
            for max_tokens in range(16):
                assert truncate_pair_lengths(len_a, len_b, max_tokens) == _truncate_by_popping(
                    len_a, len_b, max_tokens)
    assert truncate_pair_lengths(10, 3, 8) == (5, 3)
    assert truncate_pair_lengths(4, 4, 5) == (3, 2)  # pops b, a, b


def test_featurize_pair_and_single(tokenizer):
    examples = [GlueExample("0", "hello world", "good morning", 1),
                GlueExample("1", "hello", None, 0)]
    out = featurize_glue(examples, tokenizer, max_seq_length=10)
    hello, world = tokenizer.encode("hello world")
    good, morning = tokenizer.encode("good morning")
    cls, sep, pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    np.testing.assert_array_equal(out["input_ids"][0],
                                  [cls, hello, world, sep, good, morning, sep, pad, pad, pad])
    np.testing.assert_array_equal(out["segment_ids"][0], [0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(out["input_mask"][0], [1] * 7 + [0] * 3)
    np.testing.assert_array_equal(out["input_ids"][1][:4], [cls, hello, sep, pad])
    np.testing.assert_array_equal(out["segment_ids"][1], 0)
    assert out["labels"].dtype == np.int32 and out["labels"].tolist() == [1, 0]
    assert all(v.shape[0] == 2 for v in out.values())


def test_featurize_truncates_longer_side_first(tokenizer):
    long_a = "one two three four five six seven eight"
    ex = GlueExample("0", long_a, "yes no", None)
    out = featurize_glue([ex], tokenizer, max_seq_length=9, task="rte")
    ids = out["input_ids"][0].tolist()
    a_ids = tokenizer.encode(long_a)
    # 9 - 3 specials = 6 tokens: 8 + 2 → 4 + 2.
    assert ids == [tokenizer.cls_id, *a_ids[:4], tokenizer.sep_id,
                   *tokenizer.encode("yes no"), tokenizer.sep_id]
    assert out["labels"].tolist() == [-1]
    stsb = featurize_glue([GlueExample("0", "a", "b", 2.5)], tokenizer, 8, task="stsb")
    assert stsb["labels"].dtype == np.float32 and stsb["labels"][0] == pytest.approx(2.5)


def test_submission_round_trip(tmp_path):
    path = write_glue_submission("rte", [0, 1, 1], tmp_path)
    assert path.name == "RTE.tsv"
    assert path.read_text().splitlines() == ["index\tprediction", "0\tentailment",
                                             "1\tnot_entailment", "2\tnot_entailment"]
    assert read_glue_predictions(path, "rte") == [0, 1, 1]
    stsb = write_glue_submission("stsb", [-0.5, 2.25, 7.0], tmp_path)
    assert stsb.read_text().splitlines()[1:] == ["0\t0.000", "1\t2.250", "2\t5.000"]
    mm = write_glue_submission("mnli", [2, 0], tmp_path, split="test_mismatched")
    assert mm.name == "MNLI-mm.tsv" and "1\tcontradiction" in mm.read_text()
    with pytest.raises(ValueError, match="several test splits"):
        write_glue_submission("mnli", [0], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNLI-mm.tsv", "RTE.tsv", "STS-B.tsv"]


def test_read_predictions_checks_rows(tmp_path):
    examples = [GlueExample("0", "a", None, 0), GlueExample("1", "b", None, 1)]
    missing = _tsv(tmp_path / "p.tsv", ["index\tprediction", "0\t1", "5\t0"])
    with pytest.raises(ValueError, match="no prediction for index '1'"):
        read_glue_predictions(missing, "sst2", examples)
    short = _tsv(tmp_path / "short.txt", ["1"])
    with pytest.raises(ValueError, match="1 predictions for 2 examples"):
        read_glue_predictions(short, "sst2", examples)
    bad = _tsv(tmp_path / "bad.txt", ["1", "yes"])
    with pytest.raises(ValueError, match=r"bad\.txt:2: label 'yes'"):
        read_glue_predictions(bad, "sst2", examples)


def test_real_glue_files(shared_data, tokenizer):
    glue = shared_data / "glue"
    expected = {("sst2", "dev"): 872, ("mrpc", "dev"): 408, ("mrpc", "test"): 1725,
                ("rte", "dev"): 277, ("wnli", "test"): 146, ("qnli", "dev"): 5463,
                ("cola", "train"): 8551, ("stsb", "train"): 5749}
    for (task, split), count in expected.items():
        examples = load_glue(task, glue, split)
        assert len(examples) == count, (task, split)
        if split == "test":
            assert all(e.label is None for e in examples)
        else:
            assert all(e.label is not None for e in examples)
    mrpc = load_glue("mrpc", glue / "MRPC", "dev")
    assert mrpc[0].text_b.startswith('" The foodservice')  # a literal quote, kept
    features = featurize_glue(mrpc, tokenizer, max_seq_length=128)
    assert features["input_ids"].shape == (408, 128)
    assert (features["input_ids"][:, 0] == tokenizer.cls_id).all()
    lengths = features["input_mask"].sum(axis=1)
    assert (features["input_ids"][np.arange(408), lengths - 1] == tokenizer.sep_id).all()
    assert sorted(set(features["labels"].tolist())) == [0, 1]


def test_tfds_reader_maps_labels_by_name():
    """TFDS orders MNLI's classes differently from the TSVs; labels must follow the names."""
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=6):
        examples = load_glue("mnli", "tfds", "dev_mismatched")
        builder = tfds.builder("glue/mnli")
        names = builder.info.features["label"].names
        rows = list(tfds.as_numpy(builder.as_dataset(split="validation_mismatched")))
    assert [GLUE_TASKS["mnli"].labels[e.label] for e in examples] == [
        names[r["label"]] for r in rows]
    assert [e.text_a for e in examples] == [r["premise"].decode() for r in rows]
