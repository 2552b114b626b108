"""Tests of mobilebert_jax.data.pretraining: NSP pair creation and MLM masking statistics."""
import random

import numpy as np
import pytest

from mobilebert_jax.data import pretraining as pt

CLS, SEP, PAD, MASK = 101, 102, 0, 103
SEQ_LEN, MAX_PRED = 128, 20


def _documents(num_docs=60, seed=0):
    """Documents of tokenized sentences whose token ids are unique and increasing, so every
    token tells its document and its position in it."""
    rng = random.Random(seed)
    docs, doc_of, next_id = [], {}, 1000
    for d in range(num_docs):
        doc = []
        for _ in range(rng.randint(15, 40)):
            n = rng.randint(4, 30)
            doc.append(list(range(next_id, next_id + n)))
            for t in range(next_id, next_id + n):
                doc_of[t] = d
            next_id += n
        docs.append(doc)
    return docs, doc_of


def _config(whole_word=False, continuation=None, vocab=200_000):
    return pt.MaskingConfig(
        seq_len=SEQ_LEN, max_predictions_per_seq=MAX_PRED, pad_id=PAD, cls_id=CLS, sep_id=SEP,
        mask_id=MASK, replacement_ids=np.arange(150_000, vocab, dtype=np.int32),
        continuation_mask=continuation, whole_word_masking=whole_word)


@pytest.fixture(scope="module")
def pairs_and_docs():
    docs, doc_of = _documents()
    pairs = pt.create_pairs(docs, SEQ_LEN, CLS, SEP, short_seq_prob=0.1, seed=7)
    return pairs, docs, doc_of


def _split(example):
    ids = example.token_ids.tolist()
    first_sep = ids.index(SEP)
    return ids[1:first_sep], ids[first_sep + 1:-1]


