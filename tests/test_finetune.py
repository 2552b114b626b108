"""GLUE and SQuAD fine-tuning: end to end through main.py on a tiny checkpoint and tiny data
written here (eval results, best checkpoint, submission files), the sweep table, the optimizer
options, and one-line errors for bad input."""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax import checkpoint
from mobilebert_jax.data import finetune_input
from mobilebert_jax.data import glue as glue_data
from mobilebert_jax.train import finetune, optim, sweep
from tests.helpers import CONFIGS, SPECIALS, WORDS, config_module, glue_args, run_main

SQUAD_CONFIG = CONFIGS / "finetune_squad.py"
finetune_glue = config_module("finetune_glue")


def squad_json(num_articles=3):
    articles = []
    for a in range(num_articles):
        context = f"the cat sat on the mat {a}. the dog ran to the park yesterday."
        qas = [{"id": f"q{a}_0", "question": "where did the dog go?",
                "answers": [{"text": "the park", "answer_start": context.index("the park")}]},
               {"id": f"q{a}_1", "question": "who sat on the mat?",
                "answers": [{"text": "the cat", "answer_start": 0}]}]
        articles.append({"title": f"t{a}", "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": articles}


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("kind", ["teacher_run", "converted_checkpoint"])
def test_finetune_refuses_another_jobs_workdir(tiny_checkpoint, glue_dir, tmp_path, capsys,
                                               kind):
    """Pointed at a teacher's workdir, or at a converted checkpoint directory, fine-tuning
    stops in one line before writing anything there."""
    workdir = tmp_path / "taken"
    shutil.copytree(tiny_checkpoint, workdir)
    if kind == "teacher_run":
        (workdir / "config.json").write_text(json.dumps({"trainer": "pretrain"}))
    before = _files(workdir)
    rc, err = run_main(glue_args(tiny_checkpoint, glue_dir, workdir), capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "use a new --workdir" in lines[0], err
    assert ("pretrain run" in lines[0]) == (kind == "teacher_run")
    assert _files(workdir) == before


def test_glue_end_to_end_through_main(tiny_checkpoint, glue_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    rc, err = run_main(glue_args(tiny_checkpoint, glue_dir, workdir), capsys)
    assert rc == 0, err
    results = json.loads((workdir / "eval_results.json").read_text())
    assert results["finished"] and results["task"] == "mrpc" and results["epoch"] == 2
    assert set(results["metrics"]) == {"accuracy", "f1"}
    assert [h["step"] for h in results["history"]] == [3, 6]  # 24 examples / batch 8
    top = max(h["metrics"]["accuracy"] for h in results["history"])
    best = [h for h in results["history"] if h["metrics"]["accuracy"] == top][-1]
    assert results["best"]["metrics"] == best["metrics"]
    # only the best checkpoint is kept, and the workdir loads as a checkpoint directory
    assert checkpoint.latest_step(str(workdir)) == results["best"]["step"]
    card = checkpoint.load_task_card(str(workdir))  # what predict and export read
    assert card == {"name": "mrpc", "kind": "classification", "labels": ["0", "1"],
                    "text_columns": ["#1 String", "#2 String"], "max_seq_length": 16,
                    "lower_case": True, "best_step": results["best"]["step"], "qat": False}
    config, params = checkpoint.load_pretrained(str(workdir))
    assert set(params) == {"bert", "classifier"} and config.hidden_size == 32
    assert checkpoint.tokenizer_file(str(workdir)) is not None
    lines = (workdir / "submission" / "MRPC.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction"
    assert [ln.split("\t")[0] for ln in lines[1:]] == [str(100 + i) for i in range(8)]
    assert {ln.split("\t")[1] for ln in lines[1:]} <= {"0", "1"}
    # the same workdir continues the run: a finished one trains no further step
    trained = (workdir / "metrics.jsonl").read_text()
    rc, err = run_main(glue_args(tiny_checkpoint, glue_dir, workdir), capsys)
    assert rc == 0, err
    assert (workdir / "metrics.jsonl").read_text() == trained
    again = json.loads((workdir / "eval_results.json").read_text())
    assert again["history"] == results["history"] and again["finished"]


def test_squad_end_to_end_writes_official_predictions(tiny_checkpoint, tmp_path, capsys):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad_json(3)))
    workdir = tmp_path / "squad_run"
    rc, err = run_main([f"--config={SQUAD_CONFIG}:1.1", f"--workdir={workdir}",
                        f"--config.init_checkpoint={tiny_checkpoint}",
                        f"--config.train_file={path}", "--config.train_articles=2",
                        "--config.eval_articles=1", "--config.batch_size=8",
                        "--config.eval_batch_size=8", "--config.num_epochs=1",
                        "--config.max_seq_length=32", "--config.doc_stride=8",
                        "--config.max_query_length=8", "--config.learning_rate=1e-3"], capsys)
    assert rc == 0, err
    results = json.loads((workdir / "eval_results.json").read_text())
    assert set(results["metrics"]) == {"exact_match", "f1"} and results["finished"]
    assert 0.0 <= results["metrics"]["f1"] <= 100.0
    predictions = json.loads((workdir / "predictions" / "predictions.json").read_text())
    assert set(predictions) == {"q2_0", "q2_1"}  # the third article is the eval set
    context = squad_json(3)["data"][2]["paragraphs"][0]["context"]
    assert all(isinstance(t, str) and t in context for t in predictions.values())
    assert (workdir / "predictions" / "nbest_predictions.json").is_file()


def test_sweep_table_aggregates_seeds(tmp_path, monkeypatch):
    calls = []

    def fake_run(cfg, workdir):  # accuracy depends on lr and seed; finished runs are reused
        calls.append((cfg.learning_rate, cfg.num_epochs, cfg.seed))
        acc = 0.5 + 1000 * cfg.learning_rate * (1 + cfg.seed) / 10
        results = {"task": "mrpc", "best_metric": "accuracy", "finished": True,
                   "best": {"metrics": {"accuracy": acc, "f1": acc / 2}}}
        os.makedirs(workdir)
        with open(os.path.join(workdir, finetune.EVAL_RESULTS), "w") as f:
            json.dump(results, f)
        return results

    monkeypatch.setattr(finetune, "train_and_evaluate", fake_run)
    config = finetune_glue.get_config("mrpc")
    rows = sweep.run_sweep(config, str(tmp_path / "sweep"), [1e-4, 2e-4], [2], [0, 1])
    assert len(calls) == 4 and [r["learning_rate"] for r in rows] == [1e-4, 2e-4]
    acc = rows[1]["metrics"]["accuracy"]
    assert acc["values"] == pytest.approx([52.0, 54.0])  # points
    assert acc["mean"] == pytest.approx(53.0) and acc["std"] == pytest.approx(1.0)
    assert rows[1]["best"] and not rows[0]["best"]
    table = (tmp_path / "sweep" / "sweep_results.md").read_text()
    assert "| 0.0002 (best) | 2 | 2 | 53.00 ± 1.00 | 26.50 ± 0.50 |" in table
    saved = json.loads((tmp_path / "sweep" / "sweep_results.json").read_text())
    assert len(saved["runs"]) == 4 and saved["best_metric"] == "accuracy"
    sweep.run_sweep(config, str(tmp_path / "sweep"), [1e-4, 2e-4], [2], [0, 1])
    assert len(calls) == 4  # nothing re-run


def test_no_bias_correction_option_is_wired():
    config = finetune_glue.get_config("rte")
    config.warmup_proportion = 0.0
    assert config.bias_correction is False  # the official AdamW is the default
    params = {"w": jnp.ones((4,))}
    grads = {"w": jnp.full((4,), 0.5)}
    first = {}
    for bias_correction in (False, True):
        config.bias_correction = bias_correction
        opt = finetune.optimizer_config(config, total_steps=10)
        assert opt["bias_correction"] is bias_correction and opt["name"] == "adamw"
        assert opt["clip_norm"] == 1.0 and opt["warmup_steps"] == 0
        tx, _ = optim.make_optimizer(opt)
        updates, _ = tx.update(grads, tx.init(params), params)
        first[bias_correction] = float(updates["w"][0])
    lr, wd = config.learning_rate, config.weight_decay
    # first step: m/sqrt(v) = 0.1/sqrt(0.001) without correction, 1 with it (plus decay)
    assert first[True] == pytest.approx(-lr * (1.0 + wd), rel=1e-4)
    assert first[False] == pytest.approx(-lr * (0.1 / np.sqrt(0.001) + wd), rel=1e-4)


def test_warmup_is_ten_percent_and_decays_to_zero():
    opt = finetune.optimizer_config(finetune_glue.get_config("rte"), total_steps=100)
    assert opt["warmup_steps"] == 10
    schedule = optim.make_schedule(opt)
    assert float(schedule(0)) == 0.0 and float(schedule(100)) == 0.0
    assert float(schedule(10)) == pytest.approx(5e-5 * 0.9)


def test_epoch_order_and_padded_batches():
    a, b = finetune_input.epoch_order(10, 0, 3), finetune_input.epoch_order(10, 1, 3)
    assert sorted(a) == list(range(10)) and not np.array_equal(a, b)
    assert np.array_equal(a, finetune_input.epoch_order(10, 0, 3))
    feats = {"x": np.arange(10)}
    out = list(finetune_input.batches(feats, np.arange(10), 4, ("x",)))
    assert len(out) == 3 and out[-1]["weights"].tolist() == [1, 1, 0, 0]
    assert out[-1]["x"][:2].tolist() == [8, 9]


def _bad_glue(glue_dir, tmp_path, train_text):
    bad = tmp_path / "MRPC"
    bad.mkdir()
    for split in ("dev", "test"):
        (bad / f"{split}.tsv").write_text((glue_dir / f"{split}.tsv").read_text())
    (bad / "train.tsv").write_text(train_text)
    return bad


@pytest.mark.parametrize("case", ["unknown_task", "bad_label", "short_row", "squad_keys",
                                  "vocab_mismatch", "no_tokenizer", "squad_version"])
def test_bad_input_is_one_line_error(case, tiny_checkpoint, glue_dir, tmp_path, capsys):
    header = (glue_dir / "train.tsv").read_text().splitlines()[0]
    workdir = tmp_path / "run"
    if case == "unknown_task":
        args = glue_args(tiny_checkpoint, glue_dir, workdir, "--config.task=mrcp")
        expected = "unknown GLUE task 'mrcp'"
    elif case == "bad_label":
        data = _bad_glue(glue_dir, tmp_path, f"{header}\n1\t1\t1\tthe cat\tthe dog\n"
                                             "7\t2\t2\ta cat\ta dog\n")
        args = glue_args(tiny_checkpoint, data, workdir)
        expected = "train.tsv:3: label '7' is not one of task mrpc's labels"
    elif case == "short_row":
        data = _bad_glue(glue_dir, tmp_path, f"{header}\n1\t1\t1\tthe cat\tthe dog\n"
                                             "0\t2\ta cat\n")
        args = glue_args(tiny_checkpoint, data, workdir)
        expected = "train.tsv:3: expected 5 tab-separated fields, got 3"
    elif case in ("squad_keys", "squad_version"):
        path = tmp_path / "squad.json"
        broken = squad_json(2)
        del broken["data"][1]["paragraphs"][0]["qas"][0]["question"]
        path.write_text(json.dumps(broken))
        version = "3.0" if case == "squad_version" else "1.1"
        args = [f"--config={SQUAD_CONFIG}", f"--workdir={workdir}",
                f"--config.init_checkpoint={tiny_checkpoint}", f"--config.version={version}",
                f"--config.train_file={path}", "--config.train_articles=1"]
        expected = ("unknown SQuAD version '3.0'" if case == "squad_version"
                    else "question q1_0 has no 'question' key")
    elif case == "vocab_mismatch":
        args = glue_args(tiny_checkpoint, glue_dir, workdir,
                         "--config.tokenizer=bert-base-uncased")
        expected = f"vocab_size={len(SPECIALS) + len(WORDS) + 2} but tokenizer"
    else:
        bare = tmp_path / "bare"
        config, params = checkpoint.load_pretrained(str(tiny_checkpoint))
        checkpoint.save_pretrained(str(bare), config, params)
        args = glue_args(bare, glue_dir, workdir)
        expected = "stores no vocab.txt or spm.model; set --config.tokenizer"
    rc, err = run_main(args, capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1], err


def test_real_mrpc_features_with_the_packaged_vocab(shared_data, tiny_checkpoint):
    config = finetune_glue.get_config("mrpc")
    config.update(data_dir=str(shared_data / "glue"), train_subset=50, eval_subset=20,
                  tokenizer="bert-base-uncased", init_checkpoint=str(tiny_checkpoint))
    tokenizer = finetune_input.resolve_tokenizer(config, 30522)
    data = finetune_input.load_glue_data(config, tokenizer)
    assert data.train.features["input_ids"].shape == (50, 128)
    assert data.dev[0].features["labels"].tolist()[:20] == [
        ex.label for ex in glue_data.load_glue("mrpc", shared_data / "glue", "dev")[:20]]
    assert [s.name for s in data.test] == ["test"] and len(data.test[0].examples) == 1725
    assert (data.train.features["input_ids"][:, 0] == tokenizer.cls_id).all()
