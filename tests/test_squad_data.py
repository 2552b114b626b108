"""SQuAD reading, sliding-window featurization and answer postprocessing."""
import json
import time

import numpy as np
import pytest

from mobilebert_jax.data.squad import (
    SquadExample,
    featurize_squad,
    parse_squad_json,
    postprocess_squad,
    read_squad,
    to_squad_json,
    training_examples,
    write_predictions,
)
from mobilebert_jax.metrics.squad import normalize_answer, squad_scores

NUMBERS = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture(scope="module")
def tokenizer(bert_vocab_path):
    from mobilebert_jax.data.tokenizers import load_tokenizer

    return load_tokenizer(str(bert_vocab_path))


def _squad_json(version="1.1"):
    qas = [{"id": "q1", "question": "Which numbers?",
            "answers": [{"text": "nine ten", "answer_start": NUMBERS.index("nine")}]}]
    if version == "v2.0":
        qas[0]["is_impossible"] = False
        qas.append({"id": "q2", "question": "Which colour?", "answers": [],
                    "plausible_answers": [{"text": "two", "answer_start": 4}],
                    "is_impossible": True})
    return {"version": version, "data": [{"title": "Numbers", "paragraphs": [
        {"context": NUMBERS, "qas": qas}]}]}


def test_read_squad_v1_and_v2(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(_squad_json("v2.0")))
    q1, q2 = read_squad(path)
    nine = NUMBERS.index("nine")
    assert q1 == SquadExample("q1", "Which numbers?", NUMBERS, [("nine ten", nine)], False,
                              "Numbers")
    assert q2.is_impossible and q2.answers == []
    # to_squad_json gives back a file that the official scoring accepts.
    assert squad_scores(to_squad_json([q1, q2], "2.0"), {"q1": "nine ten", "q2": ""},
                        warn_missing=False)["exact"] == 100.0
    with pytest.raises(ValueError, match="q2 has no answers"):
        read_squad(path, version="1.1")


def test_read_squad_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_squad(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="top level has no 'data'"):
        parse_squad_json({"version": "1.1"})
    broken = _squad_json()
    del broken["data"][0]["paragraphs"][0]["qas"][0]["question"]
    with pytest.raises(ValueError, match="question q1 has no 'question' key"):
        parse_squad_json(broken)
    no_context = {"data": [{"paragraphs": [{"qas": []}]}]}
    with pytest.raises(ValueError, match="article 0 paragraph 0 has no 'context'"):
        parse_squad_json(no_context)
    bad_answer = _squad_json()
    del bad_answer["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"]
    with pytest.raises(ValueError, match="answer_start"):
        parse_squad_json(bad_answer)
    with pytest.raises(ValueError, match="unknown SQuAD version"):
        parse_squad_json(_squad_json(), version="3.0")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_squad(tmp_path / "bad.json")


def _windows(tokenizer, is_training=True):
    examples = parse_squad_json(_squad_json())
    # [CLS] which numbers ? [SEP] = 5 tokens, then 5 context tokens + [SEP] in 11 positions:
    # windows over the 12 context tokens start at 0, 3, 6, ... with stride 3.
    query = len(tokenizer.encode("Which numbers?"))
    assert query == 3 and len(tokenizer.encode(NUMBERS)) == 12
    return examples, featurize_squad(examples, tokenizer, max_seq_length=12, doc_stride=3,
                                     max_query_length=64, is_training=is_training)


