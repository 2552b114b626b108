"""gs:// paths against a real Cloud Storage API: fake-gcs-server on 127.0.0.1 (see conftest's
`GcsEmulator`), reached by gcsfs, tensorstore and array_record exactly as a pod reaches GCS."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests.helpers import (
    REPO,
    TINY_STUDENT,
    glue_overrides,
    run_main_processes,
    save_tiny_teacher,
    small_data,
    start_main,
    teacher_overrides,
    tiny_teacher_config,
)

# Every test here runs against the emulator, most of them whole training jobs in subprocesses.
pytestmark = [pytest.mark.emulator, pytest.mark.slow]


def read_object(emulator, uri: str) -> bytes:
    """An object's bytes straight from the server (no client cache in between)."""
    name = uri.split(f"gs://{emulator.BUCKET}/", 1)[1]
    with urllib.request.urlopen(f"{emulator.url}/storage/v1/b/{emulator.BUCKET}/o/"
                                f"{urllib.parse.quote(name, safe='')}?alt=media") as r:
        return r.read()


def losses(emulator, workdir: str) -> dict:
    rows = [json.loads(line) for line in
            read_object(emulator, f"{workdir}/metrics.jsonl").decode().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def corpus(small_pretraining_data):
    """The small corpus text of the shared pretraining data, for the trainer to prepare."""
    return os.path.join(os.path.dirname(small_pretraining_data), "corpus.txt")


def settings(corpus, dataset_dir, total):
    return teacher_overrides(
        "", total_steps=total, checkpoint_every=2, optimizer=dict(total_steps=total),
        data=dict(dataset_dir=dataset_dir, corpus=f"text:{corpus}", eval_fraction=0.2))


def run_to_end(workdir, overrides, timeout=600):
    proc = start_main("teacher.py:smoke", workdir, overrides)[0]
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out[-4000:]
    return out


def test_teacher_on_gcs_killed_and_resumed_matches_an_uninterrupted_run(gcs_emulator, gcs_dir,
                                                                       corpus, monkeypatch):
    # Every program goes to the workdir's compilation cache (gs://), however fast it compiled.
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    total = 8
    data = f"{gcs_dir}/data"
    straight, killed = f"{gcs_dir}/straight", f"{gcs_dir}/killed"
    out = run_to_end(straight, settings(corpus, data, total))  # prepares the data into gs://
    assert f"preparing pretraining data from text:{corpus} into {data}" in out
    names = gcs_emulator.objects(f"{gcs_dir.split('/', 3)[3]}/")
    assert any(n.endswith("data/pretraining_meta.json") for n in names)
    assert any("straight/checkpoints/8/" in n for n in names)
    assert not [n for n in names if "/gs:" in n or n.startswith("gs:")]
    base = losses(gcs_emulator, straight)
    assert sorted(base) == list(range(1, total + 1))

    proc = start_main("teacher.py:smoke", killed, settings(corpus, data, total))[0]
    deadline = time.time() + 600
    while time.time() < deadline:  # until step 5 is logged (checkpoint 4 is then committed)
        try:
            if max(losses(gcs_emulator, killed), default=0) >= 5:
                break
        except urllib.error.HTTPError:
            pass
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    before = read_object(gcs_emulator, f"{killed}/metrics.jsonl").decode().splitlines()
    out = run_to_end(killed, settings(corpus, data, total))
    assert "resumed from step" in out and "preparing" not in out
    assert "train step: loaded from the compilation cache in" in out
    assert any("killed/compilation_cache/jit_train_step" in n
               for n in gcs_emulator.objects(f"{gcs_dir.split('/', 3)[3]}/"))
    after = read_object(gcs_emulator, f"{killed}/metrics.jsonl").decode().splitlines()
    assert after[:len(before)] == before  # no line of the killed run is lost
    got = losses(gcs_emulator, killed)
    assert sorted(got) == sorted(base)
    assert got == base  # bitwise: the same floats, step for step


def test_a_bucket_that_does_not_exist_is_one_line(gcs_emulator, corpus):
    workdir = "gs://no-such-bucket/run"
    proc = start_main("teacher.py:smoke", workdir,
                      settings(corpus, f"gs://{gcs_emulator.BUCKET}/unused", 2))[0]
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1] == (f"error: {workdir}: bucket gs://no-such-bucket does "
                                            "not exist")


