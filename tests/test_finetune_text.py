"""Fine-tuning on your own files (configs/finetune_text.py): single-label pairs, multi-label,
regression and tagging, each trained through main on files the test writes; the reported
metrics are checked against scikit-learn / scipy / seqeval on the predictions the run wrote."""
import json

import numpy as np
import pytest
from scipy import stats
from seqeval import metrics as seqeval_metrics
from sklearn import metrics as skm

from mobilebert_jax import checkpoint
from tests.helpers import CONFIGS, WORDS, run_main

ANIMALS, COLORS, PLACES = ("cat", "dog"), ("red", "blue"), ("park", "home", "house")


def text_args(ckpt, workdir, problem="", *extra) -> list[str]:
    config = f"{CONFIGS / 'finetune_text.py'}" + (f":{problem}" if problem else "")
    return [f"--config={config}", f"--workdir={workdir}", f"--config.init_checkpoint={ckpt}",
            "--config.batch_size=8", "--config.eval_batch_size=8", "--config.num_epochs=2",
            "--config.max_seq_length=16", "--config.learning_rate=1e-3", "--config.log_every=1",
            *extra]


def sentences(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 7)))) for _ in range(n)]


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def best_metrics(workdir):
    results = json.loads((workdir / "eval_results.json").read_text())
    assert results["finished"]
    return results["best"]["metrics"]


def test_multi_label_csv_as_files_come(tiny_checkpoint, tmp_path, capsys):
    """Quoted label lists, empty extra columns and a stray non-UTF-8 byte (reported, not fatal);
    micro/macro F1 as scikit-learn computes them on the predictions written for the same rows."""
    def table(texts):
        rows = ["id,text,labels,,"]
        for i, t in enumerate(texts):
            names = [n for n, group in (("animal", ANIMALS), ("color", COLORS),
                                        ("place", PLACES)) if any(w in t.split() for w in group)]
            rows.append(f'{i},"{t}, ok","{",".join(names)}",,')
        return rows

    train, dev = table(sentences(40, 0)), table(sentences(12, 1))
    (tmp_path / "train.csv").write_bytes("\n".join(train).encode() + b"\n"
                                         + b'99,"caf\xe9 the cat",animal,,\n')
    (tmp_path / "dev.csv").write_text("\n".join(dev) + "\n")
    workdir = tmp_path / "run"
    rc, err = run_main(text_args(tiny_checkpoint, workdir, "multi_label",
                                 f"--config.train_file={tmp_path / 'train.csv'}",
                                 f"--config.dev_file={tmp_path / 'dev.csv'}",
                                 f"--config.test_file={tmp_path / 'dev.csv'}",
                                 "--config.label_column=labels"), capsys, stdout=True)
    assert rc == 0, err
    assert "train.csv: not UTF-8 (1 byte outside ASCII, first on line 42): decoded as" in err
    card = checkpoint.load_task_card(str(workdir))
    assert card["kind"] == "multi_label" and card["labels"] == ["animal", "color", "place"]
    predicted = read_jsonl(workdir / "test_predictions.jsonl")
    assert len(predicted) == 12
    gold = np.zeros((12, 3), int)
    pred = np.zeros((12, 3), int)
    for i, (row, record) in enumerate(zip(dev[1:], predicted)):
        for name in row.split('"')[3].split(","):
            if name:
                gold[i, card["labels"].index(name)] = 1
        for name in record["labels"]:
            pred[i, card["labels"].index(name)] = 1
        assert record["labels"] == [n for n, s in record["scores"].items() if s >= 0.5]
    metrics = best_metrics(workdir)
    assert metrics["micro_f1"] == pytest.approx(skm.f1_score(gold, pred, average="micro",
                                                             zero_division=0))
    assert metrics["macro_f1"] == pytest.approx(skm.f1_score(gold, pred, average="macro",
                                                             zero_division=0))


