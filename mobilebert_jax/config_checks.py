"""Range checks of every numeric field of every trainer config, before anything runs.

`check_config(config)` raises one ValueError naming the first field out of range, e.g.
`config.log_every=0: must be an integer >= 1`; fields with a fixed set of values (`CHOICES`) list
them. Fields a config does not have are skipped, so the one table covers the teacher,
distillation and fine-tuning configs.
"""
from __future__ import annotations

import math
from typing import Any

from mobilebert_jax.models.config import REMAT_POLICIES

# field: (kind, low, high, low_inclusive, high_inclusive); None = unbounded
INT, FLOAT = "integer", "number"
_POSITIVE_INT = (INT, 1, None, True, True)
RULES: dict[str, tuple] = {
    "seed": (INT, 0, None, True, True),
    "total_steps": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "eval_batch_size": _POSITIVE_INT,
    "grad_accum_steps": _POSITIVE_INT,
    "log_every": _POSITIVE_INT,
    "eval_every": _POSITIVE_INT,
    "eval_steps": _POSITIVE_INT,
    "checkpoint_every": _POSITIVE_INT,
    "keep_checkpoints": _POSITIVE_INT,
    "steps_per_layer": _POSITIVE_INT,
    "num_epochs": _POSITIVE_INT,
    "max_seq_length": (INT, 8, 4096, True, True),
    "doc_stride": _POSITIVE_INT,
    "max_query_length": _POSITIVE_INT,
    "n_best_size": _POSITIVE_INT,
    "max_answer_length": _POSITIVE_INT,
    "train_subset": (INT, 0, None, True, True),
    "eval_subset": (INT, 0, None, True, True),
    "train_articles": (INT, 0, None, True, True),
    "eval_articles": (INT, 0, None, True, True),
    "learning_rate": (FLOAT, 0.0, None, False, True),
    "warmup_proportion": (FLOAT, 0.0, 1.0, True, False),
    "weight_decay": (FLOAT, 0.0, None, True, True),
    "adam_eps": (FLOAT, 0.0, None, False, True),
    "clip_norm": (FLOAT, 0.0, None, True, True),
    "classifier_dropout": (FLOAT, 0.0, 1.0, True, False),
    "distill_ground_truth_ratio": (FLOAT, 0.0, 1.0, True, True),
    "data.seq_len": (INT, 8, 4096, True, True),
    "data.max_predictions_per_seq": _POSITIVE_INT,
    "data.dupe_factor": _POSITIVE_INT,
    "data.short_seq_prob": (FLOAT, 0.0, 1.0, True, True),
    "data.masked_lm_prob": (FLOAT, 0.0, 1.0, False, False),
    "data.eval_fraction": (FLOAT, 0.0, 1.0, True, False),
    "data.num_workers": _POSITIVE_INT,
    "optimizer.learning_rate": (FLOAT, 0.0, None, False, True),
    "optimizer.warmup_steps": (INT, 0, None, True, True),
    "optimizer.total_steps": (INT, 0, None, True, True),
    "optimizer.weight_decay": (FLOAT, 0.0, None, True, True),
    "optimizer.clip_norm": (FLOAT, 0.0, None, True, True),
    "transfer.learning_rate": (FLOAT, 0.0, None, False, True),
    "transfer.multiplier": (FLOAT, 0.0, None, True, True),
    "transfer.lower_multiplier": (FLOAT, 0.0, None, True, True),
}

# field: the values it may take (true/false: the boolean `remat` of older configs)
CHOICES: dict[str, tuple] = {
    "model.remat": REMAT_POLICIES + (True, False),
}


def _lookup(config, dotted: str) -> tuple[bool, Any]:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False, None
        node = node[part]
    return True, node


def _describe(kind, low, high, low_inc, high_inc) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_inc else '>'} {low}")
    if high is not None:
        parts.append(f"{'<=' if high_inc else '<'} {high}")
    return f"must be {'an' if kind == INT else 'a'} {kind}" + (
        " " + " and ".join(parts) if parts else "")


def check_value(name: str, value: Any, rule: tuple) -> None:
    kind, low, high, low_inc, high_inc = rule
    ok = not isinstance(value, bool)
    if kind == INT:
        ok = ok and isinstance(value, int)
    else:
        ok = ok and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inc else value > low
    if ok and high is not None:
        ok = value <= high if high_inc else value < high
    if not ok:
        raise ValueError(f"config.{name}={value!r}: {_describe(*rule)}")


def check_config(config) -> None:
    """ValueError naming the first numeric field out of range, and inconsistent pairs."""
    for name, rule in RULES.items():
        present, value = _lookup(config, name)
        if present:
            check_value(name, value, rule)
    for name, choices in CHOICES.items():
        present, value = _lookup(config, name)
        if present and not any(value is c or (isinstance(c, str) and value == c)
                               for c in choices):
            raise ValueError(f"config.{name}={value!r}: must be one of "
                             f"{', '.join(map(repr, choices))}")
    present, accum = _lookup(config, "grad_accum_steps")
    if present and config.batch_size % accum:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by "
                         f"config.grad_accum_steps={accum}")
    present, warmup = _lookup(config, "optimizer.warmup_steps")
    _, opt_total = _lookup(config, "optimizer.total_steps")
    if present and opt_total and warmup > opt_total:
        raise ValueError(f"config.optimizer.warmup_steps={warmup} exceeds "
                         f"config.optimizer.total_steps={opt_total}")
