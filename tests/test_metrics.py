"""GLUE and SQuAD metrics on hand-worked cases, and the scoring CLI run as a subprocess."""
import json
import pathlib
import subprocess
import sys

import pytest

from mobilebert_jax.data.glue import get_task
from mobilebert_jax.metrics.glue import glue_metrics
from mobilebert_jax.metrics.squad import (
    exact_score,
    f1_score_v1,
    f1_score_v2,
    normalize_answer,
    squad_scores,
    squad_v1_scores,
    squad_v2_scores,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --- SQuAD ---------------------------------------------------------------------------------

def _squad(version, questions):
    """A one-paragraph SQuAD JSON; `questions` maps id → list of gold answer texts."""
    qas = []
    for qid, golds in questions.items():
        qa = {"id": qid, "question": f"question {qid}?",
              "answers": [{"text": g, "answer_start": 0} for g in golds]}
        if version == "v2.0":
            qa["is_impossible"] = not golds
        qas.append(qa)
    return {"version": version,
            "data": [{"title": "t", "paragraphs": [{"context": "some context", "qas": qas}]}]}


def test_normalize_answer():
    assert normalize_answer("The  Quick, brown-fox!") == "quick brownfox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("  A. ") == ""


def test_exact_and_f1_per_answer():
    assert exact_score("the Eiffel Tower.", "Eiffel tower") == 1
    assert exact_score("Eiffel", "Eiffel Tower") == 0
    # "red dog jumped" vs "red fox": overlap 1, precision 1/3, recall 1/2 → F1 0.4.
    assert f1_score_v1("the red dog jumped", "a red fox") == pytest.approx(0.4)
    # Repeated tokens count with multiplicity: pred [x, x, y] vs gold [x, y, y] overlap in one
    # x and one y, so P = R = 2/3.
    assert f1_score_v1("x x y", "x y y") == pytest.approx(2 / 3)
    # The two scripts differ on empty answers only.
    assert f1_score_v1("", "") == 0.0
    assert f1_score_v2("", "") == 1.0
    assert f1_score_v2("the", "") == 1.0  # normalizes to nothing on both sides
    assert f1_score_v2("something", "") == 0.0


def test_squad_v1_hand_worked():
    data = _squad("1.1", {"q1": ["The Denver Broncos", "Broncos"], "q2": ["a red fox"],
                          "q3": ["anything"]})
    preds = {"q1": "denver broncos!", "q2": "the red dog jumped"}  # q3 unanswered → 0
    result = squad_scores(data, preds, warn_missing=False)
    assert set(result) == {"exact_match", "f1"}
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * 1.4 / 3)


def test_squad_v1_max_over_golds():
    data = _squad("1.1", {"q": ["blue whale", "whale"]})
    assert squad_v1_scores(data["data"], {"q": "whale"})["exact_match"] == 100.0


V2_QUESTIONS = {"A": ["Paris"], "B": ["blue whale"], "C": [], "D": []}
V2_PREDS = {"A": "Paris", "B": "whale", "C": "", "D": "something"}
V2_ODDS = {"A": 0.1, "B": 0.6, "D": 0.7, "C": 0.9}


def test_squad_v2_hand_worked_with_thresholds():
    data = _squad("v2.0", V2_QUESTIONS)
    result = squad_scores(data, V2_PREDS, V2_ODDS)
    # Per question exact/F1: A 1/1, B 0/(2/3), C 1/1 (both empty), D 0/0.
    assert result["exact"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 4)
    assert result["total"] == 4
    assert result["HasAns_exact"] == pytest.approx(50.0)
    assert result["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result["HasAns_total"] == 2
    assert result["NoAns_exact"] == pytest.approx(50.0)
    assert result["NoAns_f1"] == pytest.approx(50.0)
    assert result["NoAns_total"] == 2
    # Sweep from "all null" (2 of 4 right) in odds order A, B, D, C:
    # exact: 3, 3, 2, 2 → best 3/4 at 0.1; F1: 3, 3 2/3, 2 2/3, 2 2/3 → best at 0.6.
    assert result["best_exact"] == pytest.approx(75.0)
    assert result["best_exact_thresh"] == pytest.approx(0.1)
    assert result["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4)
    assert result["best_f1_thresh"] == pytest.approx(0.6)


def test_squad_v2_null_threshold_applied():
    data = _squad("v2.0", V2_QUESTIONS)
    # Odds above 0.5 turn B, D, C into "no answer": A 1, B 0, C 1, D 1.
    result = squad_v2_scores(data["data"], V2_PREDS, V2_ODDS, na_prob_thresh=0.5)
    assert result["exact"] == pytest.approx(75.0)
    assert result["f1"] == pytest.approx(75.0)


def test_squad_v2_without_odds_has_no_best_keys_and_skips_missing():
    data = _squad("v2.0", {"A": ["Paris"], "B": ["Rome"]})
    result = squad_scores(data, {"A": "Paris"}, warn_missing=False)
    assert result["exact"] == 100.0 and result["total"] == 1
    assert "best_exact" not in result and "NoAns_total" not in result


def test_squad_v1_data_scored_with_null_odds_uses_v2():
    data = _squad("1.1", {"A": ["Paris"]})
    result = squad_scores(data, {"A": "Paris"}, {"A": 0.0})
    assert result["exact"] == 100.0 and result["HasAns_total"] == 1


def test_squad_bad_input():
    with pytest.raises(ValueError, match="'data'"):
        squad_scores({"version": "1.1"}, {})
    bad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "c"}]}]}
    with pytest.raises(ValueError, match="'qas'"):
        squad_scores(bad, {})
    with pytest.raises(ValueError, match="not a string"):
        squad_scores(_squad("1.1", {"A": ["x"]}), {"A": 3})
    with pytest.raises(ValueError, match="null odds lack"):
        squad_scores(_squad("v2.0", V2_QUESTIONS), V2_PREDS, {"A": 0.1})


