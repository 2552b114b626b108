"""Fine-tuning on GLUE and SQuAD from any project checkpoint directory.

    python -m mobilebert_jax.main --config=configs/finetune_glue.py:mrpc --workdir=DIR \
        --config.init_checkpoint=CKPT_DIR
    python -m mobilebert_jax.main --config=configs/finetune_squad.py:1.1 --workdir=DIR \
        --config.init_checkpoint=CKPT_DIR

The encoder (`bert/`) starts from `init_checkpoint` (a teacher, a distilled student or a
converted TF1/HF model, plain BERT included); the task head (`classifier/` or `qa_outputs/`) is
new. Recipe (reference §5): AdamW (optionally without bias correction, as the official code),
10% linear warm-up then linear decay, global-norm clipping 1.0, dropout 0.1 on [CLS].

Every epoch ends with an evaluation: its metrics go to `metrics.jsonl` and
`eval_results.json`, and the params are saved in an orbax manager that keeps the best
checkpoints by the task metric (`best_metric`). After training the best params predict the
test sets: GLUE submission files in `WORKDIR/submission/`, SQuAD `predictions.json` for the
eval set in `WORKDIR/predictions/` (and for `predict_file` in `WORKDIR/test_predictions/`).
The workdir is itself a project checkpoint directory (`model_config.json`, vocabulary, params).
"""
from __future__ import annotations

import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from mobilebert_jax import checkpoint, files, parallel
from mobilebert_jax.data import glue as glue_data
from mobilebert_jax.data import squad as squad_data
from mobilebert_jax.metrics.glue import glue_metrics
from mobilebert_jax.metrics.squad import squad_scores
from mobilebert_jax.metrics.writers import MetricsWriter, log
from mobilebert_jax.models.heads import (MobileBertForQuestionAnswering,
                                         MobileBertForSequenceClassification)
from mobilebert_jax.train import finetune_data as fd
from mobilebert_jax.train import loop, losses, optim
from mobilebert_jax.train import state as state_lib

EVAL_RESULTS = "eval_results.json"
TRAIN_STATE = "train_state"  # the resumable state (params, optimizer, step, RNG, history)
TRAIN_STATES_KEPT = 2
PREDICTED = ("logits", "start_logits", "end_logits")  # model outputs brought back to the host


# -- losses --------------------------------------------------------------------------------------
def glue_loss(logits, batch, regression: bool):
    """Cross-entropy (classification) or squared error (STS-B) over the real batch rows."""
    if regression:
        return losses.regression_loss(logits, batch["labels"], batch["weights"])
    return losses.classification_loss(logits, batch["labels"], batch["weights"])


def squad_loss(start_logits, end_logits, batch):
    """(CE(start) + CE(end)) / 2 over all positions, over the real batch rows."""
    return losses.span_loss(start_logits, end_logits, batch["start_positions"],
                            batch["end_positions"], batch["weights"])


# -- optimizer -----------------------------------------------------------------------------------
def optimizer_config(config, total_steps: int):
    """The AdamW section of `make_optimizer` for a run of `total_steps` updates."""
    warmup = int(round(float(config.warmup_proportion) * total_steps))
    return dict(name="adamw", learning_rate=float(config.learning_rate), warmup_steps=warmup,
                total_steps=total_steps, end_learning_rate=0.0, decay="linear",
                decay_after_warmup=bool(config.get("decay_after_warmup", False)),
                weight_decay=float(config.weight_decay), b1=0.9, b2=0.999,
                eps=float(config.get("adam_eps", 1e-6)),
                bias_correction=bool(config.bias_correction), clip_norm=float(config.clip_norm))


