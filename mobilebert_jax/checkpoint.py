"""Checkpoints: the only module that imports orbax.

A project checkpoint directory looks the same whoever wrote it (a trainer, the converter):

    DIR/model_config.json         the `MobileBertConfig` of the params
    DIR/vocab.txt | spm.model     the tokenizer, when known (optional)
    DIR/checkpoints/<step>/       an orbax CheckpointManager step; item `params` is always there,
                                  trainers add `opt_state`, `meta` (step, RNG, stage) and `data`
                                  (the input iterator's position, per process)

Orbax writes each step to a temporary directory and renames it when complete, so a step that is
visible is whole; an interrupted save leaves the previous step untouched.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mobilebert_jax.models.config import MobileBertConfig

MODEL_CONFIG = "model_config.json"
CHECKPOINTS = "checkpoints"
TOKENIZER_FILES = ("vocab.txt", "spm.model")


def manager(directory: str, item_names=("params",), max_to_keep: int | None = 3,
            async_save: bool = True, save_interval_steps: int = 1,
            read_only: bool = False) -> ocp.CheckpointManager:
    """An orbax CheckpointManager on `directory/checkpoints` with the given items."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
        save_interval_steps=save_interval_steps, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(directory, CHECKPOINTS)),
                                 options=options, item_names=tuple(item_names))


def tokenizer_file(directory: str) -> str | None:
    """The tokenizer file stored beside the params, if any."""
    for name in TOKENIZER_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def save_pretrained(directory: str, config: MobileBertConfig, params: Any, step: int = 0,
                    tokenizer_path: str | None = None) -> str:
    """Writes `params` (and the config, and optionally the tokenizer file) as a project
    checkpoint directory. Refuses to write into a directory that already holds one."""
    if os.path.exists(os.path.join(directory, CHECKPOINTS)):
        raise FileExistsError(f"{directory} already holds a checkpoint; choose a new --out")
    os.makedirs(directory, exist_ok=True)
    params = jax.tree_util.tree_map(np.asarray, params)
    with manager(directory, async_save=False) as mngr:
        mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
        mngr.wait_until_finished()
    if tokenizer_path:
        name = "spm.model" if tokenizer_path.endswith(".model") else "vocab.txt"
        shutil.copyfile(tokenizer_path, os.path.join(directory, name))
    config.to_json(os.path.join(directory, MODEL_CONFIG))
    return directory


def load_config(directory: str) -> MobileBertConfig:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    path = os.path.join(directory, MODEL_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} is not a project checkpoint directory "
                                f"(no {MODEL_CONFIG})")
    return MobileBertConfig.from_json_file(path)


def latest_step(directory: str) -> int | None:
    if not os.path.isdir(os.path.join(directory, CHECKPOINTS)):
        return None
    with manager(directory, read_only=True) as mngr:
        return mngr.latest_step()


def load_params(directory: str, step: int | None = None, target: Any = None) -> Any:
    """The `params` item of the latest (or given) step. `target`: an abstract tree of
    `jax.ShapeDtypeStruct` with shardings to restore onto; None restores host arrays."""
    step = latest_step(directory) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found under {directory}/{CHECKPOINTS}")
    with manager(directory, read_only=True) as mngr:
        restored = mngr.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target)))
    return restored["params"]


def load_pretrained(directory: str) -> tuple[MobileBertConfig, Any]:
    """`(config, params)` from any project checkpoint directory (trainer workdir or converted)."""
    config = load_config(directory)
    return config, load_params(directory)
