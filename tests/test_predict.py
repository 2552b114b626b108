"""`python -m mobilebert_jax.predict` on raw text: each kind of fine-tuned model predicts what the
trainer's own evaluation path predicted for the same rows (the trainer runs the sharded model
over a device mesh; predict runs it on one device in its own batches), from the checkpoint
alone; an encoder gives embeddings that do not depend on batching or padding; bad input gets
one line."""
import json

import numpy as np
import pytest

from mobilebert_jax import predict
from mobilebert_jax.data import model_inputs
from mobilebert_jax.data.finetune_input import encode_words
from tests.helpers import CONFIGS, run_main, run_module
from tests.test_finetune import squad_json
from tests.test_finetune_text import conll, read_jsonl, sentences, text_args


def run_predict(argv, capsys):
    rc = predict.main(["predict", *[str(a) for a in argv]])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_classifier_predicts_as_the_trainer_did(tiny_checkpoint, tmp_path, capsys,
                                                monkeypatch):
    """Plain lines, stdin and the CSV the model was evaluated on all give the labels and
    scores the trainer wrote for its test file."""
    texts = sentences(40, 7)
    labels = ["animal" if any(w in t.split() for w in ("cat", "dog")) else "other" for t in texts]
    table = "text,label\n" + "".join(f'"{t}",{lab}\n' for t, lab in zip(texts, labels))
    (tmp_path / "train.csv").write_text(table)
    test_texts = sentences(11, 8)
    (tmp_path / "test.csv").write_text(
        "id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(test_texts)))
    workdir = tmp_path / "run"
    rc, err = run_main(text_args(tiny_checkpoint, workdir, "",
                                 f"--config.train_file={tmp_path / 'train.csv'}",
                                 f"--config.test_file={tmp_path / 'test.csv'}"), capsys)
    assert rc == 0, err
    trainer = read_jsonl(workdir / "test_predictions.jsonl")

    (tmp_path / "lines.txt").write_text("\n".join(test_texts) + "\n\n")
    rc, out, err = run_predict([f"--checkpoint={workdir}", f"--input={tmp_path / 'lines.txt'}",
                                "--batch_size=4"], capsys)
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in lines] == test_texts
    assert [r["label"] for r in lines] == [r["label"] for r in trainer]
    for mine, theirs in zip(lines, trainer):
        assert set(mine["scores"]) == {"animal", "other"}
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
        assert mine["score"] == pytest.approx(max(mine["scores"].values()))
        assert sum(mine["scores"].values()) == pytest.approx(1.0, abs=1e-6)

    # the CSV itself (its id echoed), written to a file
    out_file = tmp_path / "predictions.jsonl"
    rc, _, err = run_predict([f"--checkpoint={workdir}", f"--input={tmp_path / 'test.csv'}",
                              f"--output={out_file}", "--batch_size=3"], capsys)
    assert rc == 0, err
    assert "wrote" in err and "11 predictions" in err
    from_csv = read_jsonl(out_file)
    assert [r["id"] for r in from_csv] == [str(i) for i in range(11)]
    assert [r["label"] for r in from_csv] == [r["label"] for r in trainer]

    # stdin, JSON Lines
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"text": test_texts[0]}) + "\n"))
    rc, out, err = run_predict([f"--checkpoint={workdir}", "--input=-"], capsys)
    assert rc == 0, err
    assert json.loads(out)["label"] == trainer[0]["label"]

    # in Python
    model = predict.Predictor.load(str(workdir))
    assert model.predict([{"text": test_texts[3]}])[0]["label"] == trainer[3]["label"]

    # exported to HF: transformers' sequence classifier with the label names scores the same
    hf = hf_model(workdir, tmp_path / "hf", "AutoModelForSequenceClassification")
    assert hf.config.id2label == {0: "animal", 1: "other"}
    assert hf.config.problem_type == "single_label_classification"
    features = model_inputs.encode_sentences(model.tokenizer, test_texts, None, 16)
    probs = hf_logits(hf, features).softmax(-1).numpy()
    np.testing.assert_allclose(probs, [[r["scores"][n] for n in ("animal", "other")]
                                       for r in lines], atol=1e-4)


def hf_model(workdir, out, auto_class):
    import transformers

    r = run_module("mobilebert_jax.convert", "--to=hf", f"--src={workdir}", f"--out={out}")
    assert r.returncode == 0, r.stderr
    model = getattr(transformers, auto_class).from_pretrained(str(out))
    return model.eval()


def hf_logits(model, features):
    import torch
    with torch.no_grad():
        return model(input_ids=torch.tensor(features["input_ids"]).long(),
                     attention_mask=torch.tensor(features["input_mask"]).long(),
                     token_type_ids=torch.tensor(features["segment_ids"]).long()).logits


