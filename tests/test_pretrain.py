"""Teacher trainer: exact resume, mesh equivalence, preemption, NaN guard, bad input and gradient
accumulation (several processes: test_multihost.py)."""
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mobilebert_jax import checkpoint
from mobilebert_jax.data import finetune_input, tokenizers
from mobilebert_jax.train import core, pretrain
from mobilebert_jax.train.loop import NonFiniteLoss
from tests.helpers import (
    CONFIGS,
    TINY_TEACHER,
    apply_overrides,
    config_module,
    flatten_overrides,
    losses,
    small_data,
    teacher_overrides,
)

teacher = config_module("teacher")


@pytest.fixture(scope="module")
def data_dir(small_pretraining_data):
    return small_pretraining_data


def tiny_config(data_dir, **overrides):
    c = teacher.get_config("smoke")
    c.model.update(TINY_TEACHER)
    c.data.update(small_data(data_dir))
    c.update(batch_size=8, total_steps=6, log_every=1, eval_every=1000, eval_steps=2,
             checkpoint_every=3, async_checkpointing=True)
    c.optimizer.update(warmup_steps=2)
    c.optimizer.total_steps = 6  # fixed, whatever total_steps
    return apply_overrides(c, overrides)


def test_resume_is_bitwise_identical(data_dir, tmp_path):
    pretrain.train_and_evaluate(tiny_config(data_dir), str(tmp_path / "straight"))
    resumed = str(tmp_path / "resumed")
    pretrain.train_and_evaluate(tiny_config(data_dir, total_steps=3), resumed)
    assert checkpoint.latest_step(resumed) == 3
    pretrain.train_and_evaluate(tiny_config(data_dir), resumed)
    a, b = losses(str(tmp_path / "straight")), losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert all(a[s] == b[s] for s in a), (a, b)  # bitwise
    assert len(set(a.values())) == 6
    # the finished run holds a loadable checkpoint with the model config
    config, params = checkpoint.load_pretrained(resumed)
    assert config.hidden_size == 32 and "cls" in params


@pytest.mark.slow
def test_meshes_give_the_same_losses(data_dir, tmp_path):
    runs = {}
    for shape in [(8, 1, 1), (2, 2, 2), (1, 4, 2)]:
        workdir = str(tmp_path / "x".join(map(str, shape)))
        pretrain.train_and_evaluate(
            tiny_config(data_dir, total_steps=3, checkpoint_every=100, **{"mesh.shape": shape}),
            workdir)
        runs[shape] = losses(workdir)
    base = runs[(8, 1, 1)]
    for shape, got in runs.items():
        for step in base:
            assert abs(got[step] - base[step]) <= 1e-5, (shape, step, got[step], base[step])


