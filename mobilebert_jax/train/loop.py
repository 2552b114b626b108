"""The training loop every trainer runs: steps, the log window, the NaN/inf guard, evaluation
and checkpoint cadence, the preemption stop agreed by all processes, and the final save.

A trainer builds its state, its compiled step and its evaluation, then hands them to `run` as
`Hooks`; everything about *when* things happen lives here, once:

* every step: `hooks.train_step(state, step)` (the trainer reads its next batch and runs its
  compiled step); the step's metrics join the log window (device arrays, no host sync);
* every `log_every` steps, at a stage boundary and at the end: the window's metrics come to
  the host in one fetch; a non-finite loss or update norm stops the run naming the first bad
  step; otherwise the means, steps/s, tokens/s, MFU and ETA go to the console, TensorBoard and
  `metrics.jsonl`;
* every `eval_every` steps and at the end: `hooks.evaluate(state, step)`;
* every `checkpoint_every` steps, at the end (and after each evaluation when
  `checkpoint_after_eval`): the steps since the last check pass the NaN guard, then the state is
  saved; a non-finite step is never saved, so the last good checkpoint stays the latest;
* preemption: with one process SIGTERM/SIGINT set a flag that is polled every step. With
  several, JAX's preemption service (started by `jax.distributed.initialize`) owns SIGTERM and
  `reached_preemption_sync_point(step)`, asked by every process at every step, turns true at
  the same step on all of them, however many received the signal. That step passes the NaN
  guard, is saved once, and the run returns normally (exit 0). A further signal during the save
  only sets the flag again.
"""
from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mobilebert_jax.cli import CommandError
from mobilebert_jax.console import format_eta, format_scalars, log
from mobilebert_jax.metrics import throughput
from mobilebert_jax.metrics.writers import MetricsWriter
from mobilebert_jax.train import core


class NonFiniteLoss(CommandError):
    pass


class StopRequest:
    """The preemption decision, the same on every process (see the module docstring)."""

    def __init__(self):
        self.requested = False
        self._multi = jax.process_count() > 1
        self._previous = {}
        if self._multi:
            return  # SIGTERM belongs to JAX's preemption notifier
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if self._multi:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.requested

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


@dataclasses.dataclass
class Hooks:
    """What differs between trainers. Only `train_step` is required."""

    train_step: Callable[[Any, int], tuple[Any, dict]]  # (state, step) -> (state, metrics)
    evaluate: Callable[[Any, int], dict] | None = None  # (state, step) -> eval metrics
    is_boundary: Callable[[int], bool] = lambda step: False  # a stage ends after `step`
    enter: Callable[[Any, int], Any] = lambda state, step: state  # at a boundary, after logging
    log_fields: Callable[[int], dict] = lambda step: {}  # extra scalars for the step's log line
    label: Callable[[int], str] = lambda step: ""  # e.g. "[PKT layer 3]"
    host_state: Callable[[], dict] = dict  # JSON saved with the state (input position, ...)
    checkpoint_after_eval: bool = False


@dataclasses.dataclass(frozen=True)
class Cadence:
    total_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int


def cadence(config) -> Cadence:
    """The cadence of a trainer config (`total_steps`, `log_every`, `eval_every`,
    `checkpoint_every`)."""
    return Cadence(int(config.total_steps), int(config.log_every), int(config.eval_every),
                   int(config.checkpoint_every))


class Window:
    """Per-step metrics since the last log line (device arrays) and their timing."""

    def __init__(self):
        self.metrics: list[tuple[int, dict]] = []
        self.checked = 0  # how many entries already passed the NaN guard
        self.restart_clock()

    def restart_clock(self) -> None:
        self.t0, self.steps = time.perf_counter(), 0

    def add(self, step: int, metrics: dict) -> None:
        self.metrics.append((step, metrics))
        self.steps += 1

    def check_finite(self, ckpt) -> None:
        """NonFiniteLoss naming the first step since the last check whose loss or update norm
        is NaN/inf."""
        todo = self.metrics[self.checked:]
        if not todo:
            return
        keys = [k for k in ("loss", "update_norm") if k in todo[0][1]]
        values = core.to_host({k: jnp.stack([m[k] for _, m in todo]) for k in keys})
        bad = ~np.all([np.isfinite(values[k]) for k in keys], axis=0)
        if bad.any():
            i = int(np.argmax(bad))
            step = todo[i][0]
            what = ", ".join(f"{k}={float(values[k][i])}" for k in keys)
            last = ckpt.latest_step()
            kept = f"last good checkpoint: step {last}" if last is not None else "no checkpoint"
            raise NonFiniteLoss(f"non-finite training values ({what}) at step {step}; "
                                f"stopping ({kept})")
        self.checked = len(self.metrics)

    def flush(self, ckpt) -> dict[str, float]:
        """Host means of the window (after the NaN guard) plus steps/s; empties the window."""
        self.check_finite(ckpt)
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.mean(jnp.stack(xs)),
                                         *[m for _, m in self.metrics])
        means = {k: float(v) for k, v in core.to_host(stacked).items()}
        means["steps_per_second"] = self.steps / max(time.perf_counter() - self.t0, 1e-9)
        self.metrics, self.checked = [], 0
        self.restart_clock()
        return means


def run(state, hooks: Hooks, cadence: Cadence, ckpt, writer: MetricsWriter, *,
        tokens_per_step: int, flops_per_step: float | None = None,
        peak_flops: float | None = None) -> tuple[Any, dict[str, float]]:
    """Trains from `state.step` to `cadence.total_steps`; returns the final state and the last
    logged metrics.
    Closes `ckpt` (waiting for its saves) and `writer` when it ends, however it ends."""
    stop = StopRequest()
    step, total = int(state.step), cadence.total_steps
    window, last = Window(), {}

    def save(state) -> None:
        window.check_finite(ckpt)
        core.save_state(ckpt, state, hooks.host_state())

    try:
        while step < total:
            if stop.should_stop(step):
                log(f"preemption: saving step {step} and exiting")
                save(state)
                break
            state, metrics = hooks.train_step(state, step)
            step += 1
            window.add(step, metrics)
            is_last = step == total
            boundary = hooks.is_boundary(step)
            if step % cadence.log_every == 0 or is_last or boundary:
                last = window.flush(ckpt)
                sps = last["steps_per_second"]
                last["tokens_per_second"] = sps * tokens_per_step
                util = throughput.mfu(flops_per_step, sps, peak_flops) if flops_per_step else None
                if util is not None:
                    last["mfu"] = util
                last.update(hooks.log_fields(step - 1))
                writer.write(step, last)
                label = hooks.label(step - 1)
                log(f"step {step}/{total}{' ' + label if label else ''} {format_scalars(last)} "
                    f"eta {format_eta((total - step) / sps)}")
            if boundary:
                state = hooks.enter(state, step)
                window.restart_clock()  # a new stage's compile time is not step time
            evaluated = False
            if hooks.evaluate is not None and (step % cadence.eval_every == 0 or is_last):
                ev = hooks.evaluate(state, step)
                if ev:
                    writer.write(step, ev, prefix="eval_")
                    log(f"eval step {step}: {format_scalars(ev)}")
                evaluated = True
                window.restart_clock()
            if (step % cadence.checkpoint_every == 0 or is_last
                    or (evaluated and hooks.checkpoint_after_eval)):
                save(state)
    finally:
        try:
            ckpt.close()
        finally:
            stop.close()
            writer.close()
    return state, last