def test_tagger_predicts_the_tags_the_trainer_wrote(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "train.conll").write_text(conll(40, 5))
    (tmp_path / "test.conll").write_text(conll(6, 9))
    workdir = tmp_path / "run"
    rc, err = run_main(text_args(tiny_checkpoint, workdir, "token_classification",
                                 f"--config.train_file={tmp_path / 'train.conll'}",
                                 f"--config.test_file={tmp_path / 'test.conll'}"), capsys)
    assert rc == 0, err
    written = (workdir / "test_predictions.conll").read_text().strip().split("\n\n")
    words = [[ln.split()[0] for ln in s.splitlines()] for s in written]
    tags = [[ln.split()[-1] for ln in s.splitlines()] for s in written]
    # one sentence as words on a line, the rest as JSON token lists
    lines = [" ".join(words[0])] + [json.dumps({"tokens": w}) for w in words[1:]]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    rc, out, err = run_predict([f"--checkpoint={workdir}", f"--input={tmp_path / 'in.txt'}"],
                               capsys)
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["tokens"] for r in records] == words
    assert [r["tags"] for r in records] == tags

    # exported to HF: transformers' token classifier gives the same tag on each first piece
    hf = hf_model(workdir, tmp_path / "hf", "AutoModelForTokenClassification")
    assert [hf.config.id2label[i] for i in range(4)] == ["O", "B-ANI", "B-COL", "I-COL"]
    model = predict.Predictor.load(str(workdir))
    features, _ = encode_words(model.tokenizer, words, model.max_seq_length)
    best = hf_logits(hf, features).argmax(-1).numpy()
    for i, sentence_tags in enumerate(tags):
        first = np.flatnonzero(features["word_index"][i] >= 0)
        assert [hf.config.id2label[int(t)] for t in best[i, first]] == sentence_tags


def test_question_answering_predicts_the_official_predictions(tiny_checkpoint, tmp_path,
                                                               capsys):
    path = tmp_path / "squad.json"
    data = squad_json(3)
    path.write_text(json.dumps(data))
    workdir = tmp_path / "squad_run"
    rc, err = run_main([f"--config={CONFIGS / 'finetune_squad.py'}:1.1", f"--workdir={workdir}",
                        f"--config.init_checkpoint={tiny_checkpoint}",
                        f"--config.train_file={path}", "--config.train_articles=2",
                        "--config.eval_articles=1", "--config.batch_size=8",
                        "--config.eval_batch_size=8", "--config.num_epochs=1",
                        "--config.max_seq_length=32", "--config.doc_stride=8",
                        "--config.max_query_length=8", "--config.learning_rate=1e-3"], capsys)
    assert rc == 0, err
    official = json.loads((workdir / "predictions" / "predictions.json").read_text())
    paragraph = data["data"][2]["paragraphs"][0]
    rows = [{"id": q["id"], "question": q["question"], "context": paragraph["context"]}
            for q in paragraph["qas"]]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out, err = run_predict([f"--checkpoint={workdir}",
                                f"--input={tmp_path / 'questions.jsonl'}"], capsys)
    assert rc == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    assert {a["id"]: a["answer"] for a in answers} == official
    assert all(0.0 < a["score"] <= 1.0 for a in answers)
    # plain lines cannot carry a question and its context
    (tmp_path / "plain.txt").write_text("where did the dog go?\n")
    rc, out, err = run_predict([f"--checkpoint={workdir}", f"--input={tmp_path / 'plain.txt'}"],
                               capsys)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "reads question and context: give JSON Lines" in err


def test_encoder_embeddings_do_not_depend_on_batching(tiny_checkpoint, tmp_path, capsys):
    """A checkpoint without a task card embeds text (the pooled [CLS] vector): the same text
    alone, in a batch of others, or padded to a longer length gets the same vector."""
    texts = sentences(5, 3)
    one = predict.Predictor.load(str(tiny_checkpoint), batch_size=1)
    many = predict.Predictor.load(str(tiny_checkpoint), batch_size=4, max_seq_length=24)
    assert one.kind == "encoder" and one.max_seq_length == 64  # the tiny model's maximum
    alone = [one.predict([{"text": t}])[0]["embedding"] for t in texts]
    together = [r["embedding"] for r in many.predict([{"text": t} for t in texts])]
    assert np.asarray(alone).shape == (5, 32)
    np.testing.assert_allclose(alone, together, atol=1e-5)
    assert not np.allclose(alone[0], alone[1])  # different texts, different vectors
    rc, _, err = run_predict([f"--checkpoint={tiny_checkpoint}", f"--input={tmp_path}/x.txt",
                              "--max_seq_length=4096"], capsys)
    assert rc == 1 and "max_seq_length=4096: the model takes 3 to" in err


@pytest.mark.parametrize("case", ["no_checkpoint", "missing_column", "empty_text", "not_json",
                                  "empty_input"])
def test_bad_input_is_one_line(case, tiny_checkpoint, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    expected = {"no_checkpoint": "checkpoint directory not found",
                "missing_column": "in.jsonl:2: column 'text' is missing",
                "empty_text": "in.jsonl:1: column 'text' is empty",
                "not_json": "in.jsonl:2: not a JSON object",
                "empty_input": "holds no text to predict on"}[case]
    source.write_text({"missing_column": '{"text": "the cat"}\n{"sentence": "a dog"}\n',
                       "empty_text": '{"text": "  "}\n',
                       "not_json": '{"text": "the cat"}\n{"text": \n',
                       }.get(case, ""))
    ckpt = tmp_path / "nowhere" if case == "no_checkpoint" else tiny_checkpoint
    rc, out, err = run_predict([f"--checkpoint={ckpt}", f"--input={source}"], capsys)
    assert rc == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
