"""Malformed files given to every entry point: one `error:` line naming the file, exit code 1,
no traceback, and nothing written or changed; a failed start leaves its workdir as it was."""
import pathlib

import numpy as np
import pytest

from tests.helpers import (
    TINY_STUDENT,
    flatten_overrides,
    in_process_config,
    run_module,
    save_tiny_teacher,
    small_data,
    teacher_overrides,
)

SMOKE = "--config=configs/teacher.py:smoke"


def run_cli(*args):
    return run_module("mobilebert_jax.main", *args)


# -- every entry point, malformed files: one line naming the file, nothing written or changed --
def snapshot(root) -> dict:
    """Every path under `root` with its bytes (None for a directory), but JAX's compilation
    cache of a workdir: not run state (a program compiled before a failure may be stored)."""
    from mobilebert_jax.compile_cache import CACHE_SUBDIR

    root = pathlib.Path(root)
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.relative_to(root).parts[0] != CACHE_SUBDIR}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, bert_vocab_path, minilm_dir):
    """Malformed inputs for every entry point, made here (none shipped)."""
    import functools
    import json
    import shutil

    import torch

    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    (d / "binary.dat").write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    (d / "one_document.txt").write_text("The first sentence is here. Another one follows it.\n"
                                        "A third sentence ends the only document.\n")
    docs = [f"Document {i} has a sentence. It also has a second sentence number {i}."
            for i in range(40)]
    (d / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    # Two of 81 lines are Latin-1, the rest ASCII: a Latin-1 file.
    (d / "some_bad_lines.txt").write_bytes(
        b"\n\n".join(doc.encode() for doc in docs[:39]) + b"\n\nLatin-1 caf\xe9 line.\n\n"
        b"Another \xff line.\n")
    vocab = pathlib.Path(bert_vocab_path).read_text(encoding="utf-8").split("\n")
    vocab[2000] = vocab[1999]
    (d / "duplicate_vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    (d / "latin1_vocab.txt").write_bytes(b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncaf\xe9\n")
    (d / "no_vocab_here").mkdir()
    (d / "a_file").write_text("x")
    (d / "hf_no_sizes").mkdir()
    (d / "hf_no_sizes" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    hf = d / "hf_bad_json"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "bert",\n')
    pickled = d / "hf_pickled"
    pickled.mkdir()
    shutil.copy(pathlib.Path(minilm_dir) / "config.json", pickled / "config.json")
    torch.save({"w": torch.zeros(2), "hook": functools.partial(print)},
               pickled / "pytorch_model.bin")
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": "Paris is in France.", "qas": [
            {"id": "q1", "question": "Where is Paris?",
             "answers": [{"text": "France", "answer_start": 12}]}]}]}]}
    (d / "dev-v1.1.json").write_text(json.dumps(squad))
    (d / "no_paragraphs.json").write_text(json.dumps({"version": "1.1", "data": [{"t": 1}]}))
    (d / "predictions.json").write_text(json.dumps({"q1": "France", "q9": "x", "q7": "y"}))
    (d / "train-v1.1.json").write_text('{"version": "1.1", "data": [\n')
    misplaced = d / "squad_misplaced"  # offsets counted in bytes of UTF-8, not characters
    misplaced.mkdir()
    shutil.copy(d / "dev-v1.1.json", misplaced / "dev-v1.1.json")
    context = "Zürich and Genève are in Switzerland."
    (misplaced / "train-v1.1.json").write_text(json.dumps({"version": "1.1", "data": [
        {"title": "t", "paragraphs": [{"context": context, "qas": [
            {"id": f"m{i}", "question": f"Where is {city}?", "answers": [
                {"text": "Switzerland", "answer_start": context.encode().index(b"Switzerland")}]}
            for i, city in enumerate(["Zürich", "Genève"])]}]}]}))
    (d / "dev.tsv").write_bytes(b"sentence\tlabel\ngood film\t1\nbad caf\xe9\t0\n")
    (d / "good_dev.tsv").write_bytes(b"sentence\tlabel\ngood film\t1\nbad movie\t0\n")
    (d / "predictions.tsv").write_bytes(b"index\tprediction\n0\t1\n1\t\xff\n")
    sst2 = d / "SST-2"
    sst2.mkdir()
    shutil.copy(d / "dev.tsv", sst2 / "train.tsv")
    shutil.copy(d / "good_dev.tsv", sst2 / "dev.tsv")
    sweep_run = d / "sweep" / "lr3e-05_ep3_seed0"
    sweep_run.mkdir(parents=True)
    (sweep_run / "eval_results.json").write_text('{"finished": tru')
    return d