def test_an_upload_cut_short_is_never_taken_for_a_dataset(gcs_emulator, gcs_dir, corpus,
                                                         tmp_path):
    """A prepared dataset copied without its metadata (an upload killed before the end): the
    trainer refuses it, and with a corpus given it prepares the dataset again."""
    from mobilebert_jax import files
    from mobilebert_jax.data import dataset_layout, prepare

    local = prepare.prepare_dataset(f"text:{corpus}", "bert-base-uncased", str(tmp_path / "d"),
                                    seq_len=64, max_predictions_per_seq=10, seed=0,
                                    eval_fraction=0.2, progress=False)
    data = f"{gcs_dir}/data"
    files.copy_tree(local, data)
    files.remove_tree(f"{data}/{dataset_layout.META_FILE}")
    overrides = settings(corpus, data, 2)
    overrides["data"]["corpus"] = ""
    workdir = f"{gcs_dir}/run"
    proc = start_main("teacher.py:smoke", workdir, overrides)[0]
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1] == f"error: data.dataset_dir={data} holds no prepared " \
                                           "dataset"


def test_the_prepare_command_writes_to_gcs(gcs_emulator, gcs_dir, corpus, tmp_path):
    """The Beam pipeline with 2 worker processes writing its shards straight to gs://: the
    same bytes as a local preparation, and no marker, per-shard counts or staged token ids left
    behind."""
    from mobilebert_jax.data import dataset_layout, prepare

    out = f"{gcs_dir}/prepared"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "mobilebert_jax.data.prepare",
                        f"--corpus=text:{corpus}", f"--out={out}", "--seq_len=64",
                        "--shard_mb=0.05", "--num_workers=2"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1].startswith(f"wrote {out}: ")
    meta = json.loads(read_object(gcs_emulator, f"{out}/pretraining_meta.json"))
    assert meta["settings"]["seq_len"] == 64 and meta["num_shards"]["train"] >= 2
    local = prepare.prepare_dataset(f"text:{corpus}", "bert-base-uncased", str(tmp_path / "d"),
                                    seq_len=64, shard_mb=0.05, progress=False)
    prefix = out.split(f"gs://{gcs_emulator.BUCKET}/", 1)[1]
    names = sorted(n[len(prefix) + 1:] for n in gcs_emulator.objects(prefix + "/"))
    shards = [n for n in names if ".array_record-" in n]
    assert len(shards) == meta["num_shards"]["train"] + meta["num_shards"]["validation"]
    leftovers = (dataset_layout.INCOMPLETE_FILE, dataset_layout.SHARD_STATS_DIR,
                 dataset_layout.DOCUMENTS_DIR)
    assert not [n for n in names if any(x in n for x in leftovers)]
    for name in shards:
        with open(os.path.join(local, name), "rb") as f:
            assert read_object(gcs_emulator, f"{out}/{name}") == f.read(), name


def test_a_corpus_on_gcs_prepares_like_the_local_files(gcs_emulator, gcs_dir, corpus,
                                                       tmp_path):
    """Text sources read from gs:// (a glob, cut into read tasks by byte ranges): the same
    shards as from the local files."""
    from mobilebert_jax import files
    from mobilebert_jax.data import dataset_layout, prepare

    text = open(corpus, encoding="utf-8").read().split("\n\n")
    half = len(text) // 2
    local_dir = tmp_path / "corpus"
    local_dir.mkdir()
    for i, part in enumerate((text[:half], text[half:])):
        (local_dir / f"part{i}.txt").write_text("\n\n".join(part))
        files.copy_file(str(local_dir / f"part{i}.txt"), f"{gcs_dir}/corpus/part{i}.txt")
    kwargs = dict(seq_len=64, shard_mb=0.05, read_chunk_mb=0.01, progress=False)
    remote = prepare.prepare_dataset(f"text:{gcs_dir}/corpus/part*.txt", "bert-base-uncased",
                                     str(tmp_path / "from_gcs"), **kwargs)
    local = prepare.prepare_dataset(f"text:{local_dir}/part*.txt", "bert-base-uncased",
                                    str(tmp_path / "from_local"), **kwargs)
    shards = sorted(n for n in os.listdir(dataset_layout.tfds_dir(local)) if ".array_record-" in n)
    assert len(shards) >= 3
    for name in shards:
        with open(os.path.join(dataset_layout.tfds_dir(local), name), "rb") as a, \
                open(os.path.join(dataset_layout.tfds_dir(remote), name), "rb") as b:
            assert a.read() == b.read(), name


def test_fine_tuning_from_gcs_matches_the_local_run(gcs_emulator, gcs_dir, tiny_checkpoint,
                                                    glue_dir, tmp_path):
    """Checkpoint, GLUE data, workdir and submission all on gs://: the same results and the
    same submission bytes as the local run."""
    from mobilebert_jax import files

    ckpt, data = f"{gcs_dir}/ckpt", f"{gcs_dir}/glue/MRPC"
    files.copy_tree(str(tiny_checkpoint), ckpt)
    files.copy_tree(str(glue_dir), data)
    local, remote = tmp_path / "local", f"{gcs_dir}/run"
    run_main_processes("finetune_glue.py:mrpc", local, glue_overrides(tiny_checkpoint, glue_dir))
    run_main_processes("finetune_glue.py:mrpc", remote, glue_overrides(ckpt, data))
    want = json.loads((local / "eval_results.json").read_text())
    got = json.loads(read_object(gcs_emulator, f"{remote}/eval_results.json"))
    assert [h["metrics"] for h in got["history"]] == [h["metrics"] for h in want["history"]]
    assert read_object(gcs_emulator, f"{remote}/submission/MRPC.tsv") == \
        (local / "submission" / "MRPC.tsv").read_bytes()
    assert got["submission_files"] == [f"{remote}/submission/MRPC.tsv"]
    assert read_object(gcs_emulator, f"{remote}/vocab.txt") == \
        (tiny_checkpoint / "vocab.txt").read_bytes()