# -- the task-independent loop -------------------------------------------------------------------
def init_params(model, seed: int, seq_len: int):
    """The (boxed) initial params of a fine-tuning model: the encoder is replaced from the
    checkpoint afterwards, so this fixes the task head's starting weights."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return model.init(jax.random.PRNGKey(seed), ids, ids, ids)["params"]


class Trainer:
    """Model, sharded state and jitted steps of one run; the batch of any global step."""

    def __init__(self, config, model, train_features, train_keys, loss_fn):
        self.config, self.model = config, model
        self.mesh = parallel.make_mesh(config.mesh.shape)
        self.rules = parallel.rules_from_config(config.mesh.rules)
        self.batch_size = int(config.batch_size)
        self.eval_batch_size = int(config.eval_batch_size)
        for size in (self.batch_size, self.eval_batch_size):
            if size <= 0:
                raise ValueError(f"batch sizes must be positive, got {size}")
            parallel.check_batch_divisible(size, self.mesh)
        if int(config.num_epochs) <= 0:
            raise ValueError(f"num_epochs must be positive, got {config.num_epochs}")
        self.features, self.train_keys = train_features, train_keys
        self.num_train = len(train_features["input_ids"])
        self.steps_per_epoch = fd.num_batches(self.num_train, self.batch_size)
        self.total_steps = self.steps_per_epoch * int(config.num_epochs)
        tx, self.schedule = optim.make_optimizer(optimizer_config(config, self.total_steps))
        seed, seq_len = int(config.seed), train_features["input_ids"].shape[1]
        self.state, self.shardings = state_lib.create_sharded_state(
            lambda: init_params(model, seed, seq_len), tx, seed, self.mesh, self.rules)
        self._orders: dict[int, np.ndarray] = {}
        self._build_steps(tx, loss_fn)

    def load_encoder(self, directory: str) -> None:
        """The `bert/` params of a project checkpoint (checked against its model config, which
        the fine-tuning model is built from) replace the fresh encoder."""
        _, pretrained = checkpoint.load_pretrained(directory)
        want = jax.tree_util.tree_flatten_with_path(self.state.params["bert"])[0]
        have = dict(jax.tree_util.tree_flatten_with_path(pretrained["bert"])[0])
        bert = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(self.state.params["bert"]),
            [np.asarray(have[p], dtype=leaf.dtype) for p, leaf in want])
        bert = jax.device_put(bert, self.shardings.params["bert"])
        self.state = self.state.replace(params=dict(self.state.params, bert=bert))

    def _build_steps(self, tx, loss_fn) -> None:
        model, schedule = self.model, self.schedule

        def train_step(state, batch):
            rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

            def loss_of(params):
                out = model.apply({"params": params}, batch["input_ids"],
                                  batch["token_type_ids"], batch["attention_mask"],
                                  deterministic=False, rngs={"dropout": rng})
                return loss_fn(out, batch)

            loss, grads = jax.value_and_grad(loss_of)(state.params)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
                       "learning_rate": schedule(state.step)}
            return state.replace(step=state.step + 1, params=params,
                                 opt_state=opt_state), metrics

        def predict_step(params, batch):
            out = model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                              batch["attention_mask"], deterministic=True)
            return {k: getattr(out, k) for k in PREDICTED if hasattr(out, k)}

        batch_sh = parallel.batch_sharding(self.mesh)
        repl = parallel.replicated(self.mesh)
        self.train_step = jax.jit(train_step, in_shardings=(self.shardings, batch_sh),
                                  out_shardings=(self.shardings, repl), donate_argnums=0)
        self.predict_step = jax.jit(predict_step, in_shardings=(self.shardings.params, batch_sh))

    def batch_at(self, step: int) -> dict[str, jax.Array]:
        """Global training batch `step` (epoch `step // steps_per_epoch` in its seeded order),
        built from this process's rows only."""
        epoch, index = divmod(int(step), self.steps_per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: fd.epoch_order(self.num_train, epoch, int(self.config.seed))}
        batch = fd.batch_at(self.features, self._orders[epoch], index, self.batch_size,
                            self.train_keys)
        return parallel.global_batch(parallel.process_rows(batch), self.mesh)

    def predict(self, params, features, keys=fd.MODEL_INPUTS) -> dict[str, np.ndarray]:
        """Outputs of the deterministic model on all features, in order, as host arrays (the
        whole set on every process)."""
        n = len(features["input_ids"])
        outs: dict[str, list] = {}
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            for i in range(fd.num_batches(n, self.eval_batch_size)):
                batch = fd.batch_at(features, np.arange(n), i, self.eval_batch_size, keys)
                real = int(batch.pop("weights").sum())
                out = self.predict_step(params, parallel.global_batch(
                    parallel.process_rows(batch), self.mesh))
                for k, v in parallel.to_host_global(out).items():
                    outs.setdefault(k, []).append(v[:real])
        return {k: np.concatenate(v) for k, v in outs.items()}


def _prepare_workdir(config, workdir: str, model_config, tokenizer) -> None:
    os.makedirs(workdir, exist_ok=True)
    state_lib.write_config(workdir, config)
    state_lib.check_workdir_model(workdir, model_config)
    if jax.process_index() == 0:
        name = "spm.model" if tokenizer.path.endswith(".model") else "vocab.txt"
        if os.path.abspath(tokenizer.path) != os.path.abspath(os.path.join(workdir, name)):
            shutil.copyfile(tokenizer.path, os.path.join(workdir, name))


