"""The pieces of a fine-tuning run that do not depend on the task's files: task losses, the
AdamW section, the initial params, and `Trainer` (mesh, sharded state, compiled train and
predict steps, the training batch of any global step, predictions gathered on every process).
`finetune.py` runs them through the shared loop."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mobilebert_jax import checkpoint, parallel
from mobilebert_jax.data import finetune_input
from mobilebert_jax.train import losses, optim
from mobilebert_jax.train import core

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


# -- the model and its steps ------------------------------------------------------------------------
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
        core.check_accumulation(self.batch_size, config.grad_accum_steps)
        if int(config.num_epochs) <= 0:
            raise ValueError(f"num_epochs must be positive, got {config.num_epochs}")
        self.features, self.train_keys = train_features, train_keys
        self.num_train = len(train_features["input_ids"])
        self.steps_per_epoch = finetune_input.num_batches(self.num_train, self.batch_size)
        self.total_steps = self.steps_per_epoch * int(config.num_epochs)
        tx, self.schedule = optim.make_optimizer(optimizer_config(config, self.total_steps))
        seed, seq_len = int(config.seed), train_features["input_ids"].shape[1]
        self.state, self.shardings = core.create_sharded_state(
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

        def loss_of(params, batch, rng):
            out = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                              batch["input_mask"], deterministic=False, rngs={"dropout": rng})
            return loss_fn(out, batch), {}

        train_step = core.make_train_step(
            loss_of, tx, int(self.config.grad_accum_steps),
            log_fields=lambda state: {"learning_rate": schedule(state.step)})

        def predict_step(params, batch):
            out = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                              batch["input_mask"], deterministic=True)
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
            self._orders = {epoch: finetune_input.epoch_order(self.num_train, epoch, int(self.config.seed))}
        batch = finetune_input.batch_at(self.features, self._orders[epoch], index, self.batch_size,
                            self.train_keys)
        return parallel.global_batch(parallel.process_rows(batch), self.mesh)

    def predict(self, params, features, keys=finetune_input.MODEL_INPUTS) -> dict[str, np.ndarray]:
        """Outputs of the deterministic model on all features, in order, as host arrays (the
        whole set on every process)."""
        n = len(features["input_ids"])
        outs: dict[str, list] = {}
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            for i in range(finetune_input.num_batches(n, self.eval_batch_size)):
                batch = finetune_input.batch_at(features, np.arange(n), i, self.eval_batch_size, keys)
                real = int(batch.pop("weights").sum())
                out = self.predict_step(params, parallel.global_batch(
                    parallel.process_rows(batch), self.mesh))
                for k, v in parallel.to_host_global(out).items():
                    outs.setdefault(k, []).append(v[:real])
        return {k: np.concatenate(v) for k, v in outs.items()}