def test_regression_jsonl_with_held_out_dev(tiny_checkpoint, tmp_path, capsys):
    """No dev file: a seeded tenth of the rows is held out; Pearson/Spearman as scipy
    computes them on the predictions."""
    texts = sentences(60, 2)
    rows = [{"text": t, "score": float(sum(w in ANIMALS for w in t.split()))} for t in texts]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    workdir = tmp_path / "run"
    rc, err = run_main(text_args(tiny_checkpoint, workdir, "regression",
                                 f"--config.train_file={tmp_path / 'train.jsonl'}",
                                 "--config.label_column=score"), capsys, stdout=True)
    assert rc == 0, err
    assert "54 train / 6 dev rows" in err
    results = json.loads((workdir / "eval_results.json").read_text())
    assert set(results["metrics"]) == {"pearson", "spearman"}
    # the held-out rows scored again, through the test-file path, from the same best params
    order = np.random.default_rng(0).permutation(60)
    held = sorted(order[:6])
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(rows[i]) + "\n" for i in held))
    rc, err = run_main(text_args(tiny_checkpoint, tmp_path / "again", "regression",
                                 f"--config.train_file={tmp_path / 'train.jsonl'}",
                                 f"--config.test_file={tmp_path / 'held.jsonl'}",
                                 "--config.label_column=score"), capsys)
    assert rc == 0, err
    preds = [r["score"] for r in read_jsonl(tmp_path / "again" / "test_predictions.jsonl")]
    gold = [rows[i]["score"] for i in held]
    metrics = best_metrics(tmp_path / "again")
    assert metrics["pearson"] == pytest.approx(stats.pearsonr(preds, gold)[0], abs=1e-5)
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(preds, gold)[0], abs=1e-5)


def test_sentence_pairs_tsv(tiny_checkpoint, tmp_path, capsys):
    """A pair task with string labels: accuracy, macro-F1 and MCC as scikit-learn computes
    them; labels in sorted order in the task card."""
    def table(n, seed):
        a, b = sentences(n, seed), sentences(n, seed + 100)
        rows = ["premise\thypothesis\tlabel"]
        for i in range(n):
            label = ("same", "other", "none")[i % 3]
            rows.append(f"{a[i]}\t{a[i] if label == 'same' else b[i]}\t{label}")
        return rows

    dev = table(12, 4)
    (tmp_path / "train.tsv").write_text("\n".join(table(36, 3)) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(dev) + "\n")
    workdir = tmp_path / "run"
    rc, err = run_main(text_args(tiny_checkpoint, workdir, "",
                                 f"--config.train_file={tmp_path / 'train.tsv'}",
                                 f"--config.dev_file={tmp_path / 'dev.tsv'}",
                                 f"--config.test_file={tmp_path / 'dev.tsv'}",
                                 "--config.text_column=premise",
                                 "--config.text_pair_column=hypothesis"), capsys)
    assert rc == 0, err
    card = checkpoint.load_task_card(str(workdir))
    assert card["labels"] == ["none", "other", "same"]
    assert card["text_columns"] == ["premise", "hypothesis"]
    predicted = [r["label"] for r in read_jsonl(workdir / "test_predictions.jsonl")]
    gold = [row.split("\t")[2] for row in dev[1:]]
    metrics = best_metrics(workdir)
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(gold, predicted))
    assert metrics["macro_f1"] == pytest.approx(skm.f1_score(gold, predicted, average="macro",
                                                             zero_division=0))
    assert metrics["mcc"] == pytest.approx(skm.matthews_corrcoef(gold, predicted))


