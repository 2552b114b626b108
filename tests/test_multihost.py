"""Several processes (2 × 4 CPU devices, gloo collectives) through the real entry point: a
preemption signal to one process stops all at the same step; a checkpoint resumes on another
process count with the next global batches; distillation across a PKT stage boundary and GLUE
fine-tuning give the results of one process; fine-tuning killed mid-epoch resumes exactly."""
import json
import signal
import time

import numpy as np
import pytest

from mobilebert_jax import checkpoint
from mobilebert_jax.train import pretrain
from tests.helpers import (
    SPL,
    TINY_STUDENT,
    glue_overrides,
    in_process_config,
    losses,
    run_main_processes,
    save_tiny_teacher,
    small_data,
    start_main,
    teacher_overrides,
)


@pytest.fixture(scope="module")
def data_dir(small_pretraining_data):
    return small_pretraining_data


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sigterm_to_one_process_stops_every_process_at_one_step(data_dir, tmp_path):
    total = 40
    settings = dict(total_steps=total, checkpoint_every=1000,
                    optimizer=dict(total_steps=total))
    straight = tmp_path / "straight"
    run_main_processes("teacher.py:smoke", straight, teacher_overrides(data_dir, **settings), 2)
    workdir = tmp_path / "preempted"
    procs = start_main("teacher.py:smoke", workdir, teacher_overrides(data_dir, **settings),
                       num_processes=2, devices=4)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text()) == 0):
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # one worker of the "pod" gets the maintenance event
    signalled = time.time()
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert time.time() - signalled < 180
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(outs)[-6000:]
    assert "preemption: saving step" in outs[0]
    saved = checkpoint.latest_step(str(workdir))
    assert saved is not None and 1 <= saved < total
    assert f"preemption: saving step {saved} " in outs[0]
    assert max(losses(workdir)) == saved
    # the same two processes resume: every step's loss is the uninterrupted run's, bitwise
    run_main_processes("teacher.py:smoke", workdir, teacher_overrides(data_dir, **settings), 2)
    a, b = losses(straight), losses(workdir)
    assert sorted(a) == sorted(b) == list(range(1, total + 1))
    assert all(a[s] == b[s] for s in a), [(s, a[s], b[s]) for s in a if a[s] != b[s]]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_resume_on_another_process_count_continues_the_global_batches(data_dir, tmp_path):
    settings = dict(total_steps=6, checkpoint_every=3, optimizer=dict(total_steps=6))
    straight = str(tmp_path / "straight")  # 1 process x 8 devices, uninterrupted
    pretrain.train_and_evaluate(in_process_config(data_dir, **settings), straight)
    first3 = dict(settings, total_steps=3)
    # 2 processes -> 1 process
    two_one = tmp_path / "two_then_one"
    run_main_processes("teacher.py:smoke", two_one, teacher_overrides(data_dir, **first3), 2)
    assert checkpoint.latest_step(str(two_one)) == 3
    pretrain.train_and_evaluate(in_process_config(data_dir, **settings), str(two_one))
    # 1 process -> 2 processes
    one_two = tmp_path / "one_then_two"
    pretrain.train_and_evaluate(in_process_config(data_dir, **first3), str(one_two))
    run_main_processes("teacher.py:smoke", one_two, teacher_overrides(data_dir, **settings), 2)
    base = losses(straight)
    assert sorted(base) == [1, 2, 3, 4, 5, 6] and len(set(base.values())) == 6
    for run in (two_one, one_two):
        got = losses(run)
        assert sorted(got) == sorted(base)
        for step in base:  # the same global batches in the same order, on 8 devices either way
            assert abs(got[step] - base[step]) <= 1e-5, (run, step, got[step], base[step])


@pytest.mark.multiprocess
@pytest.mark.slow
def test_distillation_across_a_stage_boundary_in_two_processes(data_dir, tmp_path):
    teacher_dir = str(tmp_path / "teacher")
    save_tiny_teacher(teacher_dir)
    overrides = dict(teacher_checkpoint=teacher_dir, model=TINY_STUDENT,
                     data=small_data(data_dir), batch_size=8, steps_per_layer=SPL,
                     total_steps=SPL + 2, log_every=1, eval_every=1000, checkpoint_every=1000,
                     optimizer=dict(warmup_steps=1, total_steps=3))
    runs = {}
    for n in (1, 2):
        workdir = tmp_path / f"p{n}"
        run_main_processes("distill.py:smoke,pkt", workdir, overrides, n)
        runs[n] = losses(workdir)
    assert sorted(runs[1]) == list(range(1, SPL + 3))  # crosses the layer-0 -> layer-1 boundary
    for step in runs[1]:
        assert abs(runs[1][step] - runs[2][step]) <= 1e-5, (step, runs[1][step], runs[2][step])


@pytest.mark.multiprocess
@pytest.mark.slow
def test_glue_fine_tuning_in_two_processes_matches_one(tiny_checkpoint, glue_dir, tmp_path):
    results = {}
    for n in (1, 2):
        workdir = tmp_path / f"p{n}"
        run_main_processes("finetune_glue.py:mrpc", workdir,
                           glue_overrides(tiny_checkpoint, glue_dir), n)
        results[n] = (json.loads((workdir / "eval_results.json").read_text()),
                      (workdir / "submission" / "MRPC.tsv").read_text(), losses(workdir))
    (r1, sub1, l1), (r2, sub2, l2) = results[1], results[2]
    assert [h["step"] for h in r1["history"]] == [h["step"] for h in r2["history"]] == [3, 6]
    for h1, h2 in zip(r1["history"], r2["history"]):
        for k in h1["metrics"]:
            assert h1["metrics"][k] == pytest.approx(h2["metrics"][k], abs=1e-6)
    assert sub1 == sub2
    assert all(abs(l1[s] - l2[s]) <= 1e-5 for s in l1)


@pytest.mark.slow
def test_fine_tuning_killed_mid_epoch_resumes_to_the_same_result(tiny_checkpoint, glue_dir,
                                                                 tmp_path):
    overrides = glue_overrides(tiny_checkpoint, glue_dir)
    straight = tmp_path / "straight"
    run_main_processes("finetune_glue.py:mrpc", straight, overrides, 1)
    workdir = tmp_path / "killed"
    proc = start_main("finetune_glue.py:mrpc", workdir, overrides)[0]
    state_dir = workdir / "train_state"
    deadline = time.time() + 300
    while time.time() < deadline and not (state_dir / "4").is_dir():  # step 4: mid epoch 2
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "submission").exists()  # it did not get to the end
    run_main_processes("finetune_glue.py:mrpc", workdir, overrides, 1)
    a = json.loads((straight / "eval_results.json").read_text())
    b = json.loads((workdir / "eval_results.json").read_text())
    assert b["finished"] and [h["step"] for h in b["history"]] == [3, 6]
    assert [h["metrics"] for h in a["history"]] == [h["metrics"] for h in b["history"]]
    assert (straight / "submission" / "MRPC.tsv").read_text() == \
        (workdir / "submission" / "MRPC.tsv").read_text()
    la, lb = losses(straight), losses(workdir)
    assert all(la[s] == lb[s] for s in la if s in lb) and max(lb) == 6
    assert np.isfinite(list(lb.values())).all()


def test_the_process_count_comes_from_jax_cluster_detection(monkeypatch):
    from mobilebert_jax import main

    for var in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID", "TPU_WORKER_HOSTNAMES", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(var, raising=False)
    assert main.cluster_process_count() == 1  # a plain machine: never initialize
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[001-004]")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    assert main.cluster_process_count() == 4  # a SLURM job step with four tasks