# --- GLUE ----------------------------------------------------------------------------------

# 2x2 table by hand: TP 3, FN 1, TN 3, FP 1.
LABELS = [1, 1, 1, 0, 0, 0, 1, 0]
PREDS = [1, 1, 0, 0, 0, 1, 1, 0]


def test_matthews_on_hand_worked_table():
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / 16.
    assert glue_metrics(get_task("cola"), PREDS, LABELS) == {
        "matthews_corrcoef": pytest.approx(0.5)}


def test_accuracy_and_f1():
    result = glue_metrics(get_task("mrpc"), PREDS, LABELS)
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["f1"] == pytest.approx(0.75)  # precision 3/4, recall 3/4
    assert glue_metrics(get_task("SST-2"), PREDS, LABELS) == {"accuracy": pytest.approx(0.75)}
    # Logits are reduced by argmax.
    logits = [[0.0, 1.0] if p else [1.0, 0.0] for p in PREDS]
    assert glue_metrics(get_task("rte"), logits, LABELS)["accuracy"] == pytest.approx(0.75)


def test_stsb_correlations():
    # Deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): r = 4 / 5.
    result = glue_metrics(get_task("stsb"), [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert result["pearson"] == pytest.approx(0.8)
    assert result["spearman"] == pytest.approx(0.8)
    monotone = glue_metrics(get_task("stsb"), [1.0, 2.0, 3.0, 10.0], [1.0, 2.0, 3.0, 4.0])
    assert monotone["spearman"] == pytest.approx(1.0)
    assert monotone["pearson"] < 0.99


def test_mnli_matched_and_mismatched():
    labels, preds = [0, 1, 2, 2], [0, 1, 2, 0]
    assert glue_metrics(get_task("mnli"), preds, labels, split="dev_matched") == {
        "accuracy_matched": pytest.approx(0.75)}
    assert glue_metrics(get_task("mnli"), preds, labels, split="dev_mismatched") == {
        "accuracy_mismatched": pytest.approx(0.75)}


def test_glue_metrics_bad_input():
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_metrics(get_task("squad"), PREDS, LABELS)
    with pytest.raises(ValueError, match="outside"):
        glue_metrics(get_task("sst2"), [0, 2], [0, 1])
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        glue_metrics(get_task("sst2"), [0, 1], [0, 1, 1])


# --- CLI -----------------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mobilebert_jax.metrics", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def _write(path, obj):
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(path)


def test_cli_squad_v1_and_v2(tmp_path):
    v1 = _write(tmp_path / "dev1.json", _squad("1.1", {"q1": ["Broncos"], "q2": ["a red fox"]}))
    preds = _write(tmp_path / "p1.json", {"q1": "the Broncos", "q2": "red dog"})
    run = _cli("squad", f"--data={v1}", f"--predictions={preds}")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    # q2: "red dog" vs "red fox": P = R = 1/2 → F1 1/2.
    assert result == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(75.0)}

    v2 = _write(tmp_path / "dev2.json", _squad("v2.0", V2_QUESTIONS))
    run = _cli("squad", "--data", v2, "--predictions", _write(tmp_path / "p2.json", V2_PREDS),
               "--null_odds", _write(tmp_path / "odds.json", V2_ODDS))
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["best_f1_thresh"] == pytest.approx(0.6)
    assert result["NoAns_total"] == 2


def test_cli_glue_submission_tsv_and_plain_lines(tmp_path):
    dev = tmp_path / "dev.tsv"
    rows = ["index\tsentence1\tsentence2\tlabel"] + [
        f"{i}\ta {i}\tb {i}\t{'entailment' if y == 0 else 'not_entailment'}"
        for i, y in enumerate([0, 1, 1, 0])]
    dev.write_text("\n".join(rows) + "\n")
    # Submission rows out of order are matched by index; 3 of 4 right.
    tsv = _write(tmp_path / "RTE.tsv", "index\tprediction\n3\tentailment\n0\tentailment\n"
                 "1\tnot_entailment\n2\tentailment\n")
    run = _cli("glue", "--task=rte", f"--data={dev}", f"--predictions={tsv}")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"accuracy": pytest.approx(0.75)}
    lines = _write(tmp_path / "preds.txt", "0\n1\n1\n0\n")  # label ids, all right
    run = _cli("glue", "--task=rte", f"--data={dev}", f"--predictions={lines}")
    assert json.loads(run.stdout) == {"accuracy": pytest.approx(1.0)}


def test_cli_bad_input(tmp_path):
    run = _cli("glue", "--task=nope", "--data=x.tsv", "--predictions=y")
    assert run.returncode == 1 and run.stderr.startswith("error: unknown GLUE task")
    assert "Traceback" not in run.stderr
    run = _cli("squad", f"--data={tmp_path / 'missing.json'}", "--predictions=p.json")
    assert run.returncode == 1 and "error:" in run.stderr and "not found" in run.stderr
    broken = _write(tmp_path / "broken.json", {"version": "1.1"})
    preds = _write(tmp_path / "p.json", {})
    run = _cli("squad", f"--data={broken}", f"--predictions={preds}")
    assert run.returncode == 1 and "'data'" in run.stderr
