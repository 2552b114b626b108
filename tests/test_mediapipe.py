"""`--format=mediapipe` checked by the real runtime: classifiers fine-tuned by the trainer
(single-label, multi-label) and encoders (WordPiece and SentencePiece vocabularies) are exported,
loaded by MediaPipe's TextClassifier / TextEmbedder, and fed raw strings; the scores by label
name and the embeddings match the project's own prediction path (`mobilebert_jax.predict`) on
the same strings, and `predict` runs the exported file itself with MediaPipe's results. Each
case MediaPipe cannot run is refused in one line, with nothing written."""
import json
import shutil

import numpy as np
import pytest
from mediapipe.tasks.python.text import text_classifier, text_embedder

from mobilebert_jax import checkpoint
from mobilebert_jax.data.tokenizers import train_sentencepiece
from mobilebert_jax.export.__main__ import main as export_cli
from mobilebert_jax.models import MobileBertForSequenceClassification
from mobilebert_jax.predict import Predictor
from tests.helpers import CONFIGS, SPECIALS, WORDS, run_main, tiny_model_config

SEQ_LEN = 16
ANIMALS, COLORS = ("cat", "dog"), ("red", "blue")
# Raw strings as a user would pass them: capitals, punctuation, one longer than SEQ_LEN pieces.
TEXTS = ["The cat sat on the mat.", "A big red house?", "Who did go home yesterday",
         "the dog ran to the park today. " * 4, "Small blue tree", "where is the cat?"]


# -- the reference: the project's own prediction path on the same strings ---------------------
def predicted(checkpoint_dir, texts, labels=None) -> np.ndarray:
    """What `mobilebert_jax.predict` gives for each raw string at the export's length: the
    scores in `labels` order (a classifier) or the embedding (an encoder)."""
    records = Predictor.load(str(checkpoint_dir), max_seq_length=SEQ_LEN).predict(
        [{"text": t} for t in texts])
    if labels is None:
        return np.asarray([r["embedding"] for r in records])
    return np.asarray([[r["scores"][n] for n in labels] for r in records])


# -- checkpoints --------------------------------------------------------------------------
def encoder_checkpoint(directory, tokenizer_path, vocab_size):
    """A pretraining checkpoint (MLM/NSP heads included) of the tiny model, initialised at a
    larger scale than training would so that the pooled outputs of different texts differ."""
    import jax
    import jax.numpy as jnp
    from flax.core import meta

    from mobilebert_jax.models.heads import MobileBertForPreTraining

    config = tiny_model_config(vocab_size).replace(initializer_range=0.3)
    params = meta.unbox(MobileBertForPreTraining(config).init(
        jax.random.PRNGKey(1), jnp.ones((1, 8), jnp.int32))["params"])
    checkpoint.save_pretrained(str(directory), config, params, tokenizer_path=tokenizer_path)
    return directory


def words_vocab(directory) -> tuple[str, int]:
    """A WordPiece vocab.txt of the test words (and its size)."""
    entries = SPECIALS + list(WORDS) + ["?", "."]
    (directory / "vocab.txt").write_text("\n".join(entries) + "\n")
    return str(directory / "vocab.txt"), len(entries)


# -- fine-tuned classifiers ---------------------------------------------------------------
def sentences(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 7)))) for _ in range(n)]


def finetune(workdir, data_dir, problem, rows_of, capsys):
    """A few steps of configs/finetune_text.py on CSV files written here."""
    for split, seed, n in (("train", 0, 32), ("dev", 1, 8)):
        lines = ["text,label"] + [f'"{t}","{rows_of(t)}"' for t in sentences(n, seed)]
        (data_dir / f"{split}.csv").write_text("\n".join(lines) + "\n")
    rc, err = run_main([f"--config={CONFIGS / 'finetune_text.py'}:{problem}",
                        f"--workdir={workdir}", f"--config.init_checkpoint={data_dir / 'ckpt'}",
                        f"--config.train_file={data_dir / 'train.csv'}",
                        f"--config.dev_file={data_dir / 'dev.csv'}", "--config.batch_size=8",
                        "--config.eval_batch_size=8", "--config.num_epochs=1",
                        f"--config.max_seq_length={SEQ_LEN}", "--config.learning_rate=1e-3"],
                       capsys)
    assert rc == 0, err
    return workdir