def test_windows_positions_and_max_context(tokenizer):
    examples, features = _windows(tokenizer)
    # 6 context tokens per window: windows (0..5), (3..8), (6..11).
    assert features["input_ids"].shape == (3, 12)
    assert features["example_index"].tolist() == [0, 0, 0]
    words = NUMBERS.split()
    for f, first in enumerate([0, 3, 6]):
        ids = features["input_ids"][f]
        assert ids[0] == tokenizer.cls_id and ids[4] == tokenizer.sep_id and ids[11] == \
            tokenizer.sep_id
        assert tokenizer.decode(ids[5:11]) == " ".join(words[first:first + 6])
        np.testing.assert_array_equal(features["segment_ids"][f], [0] * 5 + [1] * 7)
        spans = [NUMBERS[s:e] for s, e in features["offset_mapping"][f, 5:11]]
        assert spans == words[first:first + 6]
        assert (features["offset_mapping"][f, :5] == -1).all()
    # By hand, a token's score is min(left, right context): token 4 ties between windows 0
    # and 1 (1 vs 1) and goes to the first; token 7 ties between windows 1 and 2.
    expected = [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    np.testing.assert_array_equal(features["token_is_max_context"][:, 5:11], expected)
    assert not features["token_is_max_context"][:, :5].any()
    # "nine ten" = context tokens 8, 9: only in the last window (positions 5 + 2, 5 + 3).
    assert features["start_positions"].tolist() == [0, 0, 7]
    assert features["end_positions"].tolist() == [0, 0, 8]
    assert "start_positions" not in _windows(tokenizer, is_training=False)[1]


def test_impossible_and_misplaced_answers_point_to_cls(tokenizer):
    examples = parse_squad_json(_squad_json("v2.0"))
    features = featurize_squad(examples, tokenizer, is_training=True)
    impossible = features["example_index"] == 1
    assert (features["start_positions"][impossible] == 0).all()
    # An offset pointing into a longer word is moved to the whole-word occurrence.
    misplaced = SquadExample("q", "Which?", "often ten times", [("ten", 1)])
    out = featurize_squad([misplaced], tokenizer, is_training=True)
    s, e = out["start_positions"][0], out["end_positions"][0]
    assert misplaced.context[out["offset_mapping"][0, s, 0]:out["offset_mapping"][0, e, 1]] \
        == "ten"


def test_training_questions_whose_answer_is_not_at_its_offset_are_skipped_and_said(capsys):
    context = "one two three four"
    examples = [SquadExample("good", "Q?", context, [("three", 8)]),
                SquadExample("off-by-one", "Q?", context, [("three", 9)]),
                SquadExample("second-answer-fits", "Q?", context, [("two", 0), ("two", 4)]),
                SquadExample("not-there", "Q?", context, [("five", 0)]),
                SquadExample("impossible", "Q?", context, [], is_impossible=True)]
    kept = training_examples(examples, "train.json")
    assert [ex.qas_id for ex in kept] == ["good", "second-answer-fits", "impossible"]
    assert ("warning: train.json: skipped 2 of 5 training questions whose answer text is not "
            "at its answer_start (first: off-by-one)") in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"^train.json: none of its 2 questions has its answer "
                                         r"text at its answer_start in the context \(first: "
                                         r"off-by-one\)"):
        training_examples(examples[1:2] + examples[3:4], "train.json")


def _logits(features, picks):
    start = np.full(features["input_ids"].shape, -5.0, dtype=np.float32)
    end = start.copy()
    for f, s, e, value in picks:
        start[f, s] = max(start[f, s], value)
        end[f, e] = max(end[f, e], value)
    return start, end


def test_postprocess_picks_the_best_valid_span(tokenizer, tmp_path):
    examples, features = _windows(tokenizer, is_training=False)
    start, end = _logits(features, [
        (0, 1, 2, 9.0),    # inside the question: rejected
        (1, 5, 5, 8.0),    # token "four" in window 1, where it is not max context: rejected
        (2, 7, 8, 3.0),    # "nine ten": the answer
        (2, 10, 6, 7.0),   # end before start: rejected
    ])
    predictions, null_odds, nbest = postprocess_squad(examples, features, start, end)
    assert predictions == {"q1": "nine ten"} and null_odds == {}
    assert nbest["q1"][0]["text"] == "nine ten"
    assert nbest["q1"][0]["start_logit"] == pytest.approx(3.0)
    assert sum(c["probability"] for c in nbest["q1"]) == pytest.approx(1.0)
    assert len({c["text"] for c in nbest["q1"]}) == len(nbest["q1"])
    # With a one-token limit, "nine ten" is too long.
    short, _, _ = postprocess_squad(examples, features, start, end, max_answer_length=1)
    assert short["q1"] != "nine ten" and len(short["q1"].split()) == 1

    paths = write_predictions(tmp_path / "out", predictions, null_odds, nbest)
    assert set(paths) == {"predictions", "nbest"}
    assert json.loads(paths["predictions"].read_text()) == {"q1": "nine ten"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "nbest_predictions.json", "predictions.json"]