def test_distillation_reads_its_teacher_from_gcs(gcs_emulator, gcs_dir, small_pretraining_data):
    from mobilebert_jax import checkpoint

    teacher = f"{gcs_dir}/teacher"
    save_tiny_teacher(teacher)
    assert checkpoint.load_config(teacher) == tiny_teacher_config()
    workdir = f"{gcs_dir}/student"
    out = run_main_processes("distill.py:smoke", workdir, dict(
        teacher_checkpoint=teacher, model=TINY_STUDENT, data=small_data(small_pretraining_data),
        batch_size=8, steps_per_layer=2, total_steps=3, log_every=1, eval_every=1000,
        checkpoint_every=1000, optimizer=dict(warmup_steps=1, total_steps=3)))[0]
    assert f"parameters from {teacher}" in out
    assert sorted(losses(gcs_emulator, workdir)) == [1, 2, 3]
    assert any(n.endswith("student/checkpoints/3/_CHECKPOINT_METADATA")
               for n in gcs_emulator.objects(gcs_dir.split("/", 3)[3]))


def test_conversion_and_export_write_to_gcs(gcs_emulator, gcs_dir, tiny_checkpoint, tmp_path):
    """`convert --to=hf` and `export` from a gs:// checkpoint to gs://: the same bytes as the
    same commands from the local checkpoint to local files."""
    from mobilebert_jax import files

    ckpt = f"{gcs_dir}/ckpt"
    files.copy_tree(str(tiny_checkpoint), ckpt)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for src, out in ((str(tiny_checkpoint), str(tmp_path)), (ckpt, gcs_dir)):
        for args in (["mobilebert_jax.convert", "--to=hf", f"--src={src}", f"--out={out}/hf"],
                     ["mobilebert_jax.export", f"--checkpoint={src}", "--format=tflite",
                      "--quantize=none", "--seq_len=16", f"--out={out}/model.tflite"]):
            r = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
    for name in ("hf/config.json", "hf/model.safetensors", "hf/vocab.txt", "model.tflite"):
        assert read_object(gcs_emulator, f"{gcs_dir}/{name}") == (tmp_path / name).read_bytes()
    assert (tmp_path / "model.tflite").read_bytes()[4:8] == b"TFL3"


def test_your_own_files_on_gcs_train_and_predict_like_local_ones(gcs_emulator, gcs_dir,
                                                                  tiny_checkpoint, tmp_path,
                                                                  capsys):
    """configs/finetune_text.py with its CSV files on gs://, and predict reading its input from
    gs://: the metrics and predictions of the same files read locally."""
    from mobilebert_jax import files, predict
    from tests.helpers import run_main
    from tests.test_finetune_text import sentences, text_args

    texts = sentences(40, 11)
    table = "text,label\n" + "".join(
        f'"{t}",{"animal" if "cat" in t.split() else "other"}\n' for t in texts)
    (tmp_path / "train.csv").write_text(table)
    (tmp_path / "new.txt").write_text("\n".join(sentences(5, 12)) + "\n")
    for name in ("train.csv", "new.txt"):
        files.copy_file(str(tmp_path / name), f"{gcs_dir}/{name}")
    runs = {}
    for where, root in (("local", str(tmp_path)), ("gcs", gcs_dir)):
        workdir = tmp_path / f"run_{where}"
        rc, err = run_main(text_args(tiny_checkpoint, workdir, "",
                                     f"--config.train_file={root}/train.csv",
                                     f"--config.test_file={root}/train.csv"), capsys)
        assert rc == 0, err
        rc = predict.main(["predict", f"--checkpoint={workdir}", f"--input={root}/new.txt"])
        assert rc == 0
        runs[where] = (json.loads((workdir / "eval_results.json").read_text())["history"],
                       (workdir / "test_predictions.jsonl").read_text(),
                       capsys.readouterr().out)
    assert runs["gcs"][0][-1]["metrics"] == runs["local"][0][-1]["metrics"]
    assert runs["gcs"][1:] == runs["local"][1:]
    assert len(runs["gcs"][2].splitlines()) == 5
