"""A vocabulary for your own language or domain (mobilebert_jax.data.vocab): trained on a
corpus, it pretrains the smoke teacher (whose vocab_size follows it) and that teacher fine-tunes;
the command's refusals leave nothing half-written."""
import json
import random

import pytest

from tests.helpers import CONFIGS, TINY_TEACHER, WORDS, flatten_overrides, run_main, run_module

VOCAB = "mobilebert_jax.data.vocab"
# Words of a made-up language, so that the vocabulary is the corpus's own.
LEXICON = ["ka", "lomi", "tesu", "varo", "nimbe", "quat", "sorel", "üma", "þeng", "zavi",
           "dorun", "felka", "gimo", "hestu", "ilvar", "jusk"] + list(WORDS)


def _sentence(rng):
    return " ".join(rng.choice(LEXICON) for _ in range(rng.randint(4, 12))).capitalize() + "."


@pytest.fixture(scope="module")
def own_corpus(tmp_path_factory):
    rng = random.Random(5)
    path = tmp_path_factory.mktemp("own") / "corpus.txt"
    docs = ["\n".join(" ".join(_sentence(rng) for _ in range(rng.randint(1, 3)))
                      for _ in range(rng.randint(2, 6))) for _ in range(60)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def _teacher_args(workdir, corpus, tokenizer, *extra):
    overrides = dict(model=TINY_TEACHER, batch_size=8, total_steps=3, log_every=1,
                     eval_every=1000, checkpoint_every=3, optimizer=dict(warmup_steps=2),
                     data=dict(corpus=f"text:{corpus}", tokenizer=str(tokenizer), seq_len=64,
                               max_predictions_per_seq=10, eval_fraction=0.05))
    return [f"--config={CONFIGS / 'teacher.py'}:smoke", f"--workdir={workdir}",
            *flatten_overrides(overrides), *extra]


def test_own_wordpiece_vocabulary_pretrains_and_finetunes(own_corpus, tmp_path, capsys):
    out = tmp_path / "vocab"
    r = run_module(VOCAB, f"--corpus=text:{own_corpus}", "--kind=wordpiece", "--size=300",
                   f"--out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"lomi", "nimbe", "sorel", "uma", "þeng"} <= set(vocab)  # lower-cased, accents off
    assert len(vocab) <= 300

    teacher = tmp_path / "teacher"
    rc, err = run_main(_teacher_args(teacher, own_corpus, out), capsys, stdout=True)
    assert rc == 0, err[-3000:]
    assert f"model.vocab_size={len(vocab)}, the size of the tokenizer" in err
    assert json.loads((teacher / "model_config.json").read_text())["vocab_size"] == len(vocab)

    rows = ["text,label"] + [f"{_sentence(random.Random(i))},{'a' if i % 2 else 'b'}"
                             for i in range(24)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    tuned = tmp_path / "tuned"
    rc, err = run_main([f"--config={CONFIGS / 'finetune_text.py'}", f"--workdir={tuned}",
                        f"--config.init_checkpoint={teacher}",
                        f"--config.train_file={tmp_path / 'train.csv'}",
                        "--config.batch_size=8", "--config.eval_batch_size=8",
                        "--config.num_epochs=1", "--config.max_seq_length=16",
                        "--config.log_every=1"], capsys, stdout=True)
    assert rc == 0, err[-3000:]
    assert json.loads((tuned / "eval_results.json").read_text())["finished"]
    assert (tuned / "vocab.txt").read_bytes() == (out / "vocab.txt").read_bytes()


def test_own_sentencepiece_vocabulary_prepares_pretraining_data(own_corpus, tmp_path):
    out = tmp_path / "spm"
    r = run_module(VOCAB, f"--corpus=text:{own_corpus}", "--kind=sentencepiece", "--size=200",
                   f"--out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    import sentencepiece as spm

    from mobilebert_jax.data import dataset_layout, prepare

    model = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert [model.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                        "[MASK]"]
    data = prepare.prepare_dataset(f"text:{own_corpus}", str(out), str(tmp_path / "data"),
                                   seq_len=64, progress=False)
    meta = dataset_layout.read_meta(data)
    assert meta["vocab_size"] == model.get_piece_size()
    assert meta["tokenizer_path"] == str(out / "spm.model")


def test_a_vocab_size_that_disagrees_is_refused_in_one_line(own_corpus, tmp_path, capsys):
    out = tmp_path / "vocab"
    assert run_module(VOCAB, f"--corpus=text:{own_corpus}", "--size=300",
                      f"--out={out}").returncode == 0
    n = len((out / "vocab.txt").read_text(encoding="utf-8").splitlines())
    rc, err = run_main(_teacher_args(tmp_path / "w", own_corpus, out,
                                     "--config.model.vocab_size=999"), capsys)
    assert rc == 1
    assert err.strip().splitlines()[-1] == (
        f"error: --config.model.vocab_size=999 but the tokenizer {out}/vocab.txt has {n} "
        "entries (leave model.vocab_size out to take the tokenizer's)")


def test_the_vocab_command_refuses_without_writing(own_corpus, tmp_path):
    out = tmp_path / "vocab"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    r = run_module(VOCAB, f"--corpus=text:{own_corpus}", f"--out={out}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: output directory {out} is not empty (pass --overwrite to replace it)")
    binary = tmp_path / "corpus.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    fresh = tmp_path / "fresh"
    r = run_module(VOCAB, f"--corpus=text:{binary}", f"--out={fresh}", "--overwrite")
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {binary}: not a text file (NUL byte at offset 0)")
    assert not fresh.exists() and [p.name for p in tmp_path.iterdir()
                                   if p.name.startswith(".")] == []
    r = run_module(VOCAB, f"--corpus=text:{own_corpus}", f"--out={out}", "--overwrite",
                   "--size=100")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["vocab.txt"]
