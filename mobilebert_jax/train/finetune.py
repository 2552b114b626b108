"""Fine-tuning on GLUE, SQuAD and your own files from any project checkpoint directory.

    python -m mobilebert_jax.main --config=configs/finetune_glue.py:mrpc --workdir=DIR \
        --config.init_checkpoint=CKPT_DIR --config.data_dir=GLUE_DIR
    python -m mobilebert_jax.main --config=configs/finetune_squad.py:1.1 --workdir=DIR \
        --config.init_checkpoint=CKPT_DIR
    python -m mobilebert_jax.main --config=configs/finetune_text.py --workdir=DIR \
        --config.init_checkpoint=CKPT_DIR --config.train_file=train.csv

The encoder (`bert/`) starts from `init_checkpoint` (a teacher, a distilled student or a
converted TF1/HF model, plain BERT included); the task head is new. What differs between tasks
is a task object (`finetune_tasks.py`). Recipe (docs/finetuning.md): AdamW (optionally without
bias correction, as the official code), 10% linear warm-up then linear decay, global-norm
clipping 1.0, dropout 0.1 on [CLS]; `grad_accum_steps` micro-batches per update.

Reads top to bottom in the order it runs: task, model config and data → workdir → mesh →
model, optimizer, sharded state and steps (`build_program`) → checkpoint restore (or the
encoder from `init_checkpoint`) → loop: an evaluation after every epoch (`metrics.jsonl`,
`eval_results.json`) and a best-checkpoint save by the task metric → the best params write the
task's outputs (GLUE submission files, SQuAD predictions). The workdir is itself a project
checkpoint directory (`model_config.json`, vocabulary, params).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mobilebert_jax import checkpoint, files, parallel
from mobilebert_jax.console import log
from mobilebert_jax.data import finetune_input
from mobilebert_jax.metrics.writers import MetricsWriter
from mobilebert_jax.models import qat
from mobilebert_jax.train import core, finetune_tasks, loop, optim

EVAL_RESULTS = "eval_results.json"
TRAIN_STATE = "train_state"  # the resumable state (params, optimizer, step, RNG, history)
TRAIN_STATES_KEPT = 2
INPUTS = finetune_input.MODEL_INPUTS
OUTPUTS = ("logits", "start_logits", "end_logits")  # model outputs brought back to the host


def optimizer_config(config, total_steps: int):
    """The AdamW section of `make_optimizer` for a run of `total_steps` updates."""
    warmup = int(round(float(config.warmup_proportion) * total_steps))
    return dict(name="adamw", learning_rate=float(config.learning_rate), warmup_steps=warmup,
                total_steps=total_steps, end_learning_rate=0.0, decay="linear",
                decay_after_warmup=bool(config.get("decay_after_warmup", False)),
                weight_decay=float(config.weight_decay), b1=0.9, b2=0.999,
                eps=float(config.get("adam_eps", 1e-6)),
                bias_correction=bool(config.bias_correction), clip_norm=float(config.clip_norm))


def make_model(config, task, model_config):
    """The task's model, with int8 fake quantization when `config.qat` (models/qat.py)."""
    model = task.model(model_config)
    return qat.quantization_aware(model) if config.get("qat", False) else model


