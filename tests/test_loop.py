"""The shared training loop and the trainer checkpoints, on a toy state with real orbax
checkpoints: the NaN guard names the step (also off the log cadence and on a preemption
save), a preemption stop saves once, a damaged newest step falls back to the previous intact
one, and degenerate settings are refused."""
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax import checkpoint
from mobilebert_jax.metrics.writers import MetricsWriter
from mobilebert_jax.train import core, loop


def toy_state(step=0):
    return core.TrainState(jnp.asarray(step, jnp.int32), {"w": jnp.arange(4.0)},
                                {"m": jnp.zeros(4)}, jax.random.key_data(jax.random.PRNGKey(0)))


def shardings_of(state):
    return jax.tree_util.tree_map(lambda x: x.sharding, state)


def make_hooks(nan_at=None, sigterm_after=None, seen=None):
    def train_step(state, step):
        if seen is not None:
            seen.append(step)
        if sigterm_after is not None and step + 1 == sigterm_after:
            os.kill(os.getpid(), signal.SIGTERM)
        loss = jnp.float32(np.nan if step + 1 == nan_at else 1.0 / (step + 1))
        new = state.replace(step=state.step + 1, params={"w": state.params["w"] + 1.0})
        return new, {"loss": loss, "update_norm": jnp.float32(1.0)}
    return loop.Hooks(train_step=train_step, host_state=lambda: {"position": len(seen or [])})


def run(tmp_path, hooks, total, log_every=100, checkpoint_every=100, state=None):
    ckpt = checkpoint.TrainCheckpointer(str(tmp_path), keep=3, async_save=True)
    cadence = loop.Cadence(total, log_every, 10 ** 6, checkpoint_every)
    return loop.run(state if state is not None else toy_state(), hooks, cadence, ckpt,
                    MetricsWriter(str(tmp_path)), tokens_per_step=1)


def latest(tmp_path):
    return checkpoint.TrainCheckpointer(str(tmp_path), keep=3).latest_step()


def test_nan_off_the_log_cadence_is_named_and_never_saved(tmp_path):
    with pytest.raises(loop.NonFiniteLoss, match=r"at step 3; stopping \(last good checkpoint: "
                                                  r"step 2\)"):
        run(tmp_path, make_hooks(nan_at=3), total=6, checkpoint_every=2)
    assert latest(tmp_path) == 2


def test_nan_then_preemption_in_the_same_window_keeps_the_last_good_step(tmp_path):
    with pytest.raises(loop.NonFiniteLoss, match="at step 3"):
        run(tmp_path, make_hooks(nan_at=3, sigterm_after=4), total=50, checkpoint_every=2)
    assert latest(tmp_path) == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was put back


def test_preemption_saves_that_step_once_and_returns(tmp_path):
    seen = []
    state, _ = run(tmp_path, make_hooks(sigterm_after=4, seen=seen), total=50)
    assert int(state.step) == 4 and seen == [0, 1, 2, 3]
    ckpt = checkpoint.TrainCheckpointer(str(tmp_path), keep=3)
    restored, host = core.restore_state(ckpt, toy_state(), shardings_of(toy_state()))
    assert int(restored.step) == 4 and host == {"position": 4}
    np.testing.assert_array_equal(restored.params["w"], np.arange(4.0) + 4)
    ckpt.close()


def _corrupt(step_dir: pathlib.Path) -> None:
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0
             and "params" in p.parts and "_METADATA" not in p.name]
    assert files, f"no array files under {step_dir}"
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def test_a_damaged_newest_step_falls_back_to_the_previous_one(tmp_path, capsys):
    run(tmp_path, make_hooks(), total=4, checkpoint_every=2)
    _corrupt(tmp_path / "checkpoints" / "4")
    ckpt = checkpoint.TrainCheckpointer(str(tmp_path), keep=3)
    restored, _ = core.restore_state(ckpt, toy_state(), shardings_of(toy_state()))
    assert int(restored.step) == 2
    np.testing.assert_array_equal(restored.params["w"], np.arange(4.0) + 2)
    assert "checkpoint step 4" in capsys.readouterr().out + capsys.readouterr().err
    _corrupt(tmp_path / "checkpoints" / "2")
    with pytest.raises(ValueError, match=r"no intact checkpoint .*steps \[4, 2\]"):
        core.restore_state(ckpt, toy_state(), shardings_of(toy_state()))
    ckpt.close()


def test_a_checkpoint_of_another_shape_is_a_config_error_not_damage(tmp_path):
    run(tmp_path, make_hooks(), total=2, checkpoint_every=2)
    other = toy_state().replace(params={"w": jnp.zeros(5)})
    ckpt = checkpoint.TrainCheckpointer(str(tmp_path), keep=3)
    with pytest.raises(ValueError, match=r"does not fit .*w has shape \(4,\)"):
        core.restore_state(ckpt, other, shardings_of(other))
    ckpt.close()


def test_keeping_no_checkpoint_is_refused(tmp_path):
    with pytest.raises(ValueError, match="keep_checkpoints=0 must be >= 1"):
        checkpoint.TrainCheckpointer(str(tmp_path), keep=0)


def test_a_second_signal_during_the_preemption_save_changes_nothing(tmp_path):
    signals = []

    def host_state():  # runs inside the save: the scheduler signals again
        os.kill(os.getpid(), signal.SIGTERM)
        signals.append("during save")
        return {"position": 4}

    hooks = make_hooks(sigterm_after=4)
    hooks.host_state = host_state
    state, _ = run(tmp_path, hooks, total=50)
    assert int(state.step) == 4 and signals == ["during save"]
    ckpt = checkpoint.TrainCheckpointer(str(tmp_path), keep=3)
    restored, host = core.restore_state(ckpt, toy_state(), shardings_of(toy_state()))
    assert int(restored.step) == 4 and host == {"position": 4}
    assert ckpt.latest_step() == 4
    ckpt.close()
