"""Checkpoints: the only module that imports orbax.

A project checkpoint directory looks the same whoever wrote it (a trainer, the converter):

    DIR/model_config.json         the `MobileBertConfig` of the params
    DIR/vocab.txt | spm.model     the tokenizer (every trainer stores it; the converter when
                                  given one)
    DIR/checkpoints/<step>/       an orbax CheckpointManager step; item `params` is always there,
                                  trainers add `opt_state`, `meta` (step, RNG, stage) and `data`
                                  (the input position as JSON, the same for any process count)

Orbax writes each step to a temporary directory and renames it when complete, so a step that is
visible is whole; an interrupted save leaves the previous step untouched. `TrainCheckpointer`
(the trainers' checkpoints) resumes from the newest step that restores, naming a damaged one;
`BestCheckpointer` keeps the best params by an evaluation metric (fine-tuning).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mobilebert_jax import files
from mobilebert_jax.console import log
from mobilebert_jax.models.config import MobileBertConfig

MODEL_CONFIG = "model_config.json"
CHECKPOINTS = "checkpoints"
TOKENIZER_FILES = ("vocab.txt", "spm.model")
# What a fine-tuned model does, for prediction and export: {"name", "kind" (one of TASK_KINDS),
# "labels" (names in output order, or null), "text_columns", "max_seq_length", "lower_case",
# "best_step" (the evaluated step whose params predict; null until the first evaluation)}
TASK_CARD = "task.json"
TASK_KINDS = ("classification", "multi_label", "regression", "token_classification",
              "question_answering")


def manager(directory: str, item_names=("params",), max_to_keep: int | None = 3,
            async_save: bool = True, save_interval_steps: int = 1,
            read_only: bool = False) -> ocp.CheckpointManager:
    """An orbax CheckpointManager on `directory/checkpoints` with the given items."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
        save_interval_steps=save_interval_steps, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(files.join(files.resolve(directory), CHECKPOINTS),
                                 options=options,
                                 item_handlers={name: ocp.StandardCheckpointHandler()
                                                for name in item_names})


def tokenizer_file(directory: str) -> str | None:
    """The tokenizer file stored beside the params, if any."""
    for name in TOKENIZER_FILES:
        path = files.join(directory, name)
        if files.isfile(path):
            return path
    return None


def store_tokenizer(directory: str, tokenizer_path: str) -> None:
    """Copies the tokenizer file into the checkpoint directory as vocab.txt or spm.model, so
    that the directory is self-contained; refuses a directory that stores a different one."""
    name = "spm.model" if tokenizer_path.endswith(".model") else "vocab.txt"
    stored = files.join(directory, name)
    other = [n for n in TOKENIZER_FILES if n != name and files.isfile(files.join(directory, n))]
    if other or (files.isfile(stored) and files.read_bytes(stored)
                 != files.read_bytes(tokenizer_path)):
        raise ValueError(f"{directory} stores another tokenizer ({(other or [name])[0]}) than "
                         f"{tokenizer_path}; use a new directory or the tokenizer it was "
                         "trained with")
    if not files.isfile(stored):
        files.copy_file(tokenizer_path, stored)


def save_pretrained(directory: str, config: MobileBertConfig, params: Any, step: int = 0,
                    tokenizer_path: str | None = None) -> str:
    """Writes `params` (and the config, and optionally the tokenizer file) as a project
    checkpoint directory. Refuses to write into a directory that already holds one."""
    if files.exists(files.join(directory, CHECKPOINTS)):
        raise FileExistsError(f"{directory} already holds a checkpoint; choose a new --out")
    if tokenizer_path and not files.isfile(tokenizer_path):  # checked before writing anything
        raise FileNotFoundError(f"tokenizer file not found: {tokenizer_path}")
    files.makedirs(directory)
    params = jax.tree_util.tree_map(np.asarray, params)
    with manager(directory, async_save=False) as mngr:
        mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
        mngr.wait_until_finished()
    if tokenizer_path:
        store_tokenizer(directory, tokenizer_path)
    config.to_json(files.join(directory, MODEL_CONFIG))
    return directory