def conll(n, seed):
    """Sentences whose animals are B-ANI and colours B-COL I-COL (a colour followed by
    'house')."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 8))))
        tags = []
        for j, w in enumerate(words):
            if w in ANIMALS:
                tags.append("B-ANI")
            elif w in COLORS:
                tags.append("B-COL")
            elif w == "house" and j and words[j - 1] in COLORS:
                tags.append("I-COL")
            else:
                tags.append("O")
        out.append("\n".join(f"{w} {t}" for w, t in zip(words, tags)))
    return "-DOCSTART- O\n\n" + "\n\n".join(out) + "\n"


def test_token_classification_conll(tiny_checkpoint, tmp_path, capsys):
    """Tags on the first word piece; entity F1 as seqeval scores the predictions written back
    in CoNLL format."""
    (tmp_path / "train.conll").write_text(conll(40, 5))
    (tmp_path / "dev.conll").write_text(conll(10, 6))
    workdir = tmp_path / "run"
    rc, err = run_main(text_args(tiny_checkpoint, workdir, "token_classification",
                                 f"--config.train_file={tmp_path / 'train.conll'}",
                                 f"--config.dev_file={tmp_path / 'dev.conll'}"), capsys)
    assert rc == 0, err
    card = checkpoint.load_task_card(str(workdir))
    assert card["kind"] == "token_classification"
    assert card["labels"] == ["O", "B-ANI", "B-COL", "I-COL"]
    written = (workdir / "dev_predictions.conll").read_text().strip().split("\n\n")
    assert len(written) == 10
    gold = [[line.split()[1] for line in s.splitlines()] for s in written]
    pred = [[line.split()[2] for line in s.splitlines()] for s in written]
    expected_gold = [[line.split()[1] for line in s.splitlines()]
                     for s in conll(10, 6).split("\n\n")[1:]]
    assert gold == expected_gold
    metrics = best_metrics(workdir)
    assert metrics["f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred))
    assert metrics["precision"] == pytest.approx(seqeval_metrics.precision_score(gold, pred))


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("case", ["missing_column", "empty_text", "unseen_dev_label",
                                  "not_a_number", "short_row", "bad_jsonl", "unknown_tag"])
def test_bad_files_get_one_line(case, tiny_checkpoint, tmp_path, capsys):
    """File, row (line) and column named in one line; nothing written to the workdir."""
    train, dev, problem, extra = "text,label\nthe cat,a\na dog,b\n", "", "", []
    if case == "missing_column":
        train, expected = "sentence,label\nthe cat,a\n", "train.csv: no column 'text'"
    elif case == "empty_text":
        train += '" ",a\n'
        expected = "train.csv:4: column 'text' is empty"
    elif case == "unseen_dev_label":
        dev = "text,label\nthe cat,a\nthe dog,c\n"
        expected = "dev.csv:3: column 'label' holds label 'c', which the training file never has"
    elif case == "not_a_number":
        train, problem = "text,label\nthe cat,1.5\na dog,high\n", "regression"
        expected = "train.csv:3: column 'label' holds 'high', not a number"
    elif case == "short_row":
        train += "the mat\n"
        expected = "train.csv:4: column 'label' is missing in this row"
    elif case == "bad_jsonl":
        (tmp_path / "train.jsonl").write_text('{"text": "the cat", "label": "a"}\n[1, 2]\n')
        extra = [f"--config.train_file={tmp_path / 'train.jsonl'}"]
        expected = "train.jsonl:2: not a JSON object (got list)"
    else:
        (tmp_path / "train.conll").write_text("the O\ncat B-ANI\n\na O\ndog B-ANI\n")
        (tmp_path / "dev.conll").write_text("the O\n\nred B-COL\n")
        problem = "token_classification"
        extra = [f"--config.train_file={tmp_path / 'train.conll'}",
                 f"--config.dev_file={tmp_path / 'dev.conll'}"]
        expected = "dev.conll:3: tag 'B-COL' (in this sentence) is not among"
    (tmp_path / "train.csv").write_text(train)
    if dev:
        (tmp_path / "dev.csv").write_text(dev)
        extra.append(f"--config.dev_file={tmp_path / 'dev.csv'}")
    workdir = tmp_path / "run"
    rc, err = run_main(text_args(tiny_checkpoint, workdir, problem,
                                 f"--config.train_file={tmp_path / 'train.csv'}", *extra),
                       capsys)
    assert rc == 1
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert _files(workdir) == []