def single_label(text):
    words = text.split()
    return ("animal" if any(w in ANIMALS for w in words)
            else "color" if any(w in COLORS for w in words) else "other")


def multi_label(text):
    return ",".join(name for name, group in (("animal", ANIMALS), ("color", COLORS))
                    if any(w in text.split() for w in group))


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """{"single": workdir, "multi": workdir}: `encoder_checkpoint` fine-tuned for one epoch
    (four steps); its scores differ from text to text."""
    capsys = _NoCapture()
    root = tmp_path_factory.mktemp("mp_runs")
    encoder_checkpoint(root / "ckpt", *words_vocab(root))
    return {"single": finetune(root / "single", root, "", single_label, capsys),
            "multi": finetune(root / "multi", root, "multi_label", multi_label, capsys)}


class _NoCapture:
    """`run_main`'s capsys in a module fixture (pytest's capsys is function-scoped)."""

    def readouterr(self):
        return type("Captured", (), {"out": "", "err": ""})()


def export(checkpoint_dir, out, *flags):
    rc = export_cli(["export", f"--checkpoint={checkpoint_dir}", "--format=mediapipe",
                     f"--seq_len={SEQ_LEN}", f"--out={out}", *flags])
    assert rc == 0
    return str(out)


def classify(model_path, texts) -> list[dict[str, float]]:
    with text_classifier.TextClassifier.create_from_model_path(model_path) as classifier:
        results = [classifier.classify(t) for t in texts]
    return [{c.category_name: c.score for c in r.classifications[0].categories} for r in results]


def test_single_label_classifier_scores_match_predict(classifiers, tmp_path, capsys):
    workdir = classifiers["single"]
    card = checkpoint.load_task_card(str(workdir))
    assert card["labels"] == ["animal", "color", "other"] and card["best_step"] is not None
    model = export(workdir, tmp_path / "single.tflite")
    assert (f"MediaPipe TextClassifier, step {card['best_step']}, classification"
            in capsys.readouterr().out)
    got = classify(model, TEXTS)
    want = predicted(workdir, TEXTS, card["labels"])
    # scores that differ from text to text (so the tokenization counts) and from label to label
    assert np.ptp(want, axis=0).max() > 0.1 and want.max(-1).min() < 0.99
    # the same file through predict: MediaPipe's scores
    from_file = Predictor.load(model).predict([{"text": t} for t in TEXTS])
    for scores, record in zip(got, from_file):
        assert record["label"] == max(scores, key=scores.get)
        np.testing.assert_allclose([record["scores"][n] for n in card["labels"]],
                                   [scores[n] for n in card["labels"]], atol=1e-5, rtol=0)
    for scores, row in zip(got, want):
        assert set(scores) == set(card["labels"])
        assert max(scores, key=scores.get) == card["labels"][int(row.argmax())]
        np.testing.assert_allclose([scores[n] for n in card["labels"]], row, atol=1e-4, rtol=0)


def test_single_label_int8_keeps_the_top_label(classifiers, tmp_path):
    workdir = classifiers["single"]
    labels = checkpoint.load_task_card(str(workdir))["labels"]
    model = export(workdir, tmp_path / "single_int8.tflite", "--quantize=int8",
                   "--num_calibration=16")
    want = predicted(workdir, TEXTS, labels).argmax(-1)
    got = classify(model, TEXTS)
    assert len(set(want)) > 1  # the texts do not all get the same label
    assert [max(s, key=s.get) for s in got] == [labels[i] for i in want]


def test_multi_label_classifier_scores_match_predict(classifiers, tmp_path):
    workdir = classifiers["multi"]
    labels = checkpoint.load_task_card(str(workdir))["labels"]
    assert labels == ["animal", "color"]
    got = classify(export(workdir, tmp_path / "multi.tflite"), TEXTS)
    want = predicted(workdir, TEXTS, labels)
    assert np.ptp(want, axis=0).max() > 0.1
    for scores, row in zip(got, want):
        np.testing.assert_allclose([scores[n] for n in labels], row, atol=1e-4, rtol=0)