def load_config(directory: str) -> MobileBertConfig:
    if not files.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    path = files.join(directory, MODEL_CONFIG)
    if not files.isfile(path):
        raise FileNotFoundError(f"{directory} is not a project checkpoint directory "
                                f"(no {MODEL_CONFIG})")
    return MobileBertConfig.from_json_file(path)


def load_task_card(directory: str) -> dict | None:
    """The fine-tuned model's task card, or None for an encoder (a pretraining checkpoint)."""
    path = files.join(directory, TASK_CARD)
    if not files.isfile(path):
        return None
    card = files.read_json(path, "task card")
    if card.get("kind") not in TASK_KINDS:
        raise ValueError(f"{path}: unknown task kind {card.get('kind')!r} "
                         f"(expected one of {', '.join(TASK_KINDS)})")
    return card


def latest_step(directory: str) -> int | None:
    if not files.isdir(files.join(directory, CHECKPOINTS)):
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
        if target is not None:
            problem = _stored_fit_problem(mngr, step, "params", target)
            if problem:
                raise ValueError(f"checkpoint {directory} (step {step}) does not fit the model "
                                 f"config it is loaded with ({problem})")
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(target)))
        except (ValueError, KeyError, TypeError) as e:
            if target is None:
                raise
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise ValueError(f"checkpoint {directory} (step {step}) does not fit the model "
                             f"config it is loaded with: {first}") from None
    return restored["params"]