PREPARE = "mobilebert_jax.data.prepare"
CONVERT = "mobilebert_jax.convert"
EXPORT = "mobilebert_jax.export"
METRICS = "mobilebert_jax.metrics"
SWEEP = "mobilebert_jax.train.sweep"
MAIN = "mobilebert_jax.main"
GLUE = "--config=configs/finetune_glue.py:sst2"

# (entry point, arguments, what the last line must say); {d}: the bad files, {out}: an output
# path that must not come to exist, {ckpt}: a good tiny checkpoint.
FILE_CASES = {
    "prepare-binary-corpus": (PREPARE, ["--corpus=text:{d}/binary.dat", "--out={out}"],
                              "{d}/binary.dat: not a text file (NUL byte at offset"),
    "prepare-one-document": (PREPARE, ["--corpus=text:{d}/one_document.txt", "--out={out}"],
                             "has 1 document(s), so its train split has 1"),
    "prepare-duplicate-vocab": (PREPARE, ["--corpus=text:{d}/corpus.txt", "--out={out}",
                                          "--tokenizer={d}/duplicate_vocab.txt"],
                                "{d}/duplicate_vocab.txt: token {dup!r} on lines 2000 and 2001"),
    "prepare-latin1-vocab": (PREPARE, ["--corpus=text:{d}/corpus.txt", "--out={out}",
                                       "--tokenizer={d}/latin1_vocab.txt"],
                             "{d}/latin1_vocab.txt: not UTF-8 text"),
    "prepare-tokenizer-dir": (PREPARE, ["--corpus=text:{d}/corpus.txt", "--out={out}",
                                        "--tokenizer={d}/no_vocab_here"],
                              "no vocab.txt or *.model in tokenizer directory {d}/no_vocab_here"),
    "prepare-missing-corpus": (PREPARE, ["--corpus=text:{d}/nothing.txt", "--out={out}"],
                               "corpus file {d}/nothing.txt does not exist"),
    "prepare-out-under-a-file": (PREPARE, ["--corpus=text:{d}/corpus.txt",
                                           "--out={d}/a_file/out"],
                                 "{d}/a_file/out: Not a directory"),
    "prepare-existing-output": (PREPARE, ["--corpus=text:{d}/corpus.txt", "--out={d}/SST-2"],
                                "{d}/SST-2 is not empty (pass --overwrite"),
    "convert-bad-hf-config": (CONVERT, ["--from=hf", "--src={d}/hf_bad_json", "--out={out}"],
                              "{d}/hf_bad_json/config.json: not valid JSON (Expecting property"),
    "convert-incomplete-hf-config": (CONVERT, ["--from=hf", "--src={d}/hf_no_sizes",
                                               "--out={out}"],
                                     "{d}/hf_no_sizes/config.json: lacks required key(s) "
                                     "vocab_size, hidden_size"),
    "convert-pickled-weights": (CONVERT, ["--from=hf", "--src={d}/hf_pickled", "--out={out}"],
                                "{d}/hf_pickled/pytorch_model.bin: refused by torch.load("
                                "weights_only=True): it pickles functools.partial"),
    "convert-out-under-a-file": (CONVERT, ["--from=hf", "--src={d}/hf_pickled",
                                           "--out={d}/a_file/out"],
                                 "{d}/a_file/out: Not a directory"),
    "convert-missing-source": (CONVERT, ["--from=hf", "--src={d}/nothing", "--out={out}"],
                               "{d}/nothing"),
    "convert-not-a-checkpoint": (CONVERT, ["--to=hf", "--src={d}/SST-2", "--out={out}"],
                                 "{d}/SST-2 is not a project checkpoint directory"),
    "export-missing-checkpoint": (EXPORT, ["--checkpoint={d}/nothing", "--out={out}"],
                                  "checkpoint directory not found: {d}/nothing"),
    "export-out-under-a-file": (EXPORT, ["--checkpoint={ckpt}", "--out={d}/a_file/m.tflite"],
                                "{d}/a_file/m.tflite: Not a directory"),
    "metrics-squad-layout": (METRICS, ["squad", "--data={d}/no_paragraphs.json",
                                       "--predictions={d}/predictions.json"],
                             "{d}/no_paragraphs.json: data[0] has no 'paragraphs' list"),
    "metrics-glue-tsv-not-utf8": (METRICS, ["glue", "--task=sst2", "--data={d}/dev.tsv",
                                            "--predictions={d}/predictions.tsv"],
                                  "{d}/dev.tsv:3: not UTF-8 text"),
    "metrics-predictions-not-utf8": (METRICS, ["glue", "--task=sst2", "--data={d}/good_dev.tsv",
                                               "--predictions={d}/predictions.tsv"],
                                     "{d}/predictions.tsv:3: not UTF-8 text"),
    "metrics-missing-predictions": (METRICS, ["glue", "--task=sst2", "--data={d}/good_dev.tsv",
                                              "--predictions={d}/nothing.tsv"],
                                    "predictions file not found: {d}/nothing.tsv"),
    "sweep-mistyped-field": (SWEEP, [GLUE, "--workdir={out}", "--config.num_epoch=3"],
                             "no field 'num_epoch'; did you mean 'num_epochs'?"),
    "sweep-unknown-field": (SWEEP, [GLUE, "--workdir={out}", "--config.zzz=3"],
                            "the config has no field 'zzz'"),
    "sweep-bad-list": (SWEEP, [GLUE, "--workdir={out}", "--learning_rates=abc"],
                       "--learning_rates must be a comma-separated list of numbers"),
    "sweep-out-of-range": (SWEEP, [GLUE, "--workdir={out}", "--config.num_epochs=0"],
                           "config.num_epochs=0: must be an integer >= 1"),
    "sweep-corrupt-results": (SWEEP, [GLUE, "--workdir={d}/sweep", "--learning_rates=3e-5",
                                      "--num_epochs=3", "--seeds=0", "--config.data_dir={d}",
                                      "--config.init_checkpoint={ckpt}"],
                              "{d}/sweep/lr3e-05_ep3_seed0/eval_results.json: not valid JSON"),
    "main-binary-corpus": (MAIN, [SMOKE, "--workdir={out}", "--config.data.corpus=text:"
                                  "{d}/binary.dat"],
                           "{d}/binary.dat: not a text file (NUL byte at offset"),
    "main-glue-tsv-not-utf8": (MAIN, [GLUE, "--workdir={out}", "--config.data_dir={d}",
                                      "--config.init_checkpoint={ckpt}"],
                               "{d}/SST-2/train.tsv:3: not UTF-8 text"),
    "main-squad-bad-json": (MAIN, ["--config=configs/finetune_squad.py:1.1", "--workdir={out}",
                                   "--config.data_dir={d}", "--config.init_checkpoint={ckpt}"],
                            "{d}/train-v1.1.json: not valid JSON"),
    "main-squad-no-answer-in-place": (
        MAIN, ["--config=configs/finetune_squad.py:1.1", "--workdir={out}",
               "--config.data_dir={d}/squad_misplaced", "--config.init_checkpoint={ckpt}"],
        "{d}/squad_misplaced/train-v1.1.json: none of its 2 questions has its answer text at its "
        "answer_start in the context (first: m0)"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_malformed_files_are_named_and_nothing_is_written(case, bad_files, tiny_checkpoint,
                                                          bert_vocab_path, tmp_path):
    module, args, expected = FILE_CASES[case]
    dup = pathlib.Path(bert_vocab_path).read_text(encoding="utf-8").split("\n")[1999]
    fields = dict(d=bad_files, out=tmp_path / "out", ckpt=tiny_checkpoint, dup=dup)
    before = snapshot(bad_files), snapshot(tiny_checkpoint)
    r = run_module(module, *[a.format(**fields) for a in args])
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected.format(**fields) in last, last
    assert not (tmp_path / "out").exists() or not [p for p in (tmp_path / "out").rglob("*")
                                                    if p.is_file()]
    assert (snapshot(bad_files), snapshot(tiny_checkpoint)) == before  # nothing damaged


def test_a_corpus_file_that_is_not_utf8_is_decoded_and_said(bad_files, tmp_path):
    r = run_module(PREPARE, f"--corpus=text:{bad_files}/some_bad_lines.txt",
                   f"--out={tmp_path / 'data'}", "--seq_len=32")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (f"note: {bad_files}/some_bad_lines.txt: not UTF-8 (2 bytes outside ASCII, first on "
            "line 79): decoded as cp1252 (detected)") in r.stderr
    assert "note: 1 of 1 corpus files are not plain UTF-8" in r.stderr
    from mobilebert_jax.data.dataset_layout import read_meta

    meta = read_meta(str(tmp_path / "data"))
    assert sum(meta["num_documents"].values()) == 41  # its two Latin-1 lines are documents
    assert list(meta["decoded_files"]) == [f"{bad_files}/some_bad_lines.txt"]


def test_predictions_for_unknown_questions_are_counted(bad_files):
    r = run_module(METRICS, "squad", f"--data={bad_files}/dev-v1.1.json",
                   f"--predictions={bad_files}/predictions.json")
    assert r.returncode == 0, r.stderr
    assert ("warning: ignored 2 of 3 predictions whose question id is not in the data "
            "(first: q7)") in r.stderr
    assert '"exact_match": 100.0' in r.stdout


@pytest.mark.slow
def test_a_failed_start_leaves_the_workdir_as_it_was(small_pretraining_data, tmp_path):
    """A workdir whose model_config.json is gone, restarted with another model: refused by the
    checkpoint's own shapes, and neither model_config.json nor config.json is (re)written."""
    from mobilebert_jax import checkpoint
    from mobilebert_jax.train import pretrain

    workdir = tmp_path / "w"
    schedule = dict(optimizer=dict(warmup_steps=1, total_steps=2))
    pretrain.train_and_evaluate(in_process_config(small_pretraining_data, total_steps=1,
                                                  checkpoint_every=1, **schedule), str(workdir))
    (workdir / checkpoint.MODEL_CONFIG).unlink()
    before = snapshot(workdir)
    overrides = teacher_overrides(small_pretraining_data, total_steps=2,
                                  model=dict(intermediate_size=48), **schedule)
    r = run_cli(SMOKE, f"--workdir={workdir}", *flatten_overrides(overrides))
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"error: checkpoint step 1 in {workdir}/checkpoints does not fit this "
                    "model/optimizer config (params: bert/encoder/layer_0/intermediate/dense/bias "
                    "has shape (64,), the config needs (48,))"), last
    assert snapshot(workdir) == before


def test_distillation_refuses_a_teacher_its_config_does_not_describe(small_pretraining_data,
                                                                    tmp_path):
    import json

    from mobilebert_jax import checkpoint

    teacher_dir = tmp_path / "teacher"
    save_tiny_teacher(teacher_dir, seed=0)
    claimed = json.loads((teacher_dir / checkpoint.MODEL_CONFIG).read_text())
    claimed["num_hidden_layers"] = 3  # one layer more than its params hold
    (teacher_dir / checkpoint.MODEL_CONFIG).write_text(json.dumps(claimed))
    before = snapshot(teacher_dir)
    overrides = dict(teacher_checkpoint=teacher_dir, model=dict(TINY_STUDENT, num_hidden_layers=3),
                     data=small_data(small_pretraining_data), batch_size=8)
    workdir = tmp_path / "w"
    r = run_cli("--config=configs/distill.py:smoke", f"--workdir={workdir}",
                *flatten_overrides(overrides))
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {teacher_dir} (step 0) does not fit the model config it is loaded "
        "with (it lacks bert/encoder/layer_2/attention/output/LayerNorm/beta)")
    assert snapshot(teacher_dir) == before
    assert not [p for p in workdir.rglob("*") if p.is_file()]
