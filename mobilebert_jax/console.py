"""Console output of every job: one line from process 0, scalars and times formatted."""
from __future__ import annotations

import math
import time
from typing import Any

import jax


def plain_value(value: Any):
    """A host scalar for JSON and the console (non-finite floats as their names)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def format_scalars(scalars: dict[str, Any]) -> str:
    parts = []
    for k, v in scalars.items():
        v = plain_value(v)
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
