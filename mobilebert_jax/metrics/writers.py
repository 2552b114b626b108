"""Training logs: TensorBoard events, `metrics.jsonl` and a console line, written by process 0.

Each `write(step, scalars)` appends one JSON object per call to `workdir/metrics.jsonl` (with at
least `step` and the scalars given, e.g. `loss`) and the same scalars as TensorBoard events.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax


def _plain(value: Any):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Writes scalars to TensorBoard and `metrics.jsonl`; a no-op on processes other than 0."""

    def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
        self.active = jax.process_index() == 0
        self._tb = None
        self._file = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            from clu import metric_writers
            self._tb = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._file = open(os.path.join(workdir, filename), "a")

    def write(self, step: int, scalars: dict[str, Any], prefix: str = "") -> None:
        if not self.active:
            return
        record = {"step": int(step)}
        record.update({prefix + k: _plain(v) for k, v in scalars.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self._tb.write_scalars(int(step), numeric)
            self._tb.flush()

    def close(self) -> None:
        if self.active:
            self._tb.close()
            self._file.close()


def format_scalars(scalars: dict[str, Any]) -> str:
    parts = []
    for k, v in scalars.items():
        v = _plain(v)
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 \
        else f"{seconds / 86400:.1f}d"


def log(message: str) -> None:
    """Console line from process 0 only."""
    if jax.process_index() == 0:
        print(message, flush=True)