def test_pair_layout(pairs_and_docs):
    pairs, _, _ = pairs_and_docs
    assert sum(len(p.token_ids) for p in pairs) >= 10_000
    for p in pairs:
        ids = p.token_ids
        assert len(ids) <= SEQ_LEN
        assert ids[0] == CLS and ids[-1] == SEP and (ids == SEP).sum() == 2
        first_sep = int(np.flatnonzero(ids == SEP)[0])
        a, b = _split(p)
        assert a and b
        expected_seg = [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        assert p.segment_ids.tolist() == expected_seg
        assert p.next_sentence_label in (pt.IS_NEXT, pt.IS_RANDOM_NEXT)


def test_next_sentence_fraction():
    docs, _ = _documents(300)
    pairs = pt.create_pairs(docs, SEQ_LEN, CLS, SEP, seed=11, dupe_factor=3)
    labels = np.array([p.next_sentence_label for p in pairs])
    assert len(labels) > 4000
    # BERT: 50% random, plus the chunks of a single segment, which always get a random B.
    assert 0.48 <= labels.mean() <= 0.58


def test_pairs_follow_next_sentence_labels(pairs_and_docs):
    pairs, _, doc_of = pairs_and_docs
    for p in pairs:
        a, b = _split(p)
        assert len({doc_of[t] for t in a}) == 1  # A is one document's text, in order
        assert a == sorted(a)
        if p.next_sentence_label == pt.IS_NEXT:
            assert {doc_of[t] for t in b} == {doc_of[a[0]]}
            assert max(a) < min(b)  # B continues A
        else:
            assert doc_of[b[0]] != doc_of[a[0]]


def test_short_sequences_appear(pairs_and_docs):
    pairs, _, _ = pairs_and_docs
    lengths = np.array([len(p.token_ids) for p in pairs])
    # short_seq_prob=0.1 draws a few documents with a short target length.
    assert (lengths < SEQ_LEN // 2).mean() > 0.01
    assert (lengths >= SEQ_LEN - 10).mean() > 0.5


def test_pairs_deterministic_in_seed():
    docs, _ = _documents(20)
    a = pt.create_pairs(docs, 64, CLS, SEP, seed=3, dupe_factor=2)
    b = pt.create_pairs(docs, 64, CLS, SEP, seed=3, dupe_factor=2)
    c = pt.create_pairs(docs, 64, CLS, SEP, seed=4, dupe_factor=2)
    assert [x.token_ids.tobytes() for x in a] == [x.token_ids.tobytes() for x in b]
    assert [x.token_ids.tobytes() for x in a] != [x.token_ids.tobytes() for x in c]
    single = pt.create_pairs(docs, 64, CLS, SEP, seed=3, dupe_factor=1)
    assert 1.7 < len(a) / len(single) < 2.3


def test_truncate_seq_pair_hand_worked():
    a, b = [1, 2, 3, 4, 5], [6, 7]
    pt.truncate_seq_pair(a, b, 4, random.Random(0))
    # The longer list is trimmed until both have two tokens.
    assert b == [6, 7] and len(a) == 2
    assert a in ([1, 2], [2, 3], [3, 4], [4, 5])


def _truncate_one_at_a_time(a, b, max_num_tokens, rng):
    while len(a) + len(b) > max_num_tokens:
        trunc = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()


@pytest.mark.parametrize("seed", range(5))
def test_truncate_seq_pair_equals_removing_one_token_at_a_time(seed):
    rng = random.Random(seed)
    for _ in range(50):
        a = list(range(rng.randint(0, 40)))
        b = list(range(100, 100 + rng.randint(0, 40)))
        limit = rng.randint(0, 50)
        want_a, want_b = list(a), list(b)
        _truncate_one_at_a_time(want_a, want_b, limit, random.Random(seed))
        pt.truncate_seq_pair(a, b, limit, random.Random(seed))
        assert (a, b) == (want_a, want_b)


def test_create_pairs_rejects_bad_input():
    with pytest.raises(ValueError, match="0 non-empty document"):
        pt.create_pairs([[], [[]]], 128, CLS, SEP)
    # One document only: its random next segments could only come from itself.
    with pytest.raises(ValueError, match="1 non-empty document.*need at least 2"):
        pt.create_pairs([[[5, 6], [7, 8]], [[]]], 128, CLS, SEP)
    with pytest.raises(ValueError, match="too short"):
        pt.create_pairs([[[5, 6]]], 4, CLS, SEP)


def test_num_to_predict_hand_worked():
    cfg = _config()
    assert pt.num_to_predict(0, cfg) == 0
    assert pt.num_to_predict(3, cfg) == 1  # round(0.45) = 0, but at least one
    assert pt.num_to_predict(10, cfg) == 2  # round(1.5)
    assert pt.num_to_predict(100, cfg) == 15
    assert pt.num_to_predict(125, cfg) == 19  # round(18.75)
    assert pt.num_to_predict(200, cfg) == MAX_PRED


def test_masking_statistics(pairs_and_docs):
    pairs, _, _ = pairs_and_docs
    cfg = _config()
    maskable = masked = as_mask = kept = randomized = 0
    for i, p in enumerate(pairs):
        f = pt.make_features(p.token_ids, p.segment_ids, p.next_sentence_label, cfg,
                             seed=1, epoch=0, index=i)
        n = len(p.token_ids)
        k = int(f["masked_lm_weights"].sum())
        pos = f["masked_lm_positions"][:k]
        orig = p.token_ids[pos]
        inp = f["input_ids"][pos]
        # Shapes, padding and bookkeeping.
        assert f["input_ids"].shape == (SEQ_LEN,) and f["masked_lm_ids"].shape == (MAX_PRED,)
        assert f["input_mask"].tolist() == [1] * n + [0] * (SEQ_LEN - n)
        assert (f["input_ids"][n:] == PAD).all() and (f["segment_ids"][n:] == 0).all()
        assert f["masked_lm_weights"].tolist() == [1.0] * k + [0.0] * (MAX_PRED - k)
        assert (f["masked_lm_positions"][k:] == 0).all() and (f["masked_lm_ids"][k:] == 0).all()
        assert f["masked_lm_weights"].dtype == np.float32
        assert (np.diff(pos) > 0).all() and (pos < n).all()
        assert (f["masked_lm_ids"][:k] == orig).all()
        assert not np.isin(orig, [CLS, SEP, PAD]).any()
        unmasked = np.setdiff1d(np.arange(n), pos)
        assert (f["input_ids"][unmasked] == p.token_ids[unmasked]).all()
        assert int(f["next_sentence_labels"]) == p.next_sentence_label
        maskable += n - 3
        masked += k
        as_mask += int((inp == MASK).sum())
        kept += int((inp == orig).sum())
        rand = (inp != MASK) & (inp != orig)
        assert (inp[rand] >= 150_000).all()  # drawn from the replacement vocabulary
        randomized += int(rand.sum())
    assert maskable >= 10_000
    assert abs(masked / maskable - 0.15) <= 0.01
    assert abs(as_mask / masked - 0.8) <= 0.02
    assert abs(kept / masked - 0.1) <= 0.02
    assert abs(randomized / masked - 0.1) <= 0.02


def test_masking_deterministic_per_seed_epoch_index(pairs_and_docs):
    pairs, _, _ = pairs_and_docs
    cfg = _config()
    p = pairs[0]

    def feats(seed, epoch, index):
        return pt.make_features(p.token_ids, p.segment_ids, p.next_sentence_label, cfg,
                                seed, epoch, index)

    same = feats(5, 2, 9)
    again = feats(5, 2, 9)
    for key in pt.FEATURE_KEYS:
        assert same[key].tobytes() == again[key].tobytes()
    for other in (feats(5, 3, 9), feats(5, 2, 10), feats(6, 2, 9)):
        assert other["input_ids"].tobytes() != same["input_ids"].tobytes()


def test_whole_word_masking_masks_whole_words():
    # Words of 1-4 pieces; ids < 5000 start a word, ids >= 5000 continue it.
    rng = random.Random(0)
    continuation = np.zeros(200_000, dtype=bool)
    continuation[5000:10000] = True
    cfg = _config(whole_word=True, continuation=continuation)
    masked = maskable = 0
    for index in range(200):
        words = [[rng.randrange(1000, 5000)] + [rng.randrange(5000, 10000)
                                                 for _ in range(rng.randrange(0, 4))]
                 for _ in range(40)]
        body = [t for w in words for t in w][:SEQ_LEN - 3]
        tokens = np.array([CLS] + body[:60] + [SEP] + body[60:] + [SEP], dtype=np.int32)
        _, pos, _ = pt.mask_tokens(tokens, cfg, pt.masking_rng(0, 0, index))
        chosen = set(pos.tolist())
        # Group positions into words exactly as BERT does: a continuation joins its left word.
        word_id, current = {}, -1
        for i, t in enumerate(tokens):
            if t in (CLS, SEP):
                current += 1
                continue
            if not continuation[t] or tokens[i - 1] in (CLS, SEP):
                current += 1
            word_id[i] = current
        for w in {word_id[i] for i in chosen}:
            members = {i for i, x in word_id.items() if x == w}
            assert members <= chosen
        assert len(pos) <= pt.num_to_predict(len(tokens) - 3, cfg)
        masked += len(pos)
        maskable += len(tokens) - 3
    assert 0.13 <= masked / maskable <= 0.16


def test_whole_word_masking_needs_continuation_mask():
    with pytest.raises(ValueError, match="continuation mask"):
        _config(whole_word=True, continuation=None)


def test_features_reject_overlong_examples():
    cfg = _config()
    tokens = np.arange(SEQ_LEN + 1, dtype=np.int32) + 1000
    with pytest.raises(ValueError, match="exceeds seq_len"):
        pt.features_from_mask(tokens, np.zeros_like(tokens), 0, np.array([1]), np.array([5]),
                              cfg)