@pytest.mark.slow
def test_sigterm_saves_exits_cleanly_and_resumes_exactly(data_dir, tmp_path):
    total = 40
    straight = str(tmp_path / "straight")
    pretrain.train_and_evaluate(tiny_config(data_dir, total_steps=total, checkpoint_every=1000,
                                            **{"optimizer.total_steps": total}), straight)
    workdir = tmp_path / "preempted"
    cmd = [sys.executable, "-m", "mobilebert_jax.main",
           f"--config={CONFIGS}/teacher.py:smoke", f"--workdir={workdir}",
           *flatten_overrides(teacher_overrides(data_dir, total_steps=total,
                                                checkpoint_every=1000))]
    # Every program goes to the workdir's compilation cache, however fast it compiled here.
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text()) == 0):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preemption: saving step" in out
    saved = checkpoint.latest_step(str(workdir))
    assert saved is not None and 1 <= saved < total
    assert max(losses(str(workdir))) == saved
    assert "train step: compiled in" in out
    assert os.listdir(workdir / "compilation_cache")
    # restart the same way: the train step comes from the workdir's compilation cache, and every
    # step's loss equals the straight run's (in-process, compiled afresh)
    r = subprocess.run(cmd, capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "train step: loaded from the compilation cache in" in r.stdout + r.stderr
    a, b = losses(straight), losses(str(workdir))
    assert sorted(a) == sorted(b) == list(range(1, total + 1))
    assert all(a[s] == b[s] for s in a)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    workdir = str(tmp_path / "nan")
    pretrain.train_and_evaluate(tiny_config(data_dir, total_steps=2, checkpoint_every=2), workdir)
    before = checkpoint.load_params(workdir)
    with pytest.raises(NonFiniteLoss,
                       match=r"non-finite .* at step 3.*last good checkpoint: step 2"):
        pretrain.train_and_evaluate(
            tiny_config(data_dir, total_steps=4, checkpoint_every=1,
                        **{"optimizer.learning_rate": 1e38}), workdir)
    assert checkpoint.latest_step(workdir) == 2
    after = checkpoint.load_params(workdir)
    for x, y in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
        np.testing.assert_array_equal(x, y)


def test_bad_input(data_dir, tmp_path):
    workdir = str(tmp_path / "w")
    pretrain.train_and_evaluate(tiny_config(data_dir, total_steps=1, checkpoint_every=1), workdir)
    # The workdir carries the tokenizer it was trained with: fine-tuning from it needs no
    # --config.tokenizer, and a start with another tokenizer is refused before anything changes.
    vocab = tokenizers.load_tokenizer("bert-base-uncased")
    assert open(os.path.join(workdir, "vocab.txt"), "rb").read() == open(vocab.path, "rb").read()
    found = finetune_input.resolve_tokenizer(
        ml_collections.ConfigDict(dict(init_checkpoint=workdir, tokenizer="")), 30522)
    assert found.encode("A teacher's vocabulary.") == vocab.encode("A teacher's vocabulary.")
    other = tmp_path / "other_vocab.txt"
    other.write_text(open(vocab.path).read().replace("[unused0]", "[unused_x]"))
    with pytest.raises(ValueError, match=r"stores another tokenizer \(vocab.txt\) than"):
        checkpoint.store_tokenizer(workdir, str(other))
    assert open(os.path.join(workdir, "vocab.txt"), "rb").read() == open(vocab.path, "rb").read()
    with pytest.raises(ValueError, match="holds checkpoints of another model .*hidden_size=32"):
        pretrain.train_and_evaluate(
            tiny_config(data_dir, **{"model.hidden_size": 64}), workdir)
    with pytest.raises(ValueError, match="vocab_size=1000 but tokenizer"):
        pretrain.train_and_evaluate(tiny_config(data_dir, **{"model.vocab_size": 1000}),
                                    str(tmp_path / "v"))
    with pytest.raises(FileNotFoundError, match="holds no prepared dataset"):
        pretrain.train_and_evaluate(
            tiny_config(data_dir, **{"data.dataset_dir": str(tmp_path / "none")}),
            str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"prepared with seq_len=64 but the config has "
                                         r"data\.seq_len=128"):
        pretrain.train_and_evaluate(tiny_config(data_dir, **{"data.seq_len": 128}),
                                    str(tmp_path / "s"))


def test_gradient_accumulation_averages_micro_batches():
    def loss_fn(params, batch, rng):
        del rng
        err = batch["x"] @ params["w"] - batch["y"]
        return jnp.mean(err ** 2), {"n": jnp.float32(batch["x"].shape[0])}

    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((3, 1)), jnp.float32)}
    batch = {"x": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32),
             "y": jnp.asarray(rng.standard_normal((8, 1)), jnp.float32)}
    grads, metrics = core.accumulate_gradients(loss_fn, params, batch, jax.random.PRNGKey(0), 4)
    full, _ = core.accumulate_gradients(loss_fn, params, batch, jax.random.PRNGKey(0), 1)
    # equal-size micro-batches of a mean loss: the average gradient is the full-batch gradient
    np.testing.assert_allclose(grads["w"], full["w"], rtol=1e-5)
    assert float(metrics["n"]) == 2.0  # each micro-batch had 8 / 4 rows
