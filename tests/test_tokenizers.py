"""Tests of mobilebert_jax.data.tokenizers: WordPiece against HF BERT, SentencePiece training."""
import os

import pytest

from mobilebert_jax.data import tokenizers as tok

SENTENCES = [
    "Héllo, Wörld! Naïve café-au-lait costs $3.50 (approx.).",
    "The quick brown fox jumped over the lazy dog's back... unaffable!",
    "北京是中国的首都。Tokyo は日本の首都です",
    "Résumé:\tcrème brûlée;   Ångström — “quoted” text",
    "e-mail: someone@example.com, url http://x.y/z?a=1&b=2",
]


@pytest.fixture(scope="module")
def vocab_path(bert_vocab_path):
    return bert_vocab_path


@pytest.fixture(scope="module")
def wordpiece(vocab_path):
    return tok.load_tokenizer(vocab_path)


def test_bert_special_ids(wordpiece):
    assert wordpiece.vocab_size == 30522
    assert (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id, wordpiece.sep_id,
            wordpiece.mask_id) == (0, 100, 101, 102, 103)


def test_shared_vocab_special_ids(shared_data):
    t = tok.load_tokenizer(str(shared_data / "vocab" / "bert-base-uncased-vocab.txt"))
    assert t.special_ids == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102,
                             "[MASK]": 103}
    assert t.vocab_size == 30522


def test_wordpiece_hand_worked(wordpiece):
    ids = wordpiece.encode("Héllo, WORLD! unaffable 中文")
    tokens = [wordpiece.id_to_token(i) for i in ids]
    # Lower-casing, accent stripping, punctuation split, CJK split, ## continuation pieces.
    assert tokens == ["hello", ",", "world", "!", "una", "##ffa", "##ble", "中", "文"]
    assert [wordpiece.is_subword_continuation(i) for i in ids] == [
        False, False, False, False, False, True, True, False, False]


def _reference_tokenizer(kind, vocab_path):
    import transformers
    if kind == "fast":
        return transformers.BertTokenizerFast(vocab_path, do_lower_case=True)
    try:  # transformers >= 5 keeps the pure-Python BasicTokenizer + WordPiece here
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
        return BertTokenizerLegacy(vocab_path, do_lower_case=True)
    except ImportError:
        return transformers.BertTokenizer(vocab_path, do_lower_case=True)


@pytest.mark.parametrize("kind", ["fast", "python"])
def test_wordpiece_matches_transformers(wordpiece, vocab_path, kind):
    ref = _reference_tokenizer(kind, vocab_path)
    for s in SENTENCES:
        assert wordpiece.encode(s) == ref.encode(s, add_special_tokens=False), s
    assert wordpiece.encode_batch(SENTENCES) == [
        ref.encode(s, add_special_tokens=False) for s in SENTENCES]


def test_wordpiece_offsets_point_into_text(wordpiece):
    text = "Héllo, wörld! unaffable"
    ids, offsets = wordpiece.encode_with_offsets(text)
    assert ids == wordpiece.encode(text)
    assert [text[a:b] for a, b in offsets] == ["Héllo", ",", "wörld", "!", "una", "ffa", "ble"]


def test_wordpiece_decode_and_lookup(wordpiece):
    ids = wordpiece.encode("the cat sat.")
    assert wordpiece.decode([wordpiece.cls_id] + ids + [wordpiece.sep_id]) == "the cat sat."
    assert wordpiece.token_to_id("[MASK]") == 103
    assert wordpiece.token_to_id("no-such-token-xyz") is None
    rep = set(wordpiece.replacement_ids().tolist())
    assert not rep & {0, 100, 101, 102, 103, 1, 998}  # specials and [unused*]
    assert wordpiece.token_to_id("the") in rep


def test_check_vocab(wordpiece):
    tok.check_vocab(wordpiece, 30522)
    with pytest.raises(ValueError, match=r"vocab_size=30000 but tokenizer .* has 30522"):
        tok.check_vocab(wordpiece, 30000)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tok.load_tokenizer(str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="no vocab.txt"):
        tok.load_tokenizer(str(tmp_path))
    bad = tmp_path / "vocab.txt"
    bad.write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="lacks the BERT special tokens"):
        tok.load_tokenizer(str(bad))
    corrupt = tmp_path / "x.model"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        tok.load_tokenizer(str(corrupt))
    other = tmp_path / "x.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="unknown tokenizer file"):
        tok.load_tokenizer(str(other))


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    corpus = d / "corpus.txt"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda",
             "omicron", "sigma", "upsilon", "phi", "chi", "psi", "omega", "jump", "quixotic"]
    lines = [" ".join(words[(i * j + j * j) % len(words)] for j in range(1, 12)) + "."
             for i in range(600)]
    corpus.write_text("\n".join(lines) + "\n")
    return tok.train_sentencepiece([str(corpus)], str(d / "sp"), vocab_size=40)


def test_sentencepiece_train_and_load(sentencepiece_model, tmp_path):
    sp = sentencepiece_model
    assert sp.vocab_size == 40
    assert sp.special_ids == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    loaded = tok.load_tokenizer(sp.path)
    assert isinstance(loaded, tok.SentencePieceTokenizer)
    text = "alpha beta gamma."
    ids = loaded.encode(text)
    assert ids == sp.encode(text) and ids
    assert not set(ids) & {0, 2, 3, 4}
    assert loaded.decode([2] + ids + [3]) == text
    assert loaded.encode_batch([text, "delta"]) == [ids, loaded.encode("delta")]
    # Word starts carry "▁"; the others continue the previous word.
    for i in ids:
        assert loaded.is_subword_continuation(i) == (
            not loaded.id_to_token(i).startswith("\u2581"))
    assert not os.path.exists(sp.path + ".tmp")


def test_sentencepiece_offsets(sentencepiece_model):
    text = "alpha  beta gamma"
    ids, offsets = sentencepiece_model.encode_with_offsets(text)
    assert ids == sentencepiece_model.encode(text)
    covered = "".join(text[a:b] for a, b in offsets)
    assert covered.replace(" ", "") == text.replace(" ", "")
    for (a, b), i in zip(offsets, ids):
        piece = sentencepiece_model.id_to_token(i).lstrip("\u2581")
        assert text[a:b] == piece


def test_sentencepiece_bad_input(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        tok.train_sentencepiece([str(empty)], str(tmp_path / "m"), vocab_size=50)
    with pytest.raises(FileNotFoundError):
        tok.train_sentencepiece([str(tmp_path / "nope.txt")], str(tmp_path / "m"), 50)