def _run(config, workdir: str, model, train_features, train_keys, loss_fn, evaluate,
         best_metric: str, task_name: str) -> tuple[Trainer, object, dict]:
    """Trains (or resumes) with an evaluation and a best-checkpoint save after every epoch;
    returns (trainer, best checkpointer, results)."""
    trainer = Trainer(config, model, train_features, train_keys, loss_fn)
    spe = trainer.steps_per_epoch
    ckpt = checkpoint.TrainCheckpointer(workdir, TRAIN_STATES_KEPT, subdir=TRAIN_STATE)
    best = checkpoint.BestCheckpointer(workdir, best_metric, config.keep_checkpoints)
    trainer.state, host_state = state_lib.restore_state(ckpt, trainer.state, trainer.shardings)
    if host_state is None:
        trainer.load_encoder(config.init_checkpoint)
        history = []
    else:
        history = host_state["history"]
        log(f"resumed from step {int(trainer.state.step)} (epoch "
            f"{int(trainer.state.step) // spe + 1})")
    log(f"{task_name}: {trainer.num_train} training features, {spe} steps/epoch x "
        f"{config.num_epochs} epochs, batch {trainer.batch_size}, seq "
        f"{train_features['input_ids'].shape[1]}, lr {config.learning_rate}")
    results = {}
    epoch_losses, clock = [], {"start": time.perf_counter(), "epoch": time.perf_counter()}

    def train_step(state, step):
        with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
            state, metrics = trainer.train_step(state, trainer.batch_at(step))
        epoch_losses.append(metrics["loss"])
        return state, metrics

    def evaluate_epoch(state, step):
        t_train = time.perf_counter() - clock["epoch"]
        metrics = evaluate(trainer, state.params)
        if best_metric not in metrics:
            raise ValueError(f"best_metric {best_metric!r} is not among the eval metrics "
                             f"({', '.join(metrics)})")
        train_loss = (float(np.mean(state_lib.to_host(jnp.stack(epoch_losses))))
                      if epoch_losses else float("nan"))
        epoch_losses.clear()
        history.append({"epoch": step // spe, "step": step, "train_loss": train_loss,
                        "train_seconds": t_train, "metrics": metrics})
        best.save(step, state.params, metrics)
        # the best epoch, ties to the later one (as the best checkpointer keeps them)
        top = max(history, key=lambda h: (h["metrics"][best_metric], h["step"]))
        results.update({"task": task_name, "epoch": step // spe, "step": step,
                        "metrics": metrics, "best_metric": best_metric,
                        "best": {k: top[k] for k in ("epoch", "step", "metrics")},
                        "history": history, "finished": False,
                        "elapsed_seconds": time.perf_counter() - clock["start"]})
        if jax.process_index() == 0:
            state_lib.dump_json(os.path.join(workdir, EVAL_RESULTS), results)
        clock["epoch"] = time.perf_counter()
        return metrics

    hooks = loop.Hooks(train_step=train_step, evaluate=evaluate_epoch,
                       host_state=lambda: {"history": history}, checkpoint_after_eval=True)
    cadence = loop.Cadence(trainer.total_steps, int(config.log_every), spe,
                           int(config.checkpoint_every))
    trainer.state, _ = loop.run(
        trainer.state, hooks, cadence, ckpt, MetricsWriter(workdir),
        tokens_per_step=trainer.batch_size * train_features["input_ids"].shape[1])
    if not results:  # the run had already finished: its results stand
        results = files.read_json(os.path.join(workdir, EVAL_RESULTS), "evaluation results")
    return trainer, best, results


def _restore_best(best, trainer: Trainer):
    """(step, params) of the best evaluated epoch, in the trainer's shardings."""
    target = state_lib.abstract_like(trainer.state.params, trainer.shardings.params)
    step, params = best.restore_best(target)
    best.close()
    return step, params


def _finish(workdir: str, results: dict) -> dict:
    results["finished"] = True
    if jax.process_index() == 0:
        state_lib.dump_json(os.path.join(workdir, EVAL_RESULTS), results)
    return results