def test_postprocess_v2_null_threshold(tokenizer, tmp_path):
    examples = parse_squad_json(_squad_json("v2.0"))
    features = featurize_squad(examples, tokenizer, is_training=False)
    # Each example has one window; the span "nine ten" scores 2 + 3 = 5 in both, the null
    # ([CLS]) scores are 1 + 1 = 2 for q1 and 4 + 4 = 8 for q2.
    start = np.full(features["input_ids"].shape, -5.0, dtype=np.float32)
    end = start.copy()
    for f, null_logit in enumerate([1.0, 4.0]):
        nine = int(np.flatnonzero(features["offset_mapping"][f, :, 0] == NUMBERS.index("nine"))[0])
        start[f, nine], end[f, nine + 1] = 2.0, 3.0
        start[f, 0] = end[f, 0] = null_logit
    predictions, null_odds, nbest = postprocess_squad(examples, features, start, end,
                                                      version="2.0")
    assert null_odds == {"q1": pytest.approx(-3.0), "q2": pytest.approx(3.0)}
    assert predictions == {"q1": "nine ten", "q2": ""}
    assert "" in {c["text"] for c in nbest["q1"]}
    strict, _, _ = postprocess_squad(examples, features, start, end, version="2.0",
                                     null_score_diff_threshold=-4.0)
    assert strict == {"q1": "", "q2": ""}
    paths = write_predictions(tmp_path, predictions, null_odds)
    result = squad_scores(_squad_json("v2.0"), json.loads(paths["predictions"].read_text()),
                          json.loads(paths["null_odds"].read_text()))
    assert result["exact"] == 100.0 and result["best_exact"] == 100.0


def test_postprocess_rejects_mismatched_logits(tokenizer):
    examples, features = _windows(tokenizer, is_training=False)
    with pytest.raises(ValueError, match="do not match 3 features"):
        postprocess_squad(examples, features, np.zeros((2, 12)), np.zeros((2, 12)))


def test_real_dev_answers_round_trip(shared_data):
    from mobilebert_jax.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(shared_data / "vocab" / "bert-base-uncased-vocab.txt"))
    examples = read_squad(shared_data / "squad" / "dev-v1.1.json")
    assert len(examples) == 10570
    began = time.perf_counter()
    features = featurize_squad(examples, tokenizer, is_training=True)
    assert time.perf_counter() - began < 60
    assert features["input_ids"].shape[1] == 384
    assert set(features["example_index"].tolist()) == set(range(len(examples)))
    # Every context token is "max context" in exactly one window of its example.
    context_tokens = [len(ids) for ids in tokenizer.encode_batch([ex.context for ex in examples])]
    flags = np.bincount(features["example_index"], minlength=len(examples),
                        weights=features["token_is_max_context"].sum(axis=1))
    np.testing.assert_array_equal(flags, context_tokens)
    titles = sorted({ex.title for ex in examples}, key=[ex.title for ex in examples].index)
    few = {i for i, ex in enumerate(examples) if ex.title in titles[:3]}
    checked = 0
    for f in np.flatnonzero(np.isin(features["example_index"], list(few))):
        ex = examples[features["example_index"][f]]
        s, e = int(features["start_positions"][f]), int(features["end_positions"][f])
        if s == 0:
            continue
        golds = {normalize_answer(text) for text, _ in ex.answers}
        start_char, end_char = features["offset_mapping"][f, s, 0], \
            features["offset_mapping"][f, e, 1]
        assert normalize_answer(ex.context[start_char:end_char]) in golds, ex.qas_id
        decoded = normalize_answer(tokenizer.decode(features["input_ids"][f, s:e + 1]))
        assert decoded in {normalize_answer(tokenizer.decode(tokenizer.encode(text)))
                           for text, _ in ex.answers}, ex.qas_id
        checked += 1
    assert checked > 300


def test_tfds_reader_v2_fields():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=4):
        examples = read_squad("tfds", version="2.0")
        rows = list(tfds.as_numpy(tfds.builder("squad/v2.0").as_dataset(split="validation")))
    assert [e.question for e in examples] == [r["question"].decode() for r in rows]
    for ex, row in zip(examples, rows):
        assert ex.is_impossible == bool(row["is_impossible"])
        expected = [] if ex.is_impossible else [t.decode() for t in row["answers"]["text"]]
        assert [text for text, _ in ex.answers] == expected