# -- encoders -------------------------------------------------------------------------------
def embed(model_path, texts) -> np.ndarray:
    with text_embedder.TextEmbedder.create_from_model_path(model_path) as embedder:
        return np.stack([np.asarray(embedder.embed(t).embeddings[0].embedding, np.float64)
                         for t in texts])


def test_encoder_embeddings_match_predict(tmp_path):
    directory = encoder_checkpoint(tmp_path / "encoder", *words_vocab(tmp_path))
    model = export(directory, tmp_path / "encoder.tflite")
    got = embed(model, TEXTS)
    want = predicted(directory, TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 32)
    assert np.abs(want[0] - want[1]).max() > 0.1  # the texts give different embeddings
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    from_file = [r["embedding"] for r in Predictor.load(model).predict(
        [{"text": t} for t in TEXTS])]
    np.testing.assert_allclose(from_file, got, atol=1e-5, rtol=0)


def test_sentencepiece_checkpoint_feeds_the_model(tmp_path):
    """MediaPipe tokenizes with the SentencePiece model packed in the metadata."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences(400, 3)) + "\n")
    tokenizer = train_sentencepiece([str(corpus)], str(tmp_path / "spm"), 40,
                                    extra_options={"hard_vocab_limit": False})
    assert len(tokenizer.encode("the cat sat")) >= 3
    directory = encoder_checkpoint(tmp_path / "spm_ckpt", str(tmp_path / "spm.model"),
                                   tokenizer.vocab_size)
    got = embed(export(directory, tmp_path / "spm.tflite"), TEXTS)
    # MediaPipe lower-cases the text for a SentencePiece model too; the project's tokenizer
    # takes a SentencePiece model's text as it is
    want = predicted(directory, [t.lower() for t in TEXTS])
    assert np.abs(want[0] - want[1]).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# -- refusals ---------------------------------------------------------------------------------
CARD = {"name": "t", "kind": "classification", "labels": ["a", "b"], "text_columns": ["text"],
        "max_seq_length": SEQ_LEN, "lower_case": True, "best_step": 1}


@pytest.mark.parametrize("case, card, expected", [
    ("cased text", dict(CARD, lower_case=False), "fine-tuned on cased text"),
    ("sentence pair", dict(CARD, text_columns=["premise", "hypothesis"]),
     "classifies sentence pairs (premise + hypothesis)"),
    ("question answering", dict(CARD, kind="question_answering", labels=None),
     "is a question answering model"),
    ("token classification", dict(CARD, kind="token_classification"),
     "is a token classification (tagging) model"),
    ("no labels in the card", dict(CARD, labels=None), "its task card names no labels"),
])
def test_refused_task_cards(case, card, expected, tiny_checkpoint, tmp_path, capsys):
    directory = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, directory)
    (directory / checkpoint.TASK_CARD).write_text(json.dumps(card))
    assert_refused(directory, tmp_path, capsys, expected)


def test_refuses_a_cased_vocabulary(tiny_checkpoint, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + ["The"] + WORDS[1:] + ["?", "."]) + "\n")
    config, params = checkpoint.load_pretrained(str(tiny_checkpoint))
    checkpoint.save_pretrained(str(tmp_path / "cased"), config, params,
                               tokenizer_path=str(vocab))
    assert_refused(tmp_path / "cased", tmp_path, capsys,
                   "is cased (it has upper-case entries such as 'The')")


def test_refuses_a_classifier_without_labels(tmp_path, capsys):
    import jax
    import jax.numpy as jnp
    from flax.core import meta

    config = tiny_model_config(len(SPECIALS) + len(WORDS) + 2)
    params = meta.unbox(MobileBertForSequenceClassification(config, 2).init(
        jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"])
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS + ["?", "."]) + "\n")
    checkpoint.save_pretrained(str(tmp_path / "clf"), config, params, tokenizer_path=str(vocab))
    assert_refused(tmp_path / "clf", tmp_path, capsys,
                   "has a classification head but no task card (task.json) naming its labels")


def assert_refused(directory, tmp_path, capsys, expected):
    out = tmp_path / "refused.tflite"
    rc = export_cli(["export", f"--checkpoint={directory}", "--format=mediapipe",
                     f"--out={out}"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    assert not out.exists()