def check_params_fit(config: MobileBertConfig, params: Any, where: str) -> None:
    """ValueError naming the first encoder parameter that `config` needs and `params` lacks
    or holds in another shape (a `model_config.json` that does not describe its params)."""
    from flax.core import meta

    from mobilebert_jax.models.encoder import MobileBertModel

    ids = jax.ShapeDtypeStruct((1, 8), np.int32)
    want = jax.eval_shape(lambda i: meta.unbox(MobileBertModel(config).init(
        jax.random.PRNGKey(0), i)["params"]), ids)
    have = dict(jax.tree_util.tree_flatten_with_path(params.get("bert", {}))[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(want)[0]:
        name = "bert/" + _path_name(path)
        if path not in have:
            raise ValueError(f"{where}: its params lack {name}, which its {MODEL_CONFIG} "
                             "needs (the config does not describe these params)")
        if tuple(np.shape(have[path])) != tuple(leaf.shape):
            raise ValueError(f"{where}: {name} has shape {tuple(np.shape(have[path]))}, its "
                             f"{MODEL_CONFIG} needs {tuple(leaf.shape)}")


def load_pretrained(directory: str, step: int | None = None) -> tuple[MobileBertConfig, Any]:
    """`(config, params)` from any project checkpoint directory (trainer workdir or converted),
    the params of `step` (default: the latest) checked against the config."""
    config = load_config(directory)
    params = load_params(directory, step)
    check_params_fit(config, params, f"checkpoint {directory}")
    return config, params


def _stored_fit_problem(mngr, step: int, item: str, target: Any) -> str | None:
    """What keeps the stored `item` of `step` (by its metadata: names and shapes) from being
    restored into the abstract tree `target`, or None when it fits (or its metadata cannot be
    read: the restore then names the damage)."""
    try:
        stored = mngr.item_metadata(step)
    except Exception:
        return None
    meta = stored.get(item) if stored is not None else None
    if meta is None:
        return None
    have = {_path_name(p): tuple(getattr(m, "shape", ()) or ())
            for p, m in jax.tree_util.tree_flatten_with_path(meta)[0]}
    want = {_path_name(p): tuple(t.shape)
            for p, t in jax.tree_util.tree_flatten_with_path(target)[0]}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if wrong:
        return f"{wrong[0]} has shape {have[wrong[0]]}, the config needs {want[wrong[0]]}"
    if missing:
        return f"it lacks {missing[0]}"
    if extra:
        return f"it has an extra {extra[0]}"
    return None


# -- trainer checkpoints ---------------------------------------------------------------------------
TRAIN_ITEMS = ("params", "opt_state", "meta", "data")  # arrays x3, then the JSON


def _path_name(path) -> str:
    """A key path as '/'-joined names, the same whether a level is stored as a dict, a
    tuple or a NamedTuple (orbax's metadata keeps NamedTuples as dicts)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


class TrainCheckpointer:
    """The train state of a run (params, optimizer state, `meta` = step, RNG and trainer extras,
    `data` = the input position as JSON) in `directory/<subdir>/<step>/`, keeping the newest
    `keep` steps. Orbax writes the JSON item from process 0 only and the arrays shard by shard,
    so a checkpoint written by N processes restores on any number of processes."""

    def __init__(self, directory: str, keep: int, async_save: bool = True,
                 subdir: str = CHECKPOINTS):
        if int(keep) < 1:
            raise ValueError(f"keep_checkpoints={keep} must be >= 1 (orbax would delete every "
                             "checkpoint)")
        self.directory = files.join(files.resolve(directory), subdir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep), enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        handlers = {name: ocp.StandardCheckpointHandler() for name in TRAIN_ITEMS[:3]}
        handlers["data"] = ocp.JsonCheckpointHandler()
        self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                           item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, params, opt_state, meta, data_state: dict) -> bool:
        """Starts saving `step` (async); False when that step is already saved."""
        if step in self._mngr.all_steps():
            return False
        args = ocp.args.Composite(params=ocp.args.StandardSave(params),
                                  opt_state=ocp.args.StandardSave(opt_state),
                                  meta=ocp.args.StandardSave(meta),
                                  data=ocp.args.JsonSave(data_state))
        return self._mngr.save(step, args=args, force=True)

    def restore(self, params, opt_state, meta):
        """(step, params, opt_state, meta, data_state) of the newest intact step, restored onto
        the given abstract trees (`jax.ShapeDtypeStruct` with shardings); None when there is
        no checkpoint. A step whose stored shapes differ from the targets is a config error
        (ValueError); a step that fails to read is damaged: it is named and the next older
        step is tried, and ValueError when none restores."""
        steps = sorted(self._mngr.all_steps(), reverse=True)
        if not steps:
            return None
        damaged = []
        for step in steps:
            self._check_fits(step, {"params": params, "opt_state": opt_state, "meta": meta})
            args = ocp.args.Composite(params=ocp.args.StandardRestore(params),
                                      opt_state=ocp.args.StandardRestore(opt_state),
                                      meta=ocp.args.StandardRestore(meta),
                                      data=ocp.args.JsonRestore())
            try:
                r = self._mngr.restore(step, args=args)
            except Exception as e:  # tensorstore, orbax and OS errors of a damaged step
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                damaged.append(step)
                log(f"checkpoint step {step} in {self.directory} is damaged "
                    f"({type(e).__name__}: {reason}); trying an older step")
                continue
            if damaged:
                log(f"resuming from step {step}: newer step(s) {damaged} could not be read")
            return step, r["params"], r["opt_state"], r["meta"], r["data"]
        raise ValueError(f"no intact checkpoint in {self.directory}: steps {damaged} are all "
                         "damaged; move them away to start again")

    def _check_fits(self, step: int, targets: dict) -> None:
        for item, target in targets.items():
            problem = _stored_fit_problem(self._mngr, step, item, target)
            if problem:
                raise ValueError(f"checkpoint step {step} in {self.directory} does not fit "
                                 f"this model/optimizer config ({item}: {problem})")

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


class BestCheckpointer:
    """The best `keep` params of a run by `metric` (higher is better) in
    `directory/checkpoints/`, so the directory is a project checkpoint of the best model."""

    def __init__(self, directory: str, metric: str, keep: int):
        if int(keep) < 1:
            raise ValueError(f"keep_checkpoints={keep} must be >= 1")
        self.metric = metric
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep), best_fn=lambda m: float(m[metric]), best_mode="max",
            enable_async_checkpointing=False, create=True, cleanup_tmp_directories=True)
        self._mngr = ocp.CheckpointManager(files.join(files.resolve(directory), CHECKPOINTS),
                                           options=options, item_names=("params",))

    def save(self, step: int, params, metrics: dict) -> None:
        if step in self._mngr.all_steps():  # a resumed run re-evaluates a saved epoch
            return
        self._mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                        metrics={k: float(v) for k, v in metrics.items()}, force=True)
        self._mngr.wait_until_finished()

    def restore_best(self, target):
        """(step, params) of the best step, restored onto the abstract `target`."""
        step = self._mngr.best_step()
        restored = self._mngr.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target)))
        return step, restored["params"]

    def close(self) -> None:
        self._mngr.close()