def init_params(model, seed: int, seq_len: int):
    """The (boxed) initial params of a fine-tuning model: the encoder is replaced from the
    checkpoint afterwards, so this fixes the task head's starting weights."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return model.init(jax.random.PRNGKey(seed), ids, ids, ids)["params"]


def build_program(config, mesh, rules, task, model_config, seq_len: int,
                  total_steps: int) -> core.Program:
    """The fine-tuning run's state shardings, jitted train and predict steps and their abstract
    arguments, from the config and the task alone (no data, no workdir)."""
    model = make_model(config, task, model_config)
    tx, schedule = optim.make_optimizer(optimizer_config(config, total_steps))
    def initial_params():
        return init_params(model, int(config.seed), seq_len)

    def loss_fn(params, batch, rng):
        out = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                          batch["input_mask"], deterministic=False, rngs={"dropout": rng})
        return task.loss(out, batch), {}

    def predict_step(params, batch):
        out = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                          batch["input_mask"], deterministic=True)
        return {k: getattr(out, k) for k in OUTPUTS if hasattr(out, k)}

    abstract_state, shardings = core.state_shardings(initial_params, tx, mesh, rules)
    batch_sh, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    step = core.make_train_step(loss_fn, tx, int(config.grad_accum_steps),
                                log_fields=lambda state: {"learning_rate": schedule(state.step)},
                                grad_shardings=shardings.params)
    train_step = jax.jit(step, in_shardings=(shardings, batch_sh),
                         out_shardings=(shardings, repl), donate_argnums=0)
    predict = jax.jit(predict_step, in_shardings=(shardings.params, batch_sh))

    def batch(size, keys):
        return {k: jax.ShapeDtypeStruct((size, *shape), dtype, sharding=batch_sh)
                for k, (dtype, shape) in keys.items()}

    inputs = {k: (jnp.int32, (seq_len,)) for k in INPUTS}
    train_batch = batch(int(config.batch_size), dict(inputs, **task.targets(seq_len),
                                                     weights=(jnp.float32, ())))
    eval_batch = batch(int(config.eval_batch_size), inputs)
    return core.Program(shardings, abstract_state,
                        {"train step": (train_step, (abstract_state, train_batch)),
                         "predict step": (predict, (abstract_state.params, eval_batch))},
                        initial_params, tx)


def load_encoder(state, shardings, directory: str):
    """`state` with the `bert/` params of a project checkpoint (checked against its model
    config, which the fine-tuning model is built from) in place of the fresh encoder."""
    _, pretrained = checkpoint.load_pretrained(directory)
    want = jax.tree_util.tree_flatten_with_path(state.params["bert"])[0]
    have = dict(jax.tree_util.tree_flatten_with_path(pretrained["bert"])[0])
    bert = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state.params["bert"]),
                                        [np.asarray(have[p], dtype=leaf.dtype) for p, leaf in want])
    bert = jax.device_put(bert, shardings.params["bert"])
    return state.replace(params=dict(state.params, bert=bert))


def make_predict(compiled_predict, mesh, rules, eval_batch_size: int):
    """`predict(params, features) -> {output: [N, ...]}`: the deterministic model over all rows,
    in order, as host arrays (the whole set on every process)."""
    def predict(params, features):
        n = len(features["input_ids"])
        outs: dict[str, list] = {}
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            for i in range(finetune_input.num_batches(n, eval_batch_size)):
                batch = finetune_input.batch_at(features, np.arange(n), i, eval_batch_size, INPUTS)
                real = int(batch.pop("weights").sum())
                out = compiled_predict(params, parallel.global_batch(
                    parallel.process_rows(batch), mesh))
                for k, v in parallel.to_host_global(out).items():
                    outs.setdefault(k, []).append(v[:real])
        return {k: np.concatenate(v) for k, v in outs.items()}
    return predict


def train_and_evaluate(config, workdir: str) -> dict:
    """Runs (or resumes) fine-tuning; returns the evaluation results."""
    # -- task, model config, data: before anything is written ----------------------------------
    task = finetune_tasks.task_for(config)
    if not config.init_checkpoint:
        raise ValueError("config.init_checkpoint is required (a project checkpoint directory)")
    model_config = checkpoint.load_config(config.init_checkpoint)
    tokenizer = finetune_input.resolve_tokenizer(config, model_config.vocab_size)
    features = task.load(tokenizer)
    num_train, seq_len = features["input_ids"].shape

    # -- workdir ---------------------------------------------------------------------------------
    files.makedirs(workdir)
    core.check_workdir_model(workdir, model_config, config.trainer)
    if jax.process_index() == 0:
        checkpoint.store_tokenizer(workdir, tokenizer.path)

    # -- mesh, batch sizes, schedule -------------------------------------------------------------
    mesh = parallel.make_mesh(config.mesh.shape)
    rules = parallel.rules_from_config(config.mesh.rules)
    batch_size, eval_batch_size = int(config.batch_size), int(config.eval_batch_size)
    for size in (batch_size, eval_batch_size):
        if size <= 0:
            raise ValueError(f"batch sizes must be positive, got {size}")
        parallel.check_batch_divisible(size, mesh)
    core.check_accumulation(batch_size, config.grad_accum_steps)
    if int(config.num_epochs) <= 0:
        raise ValueError(f"num_epochs must be positive, got {config.num_epochs}")
    steps_per_epoch = finetune_input.num_batches(num_train, batch_size)
    total_steps = steps_per_epoch * int(config.num_epochs)

    # -- model, optimizer, sharded state, step functions -----------------------------------------
    program = build_program(config, mesh, rules, task, model_config, seq_len, total_steps)
    state, shardings = core.create_sharded_state(program, int(config.seed), mesh, rules)

    # -- checkpoints: the resumable state, and the best evaluated params -------------------------
    ckpt = checkpoint.TrainCheckpointer(workdir, TRAIN_STATES_KEPT, subdir=TRAIN_STATE)
    best = checkpoint.BestCheckpointer(workdir, task.best_metric, config.keep_checkpoints)
    state, host_state = core.restore_state(ckpt, state, shardings)
    if host_state is None:
        state = load_encoder(state, shardings, config.init_checkpoint)
        history = []
    else:
        history = host_state["history"]
        log(f"resumed from step {int(state.step)} (epoch {int(state.step) // steps_per_epoch + 1})")
    core.record_run(workdir, config, model_config)

    def best_epoch():
        """The best evaluated epoch so far, ties to the later one (as the best checkpointer
        keeps them); None before the first evaluation."""
        return max(history, key=lambda h: (h["metrics"][task.best_metric], h["step"]),
                   default=None)

    def write_card(best_step):
        """The task card: what the workdir's model does and which step predicts."""
        if jax.process_index() == 0:
            files.write_json(files.join(workdir, checkpoint.TASK_CARD), dict(
                task.card(), max_seq_length=seq_len, best_step=best_step,
                lower_case=bool(config.get("lower_case", True)),
                qat=bool(config.get("qat", False))))

    write_card((best_epoch() or {}).get("step"))
    log(f"{task.name}: {num_train} training features, {steps_per_epoch} steps/epoch x "
        f"{config.num_epochs} epochs, batch {batch_size}, seq {seq_len}, "
        f"lr {config.learning_rate}")

    # -- AOT compilation -------------------------------------------------------------------------
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled_train, compiled_predict = (core.compile_step(fn, args, name)
                                            for name, (fn, args) in program.steps.items())
    predict = make_predict(compiled_predict, mesh, rules, eval_batch_size)

    # -- loop: an evaluation and a best-checkpoint save after every epoch ------------------------
    train_keys = INPUTS + tuple(task.targets(seq_len))
    orders: dict[int, np.ndarray] = {}
    epoch_losses, results = [], {}
    clock = {"start": time.perf_counter(), "epoch": time.perf_counter()}

    def train_step(state, step):
        """Global batch `step`: epoch `step // steps_per_epoch` in its seeded order, built from
        this process's rows only."""
        epoch, index = divmod(int(step), steps_per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = finetune_input.epoch_order(num_train, epoch, int(config.seed))
        batch = finetune_input.batch_at(features, orders[epoch], index, batch_size, train_keys)
        state, metrics = compiled_train(state, parallel.global_batch(
            parallel.process_rows(batch), mesh))
        epoch_losses.append(metrics["loss"])
        return state, metrics

    def evaluate_epoch(state, step):
        t_train = time.perf_counter() - clock["epoch"]
        metrics = task.evaluate(predict, state.params)
        if task.best_metric not in metrics:
            raise ValueError(f"best_metric {task.best_metric!r} is not among the eval metrics "
                             f"({', '.join(metrics)})")
        train_loss = (float(np.mean(core.to_host(jnp.stack(epoch_losses))))
                      if epoch_losses else float("nan"))
        epoch_losses.clear()
        history.append({"epoch": step // steps_per_epoch, "step": step, "train_loss": train_loss,
                        "train_seconds": t_train, "metrics": metrics})
        best.save(step, state.params, metrics)
        top = best_epoch()
        results.update({"task": task.name, "epoch": step // steps_per_epoch, "step": step,
                        "metrics": metrics, "best_metric": task.best_metric,
                        "best": {k: top[k] for k in ("epoch", "step", "metrics")},
                        "history": history, "finished": False,
                        "elapsed_seconds": time.perf_counter() - clock["start"]})
        if jax.process_index() == 0:
            files.write_json(files.join(workdir, EVAL_RESULTS), results)
        write_card(top["step"])
        clock["epoch"] = time.perf_counter()
        return metrics

    hooks = loop.Hooks(train_step=train_step, evaluate=evaluate_epoch,
                       host_state=lambda: {"history": history}, checkpoint_after_eval=True)
    cadence = loop.Cadence(total_steps, int(config.log_every), steps_per_epoch,
                           int(config.checkpoint_every))
    state, _ = loop.run(state, hooks, cadence, ckpt, MetricsWriter(workdir),
                        tokens_per_step=batch_size * seq_len)
    if not results:  # the run had already finished: its results stand
        results = files.read_json(files.join(workdir, EVAL_RESULTS), "evaluation results")

    # -- the best params: the task's outputs -----------------------------------------------------
    step, params = best.restore_best(core.abstract_like(state.params, shardings.params))
    best.close()
    write_card(step)
    results.update(task.write_outputs(predict, params, workdir, step))
    results["finished"] = True
    if jax.process_index() == 0:
        files.write_json(files.join(workdir, EVAL_RESULTS), results)
    return results
