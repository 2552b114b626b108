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
`eval_results.json`, and the params are saved in an best-checkpoint manager that keeps the best
checkpoints by the task metric (`best_metric`). After training the best params predict the
test sets: GLUE submission files in `WORKDIR/submission/`, SQuAD `predictions.json` for the
eval set in `WORKDIR/predictions/` (and for `predict_file` in `WORKDIR/test_predictions/`).
The workdir is itself a project checkpoint directory (`model_config.json`, vocabulary, params).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mobilebert_jax import checkpoint, files
from mobilebert_jax.console import log
from mobilebert_jax.data import finetune_input
from mobilebert_jax.data import glue as glue_data
from mobilebert_jax.data import squad as squad_data
from mobilebert_jax.metrics.glue import glue_metrics
from mobilebert_jax.metrics.squad import squad_scores
from mobilebert_jax.metrics.writers import MetricsWriter
from mobilebert_jax.models import qat
from mobilebert_jax.models.heads import (
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
)
from mobilebert_jax.train import finetune_steps as fs
from mobilebert_jax.train import loop
from mobilebert_jax.train import core

EVAL_RESULTS = "eval_results.json"
TRAIN_STATE = "train_state"  # the resumable state (params, optimizer, step, RNG, history)
TRAIN_STATES_KEPT = 2


def _prepare_workdir(config, workdir: str, model_config, tokenizer) -> None:
    files.makedirs(workdir)
    core.check_workdir_model(workdir, model_config)
    if jax.process_index() == 0:
        checkpoint.store_tokenizer(workdir, tokenizer.path)


def _maybe_qat(config, model):
    """The model with int8 fake quantization when `config.qat` (models/qat.py)."""
    if not config.get("qat", False):
        return model
    log("quantization-aware training: int8 weights and activations in every dense layer")
    return qat.quantization_aware(model)


