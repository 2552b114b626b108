"""Tests of mobilebert_jax.data.corpus: sentence splitting, the corpus layouts and specs."""
import itertools
import os

import pytest

from mobilebert_jax.data import corpus, sentences


def test_split_sentences_hand_worked():
    text = ("Mr. Smith went to Washington. He met Dr. J. R. R. Tolkien! Was it 5 p.m.? "
            '"Yes," she said. (It was.) The U.S. economy grew 3.5% in 2001.  Then e.g. this. '
            "lower case after a stop. stays")
    assert sentences.split_sentences(text) == [
        "Mr. Smith went to Washington.", "He met Dr. J. R. R. Tolkien!", "Was it 5 p.m.?",
        '"Yes," she said.', "(It was.)", "The U.S. economy grew 3.5% in 2001.",
        "Then e.g. this. lower case after a stop. stays"]
    assert sentences.split_sentences("   ") == []
    assert sentences.split_sentences("No final stop") == ["No final stop"]


def test_text_layout(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("First doc line one. Second sentence!\nAnother line\n\n\n"
                 "Second doc.\n\n")
    b = tmp_path / "b.txt"
    b.write_text("Third doc without trailing newline")
    docs = corpus.load_documents(f"text:{a},{b}")
    assert docs == [["First doc line one.", "Second sentence!", "Another line"],
                    ["Second doc."], ["Third doc without trailing newline"]]
    # Globs expand, sorted.
    assert corpus.load_documents(f"text:{tmp_path}/*.txt") == docs


def test_wiki_article_layout(tmp_path):
    f = tmp_path / "wiki.txt"
    f.write_text("= Alpha =\nAlpha is a letter. It comes first.\nSecond paragraph here.\n"
                 "= Beta Gamma =\n\nBeta follows alpha.\n= Empty =\n")
    assert corpus.load_documents(f"wiki_articles:{f}") == [
        ["Alpha is a letter.", "It comes first.", "Second paragraph here."],
        ["Beta follows alpha."]]


def test_wiki_sample_from_shared_data(shared_data):
    docs = corpus.load_documents(f"wiki_articles:{shared_data / 'text' / 'wiki_sample.txt'}")
    assert len(docs) == 106
    assert sum(len(s.split()) for d in docs for s in d) > 400_000


def test_clean_wiki_markup_hand_worked():
    raw = ("'''Alpha''' is the ''first'' letter of many alphabets.\n\n==History==\n"
           "*A list item with four words\n* \n: 1\n===Sub heading===\nEnd of the text.")
    assert sentences.clean_wiki_markup(raw) == [
        "Alpha is the first letter of many alphabets.", "A list item with four words",
        "End of the text."]


def test_gensim_default_parses_articles():
    spec = corpus.parse_corpus_spec("gensim_wiki")
    assert os.path.isfile(spec.paths[0])
    docs = list(itertools.islice(corpus.iter_documents(spec), 3))
    assert len(docs) == 3
    for doc in docs:
        text = " ".join(doc)
        assert len(text.split()) >= corpus.MIN_ARTICLE_WORDS
        assert "''" not in text and "#REDIRECT" not in text and "==" not in text
    assert docs[0][0].startswith("Anarchism is a political philosophy")


def test_tfds_text_dataset(tmp_path):
    import tensorflow_datasets as tfds
    tfds.dataset_builders.store_as_tfds_dataset(
        name="tiny_text_corpus", version="1.0.0",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        split_datasets={"train": [(0, {"text": "One. Two!\nThree?"}),
                                  (1, {"text": ""}), (2, {"text": "Four."})]},
        data_dir=str(tmp_path), disable_shuffling=True)
    docs = corpus.load_documents(f"tfds:tiny_text_corpus:train:text@{tmp_path}")
    assert docs == [["One.", "Two!", "Three?"], ["Four."]]
    with pytest.raises(ValueError, match="no split 'test'"):
        corpus.load_documents(f"tfds:tiny_text_corpus:test@{tmp_path}")
    with pytest.raises(ValueError, match="no feature 'body'"):
        corpus.load_documents(f"tfds:tiny_text_corpus:train:body@{tmp_path}")
    with pytest.raises(ValueError, match="not found or not prepared"):
        corpus.load_documents(f"tfds:no_such_corpus_xyz@{tmp_path}")


def test_spec_parsing():
    spec = corpus.parse_corpus_spec("tfds:wikipedia/20230601.en")
    assert (spec.kind, spec.tfds_name, spec.tfds_split, spec.tfds_text_key) == (
        "tfds", "wikipedia/20230601.en", "train", "text")
    spec = corpus.parse_corpus_spec("tfds:wikipedia/20230601.en:train[:1%]:body@/d")
    assert (spec.tfds_split, spec.tfds_text_key, spec.tfds_data_dir) == (
        "train[:1%]", "body", "/d")


def test_bad_specs_and_empty_corpus(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus spec"):
        corpus.parse_corpus_spec("books:/x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus.parse_corpus_spec(f"text:{tmp_path}/missing.txt")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        corpus.parse_corpus_spec(f"text:{tmp_path}/*.nothing")
    with pytest.raises(ValueError, match="names no file"):
        corpus.parse_corpus_spec("text:")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(ValueError, match="is empty"):
        corpus.load_documents(f"text:{empty}")
    corrupt = tmp_path / "dump.xml.bz2"
    corrupt.write_bytes(b"not bzip2 data")
    with pytest.raises(ValueError, match="Wikipedia dump"):
        corpus.load_documents(f"gensim_wiki:{corrupt}")
    with pytest.raises(FileNotFoundError):
        corpus.load_documents(f"gensim_wiki:{tmp_path}/none.bz2")


def test_fingerprint_tracks_file_changes(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("Some text.\n")
    before = corpus.corpus_fingerprint(f"text:{f}")
    assert corpus.corpus_fingerprint(f"text:{f}") == before
    f.write_text("Some other text.\n")
    assert corpus.corpus_fingerprint(f"text:{f}") != before


# -- text files as they come: encodings, stray bytes, binary files ---------------------------
def test_declared_and_detected_encodings_read_as_the_utf8_file(tmp_path, capsys):
    text = ("Café crème at the Zürich fête. Señor Núñez paid 5\u00a0francs.\n"
            "Another line of the first document.\n\nThe second document, naïve façade.\n")
    utf8, latin1 = tmp_path / "utf8.txt", tmp_path / "latin1.txt"
    utf8.write_text(text, encoding="utf-8")
    latin1.write_bytes(text.encode("latin-1"))
    expected = corpus.load_documents(f"text:{utf8}")
    assert expected[0][0] == "Café crème at the Zürich fête."
    assert corpus.load_documents(f"text:{latin1}") == expected
    err = capsys.readouterr().err
    assert f"note: {latin1}: not UTF-8 (10 bytes outside ASCII, first on line 1): decoded as " \
           "cp1252 (detected)" in err
    assert "note: 1 of 1 corpus files are not plain UTF-8: 1 in a detected encoding" in err
    assert corpus.load_documents(f"text:{latin1},encoding=latin-1") == expected
    assert f"note: {latin1}: decoded as latin-1 (declared)" in capsys.readouterr().err
    # declared wrongly: the file and the byte that does not decode
    with pytest.raises(ValueError, match=rf"{utf8}: not ascii text \(byte offset 3\)"):
        corpus.load_documents(f"text:{utf8},encoding=ascii")
    with pytest.raises(ValueError, match="unknown encoding 'klingon'"):
        corpus.parse_corpus_spec(f"text:{utf8},encoding=klingon")
    with pytest.raises(ValueError, match="'utf-16' is not ASCII-compatible"):
        corpus.parse_corpus_spec(f"text:{utf8},encoding=utf-16")


def test_stray_bytes_in_a_utf8_file_are_read_as_cp1252_and_said(tmp_path, capsys):
    f = tmp_path / "mixed.txt"
    f.write_bytes("A “quoted” word.\n".encode() + b"Then caf\xe9 and 10\x80 here.\n")
    assert corpus.load_documents(f"text:{f}") == [["A “quoted” word.", "Then café and 10€ here."]]
    assert (f"warning: {f}: 2 bytes not UTF-8 (first on line 2): decoded as cp1252"
            in capsys.readouterr().err)
    # Past the first MB (what the file's encoding is chosen on), each read task says so.
    big = tmp_path / "big.txt"
    line = b"An ordinary sentence of plain text here.\n"
    head = line * ((1 << 20) // len(line) + 1)
    big.write_bytes(head + b"\nLate caf\xe9.\n")
    docs = corpus.load_documents(f"text:{big}")
    assert docs[-1] == ["Late café."]
    assert (f"warning: {big}: 1 lines from byte 0 hold bytes that are not UTF-8 (first at byte "
            f"{len(head) + 1}): decoded as cp1252") in capsys.readouterr().err


def test_binary_files_are_refused_by_name_and_a_stray_control_character_is_not(tmp_path):
    nul = tmp_path / "image.bin"
    nul.write_bytes(b"GIF89a\x01\x00\x01\x00text")
    with pytest.raises(ValueError, match=rf"{nul}: not a text file \(NUL byte at offset 7\)"):
        corpus.read_tasks(corpus.parse_corpus_specs(f"text:{nul}"))
    controls = tmp_path / "controls.dat"
    controls.write_bytes(b"ok line\n" + b"\x1b[0m\x02\x03\n" * 3)
    with pytest.raises(ValueError, match=rf"{controls}: not a text file \(control characters "
                                         r"on 3 of its first 5 lines"):
        corpus.read_tasks(corpus.parse_corpus_specs(f"text:{controls}"))
    dos = tmp_path / "dos.txt"  # a DOS end-of-file mark after the text
    dos.write_bytes(b"One sentence here.\r\nAnother one.\r\n" * 20 + b"\x1a")
    assert corpus.load_documents(f"text:{dos}")[0][:2] == ["One sentence here.", "Another one."]