# -- GLUE ----------------------------------------------------------------------------------------
def glue_predictions(task: glue_data.GlueTask, logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if task.is_regression else logits.argmax(-1)


def evaluate_glue(trainer: Trainer, params, task, dev_splits) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split in dev_splits:
        logits = trainer.predict(params, split.features)["logits"]
        labels = split.features["labels"]
        metrics.update(glue_metrics(task.name, glue_predictions(task, logits), labels,
                                    split=split.name if len(dev_splits) > 1 else None))
    return metrics


def train_glue(config, workdir: str) -> dict:
    task = fd.glue_task(config.task)
    if not config.init_checkpoint:
        raise ValueError("config.init_checkpoint is required (a project checkpoint directory)")
    model_config = checkpoint.load_config(config.init_checkpoint)
    tokenizer = fd.resolve_tokenizer(config, model_config.vocab_size)
    data = fd.load_glue_data(config, tokenizer)
    _prepare_workdir(config, workdir, model_config, tokenizer)
    model = MobileBertForSequenceClassification(model_config, task.num_labels,
                                                float(config.classifier_dropout))
    regression = task.is_regression
    best_metric = config.best_metric or (
        "accuracy_matched" if task.name == "mnli" else task.metrics[0])
    trainer, best, results = _run(
        config, workdir, model, data.train.features, fd.MODEL_INPUTS + ("labels",),
        lambda out, b: glue_loss(out.logits, b, regression),
        lambda tr, p: evaluate_glue(tr, p, task, data.dev), best_metric, task.name)
    step, params = _restore_best(best, trainer)
    files = []
    for split in data.test:
        predictions = glue_predictions(task, trainer.predict(params, split.features)["logits"])
        folder = os.path.join(workdir, "submission")
        path = os.path.join(folder, task.submission_file(split.name))
        if jax.process_index() == 0:
            glue_data.write_glue_submission(task, predictions, folder, split=split.name,
                                            indices=[ex.guid for ex in split.examples])
            log(f"wrote {path} ({len(split.examples)} test predictions, best step {step})")
        files.append(str(path))
    results["submission_files"] = files
    return _finish(workdir, results)


# -- SQuAD ---------------------------------------------------------------------------------------
def squad_answers(trainer: Trainer, params, split, config, version: str):
    out = trainer.predict(params, split.features)
    return squad_data.postprocess_squad(
        split.examples, split.features, out["start_logits"], out["end_logits"],
        n_best_size=int(config.n_best_size), max_answer_length=int(config.max_answer_length),
        version=version, null_score_diff_threshold=float(config.null_score_diff_threshold))


def evaluate_squad(trainer: Trainer, params, split, config, version: str) -> dict[str, float]:
    predictions, null_odds, _ = squad_answers(trainer, params, split, config, version)
    return squad_scores(split.squad_json, predictions, null_odds if version == "2.0" else None,
                        version=version, warn_missing=False)


def train_squad(config, workdir: str) -> dict:
    version = fd.squad_version(config.version)
    if not config.init_checkpoint:
        raise ValueError("config.init_checkpoint is required (a project checkpoint directory)")
    model_config = checkpoint.load_config(config.init_checkpoint)
    tokenizer = fd.resolve_tokenizer(config, model_config.vocab_size)
    data = fd.load_squad_data(config, tokenizer)
    _prepare_workdir(config, workdir, model_config, tokenizer)
    model = MobileBertForQuestionAnswering(model_config)
    trainer, best, results = _run(
        config, workdir, model, data.train.features,
        fd.MODEL_INPUTS + ("start_positions", "end_positions"),
        lambda out, b: squad_loss(out.start_logits, out.end_logits, b),
        lambda tr, p: evaluate_squad(tr, p, data.eval, config, version),
        config.best_metric or "f1", f"squad{version}")
    step, params = _restore_best(best, trainer)
    for split, folder in ((data.eval, "predictions"), (data.test, "test_predictions")):
        if split is None:
            continue
        predictions, null_odds, nbest = squad_answers(trainer, params, split, config, version)
        out = os.path.join(workdir, folder)
        if jax.process_index() == 0:
            paths = squad_data.write_predictions(out, predictions, null_odds or None, nbest)
            log(f"wrote {paths['predictions']} ({len(predictions)} answers, best step {step})")
        results[f"{folder}_file"] = os.path.join(out, "predictions.json")
    return _finish(workdir, results)


def train_and_evaluate(config, workdir: str) -> dict:
    """Runs the fine-tuning job named by `config.trainer`; returns the eval results."""
    trainer = config.get("trainer")
    if trainer == "finetune_glue":
        return train_glue(config, workdir)
    if trainer == "finetune_squad":
        return train_squad(config, workdir)
    raise ValueError(f"unknown fine-tuning trainer {trainer!r} "
                     "(expected finetune_glue or finetune_squad)")