def _run(config, workdir: str, model, train_features, train_keys, loss_fn, evaluate,
         best_metric: str, task_name: str) -> tuple[fs.Trainer, object, dict]:
    """Trains (or resumes) with an evaluation and a best-checkpoint save after every epoch;
    returns (trainer, best checkpointer, results)."""
    trainer = fs.Trainer(config, model, train_features, train_keys, loss_fn)
    spe = trainer.steps_per_epoch
    ckpt = checkpoint.TrainCheckpointer(workdir, TRAIN_STATES_KEPT, subdir=TRAIN_STATE)
    best = checkpoint.BestCheckpointer(workdir, best_metric, config.keep_checkpoints)
    trainer.state, host_state = core.restore_state(ckpt, trainer.state, trainer.shardings)
    if host_state is None:
        trainer.load_encoder(config.init_checkpoint)
        history = []
    else:
        history = host_state["history"]
        log(f"resumed from step {int(trainer.state.step)} (epoch "
            f"{int(trainer.state.step) // spe + 1})")
    core.record_run(workdir, config, model.config)
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
        train_loss = (float(np.mean(core.to_host(jnp.stack(epoch_losses))))
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
            files.write_json(files.join(workdir, EVAL_RESULTS), results)
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
        results = files.read_json(files.join(workdir, EVAL_RESULTS), "evaluation results")
    return trainer, best, results


def _restore_best(best, trainer: fs.Trainer):
    """(step, params) of the best evaluated epoch, in the trainer's shardings."""
    target = core.abstract_like(trainer.state.params, trainer.shardings.params)
    step, params = best.restore_best(target)
    best.close()
    return step, params


def _finish(workdir: str, results: dict) -> dict:
    results["finished"] = True
    if jax.process_index() == 0:
        files.write_json(files.join(workdir, EVAL_RESULTS), results)
    return results


# -- GLUE ----------------------------------------------------------------------------------------
def glue_predictions(task: glue_data.GlueTask, logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if task.is_regression else logits.argmax(-1)


def evaluate_glue(trainer: fs.Trainer, params, task, dev_splits) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split in dev_splits:
        logits = trainer.predict(params, split.features)["logits"]
        labels = split.features["labels"]
        metrics.update(glue_metrics(task, glue_predictions(task, logits), labels,
                                    split=split.name if len(dev_splits) > 1 else None))
    return metrics


def train_glue(config, workdir: str) -> dict:
    task = finetune_input.glue_task(config.task)
    if not config.init_checkpoint:
        raise ValueError("config.init_checkpoint is required (a project checkpoint directory)")
    model_config = checkpoint.load_config(config.init_checkpoint)
    tokenizer = finetune_input.resolve_tokenizer(config, model_config.vocab_size)
    data = finetune_input.load_glue_data(config, tokenizer)
    _prepare_workdir(config, workdir, model_config, tokenizer)
    model = _maybe_qat(config, MobileBertForSequenceClassification(
        model_config, task.num_labels, float(config.classifier_dropout)))
    regression = task.is_regression
    best_metric = config.best_metric or (
        "accuracy_matched" if task.name == "mnli" else task.metrics[0])
    trainer, best, results = _run(
        config, workdir, model, data.train.features, finetune_input.MODEL_INPUTS + ("labels",),
        lambda out, b: fs.glue_loss(out.logits, b, regression),
        lambda tr, p: evaluate_glue(tr, p, task, data.dev), best_metric, task.name)
    step, params = _restore_best(best, trainer)
    written = []
    for split in data.test:
        predictions = glue_predictions(task, trainer.predict(params, split.features)["logits"])
        folder = files.join(workdir, "submission")
        path = files.join(folder, task.submission_file(split.name))
        if jax.process_index() == 0:
            glue_data.write_glue_submission(task, predictions, folder, split=split.name,
                                            indices=[ex.guid for ex in split.examples])
            log(f"wrote {path} ({len(split.examples)} test predictions, best step {step})")
        written.append(str(path))
    results["submission_files"] = written
    return _finish(workdir, results)


# -- SQuAD ---------------------------------------------------------------------------------------
def squad_answers(trainer: fs.Trainer, params, split, config, version: str):
    out = trainer.predict(params, split.features)
    return squad_data.postprocess_squad(
        split.examples, split.features, out["start_logits"], out["end_logits"],
        n_best_size=int(config.n_best_size), max_answer_length=int(config.max_answer_length),
        version=version, null_score_diff_threshold=float(config.null_score_diff_threshold))


def evaluate_squad(trainer: fs.Trainer, params, split, config, version: str) -> dict[str, float]:
    predictions, null_odds, _ = squad_answers(trainer, params, split, config, version)
    return squad_scores(split.squad_json, predictions, null_odds if version == "2.0" else None,
                        version=version, warn_missing=False)


def train_squad(config, workdir: str) -> dict:
    version = finetune_input.squad_version(config.version)
    if not config.init_checkpoint:
        raise ValueError("config.init_checkpoint is required (a project checkpoint directory)")
    model_config = checkpoint.load_config(config.init_checkpoint)
    tokenizer = finetune_input.resolve_tokenizer(config, model_config.vocab_size)
    data = finetune_input.load_squad_data(config, tokenizer)
    _prepare_workdir(config, workdir, model_config, tokenizer)
    model = _maybe_qat(config, MobileBertForQuestionAnswering(model_config))
    trainer, best, results = _run(
        config, workdir, model, data.train.features,
        finetune_input.MODEL_INPUTS + ("start_positions", "end_positions"),
        lambda out, b: fs.squad_loss(out.start_logits, out.end_logits, b),
        lambda tr, p: evaluate_squad(tr, p, data.eval, config, version),
        config.best_metric or "f1", f"squad{version}")
    step, params = _restore_best(best, trainer)
    for split, folder in ((data.eval, "predictions"), (data.test, "test_predictions")):
        if split is None:
            continue
        predictions, null_odds, nbest = squad_answers(trainer, params, split, config, version)
        out = files.join(workdir, folder)
        if jax.process_index() == 0:
            paths = squad_data.write_predictions(out, predictions, null_odds or None, nbest)
            log(f"wrote {paths['predictions']} ({len(predictions)} answers, best step {step})")
        results[f"{folder}_file"] = files.join(out, "predictions.json")
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
