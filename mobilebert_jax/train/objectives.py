"""The MLM + NSP pretraining objective, shared by teacher pretraining and the distilled
student's evaluation: the forward pass on a pretraining batch, its losses and metrics, the
evaluation step and the summary of its sums."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mobilebert_jax.train import losses


def forward(model, params, batch, deterministic: bool, rng=None):
    return model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                       batch["input_mask"], deterministic=deterministic,
                       masked_lm_positions=batch["masked_lm_positions"],
                       rngs=None if deterministic else {"dropout": rng})


def pretraining_losses(out, batch) -> tuple[jax.Array, dict]:
    mlm = losses.mlm_loss(out.mlm_logits, batch["masked_lm_ids"], batch["masked_lm_weights"])
    nsp = losses.nsp_loss(out.nsp_logits, batch["next_sentence_labels"])
    metrics = {
        "mlm_loss": mlm, "nsp_loss": nsp,
        "mlm_accuracy": losses.mlm_accuracy(out.mlm_logits, batch["masked_lm_ids"],
                                            batch["masked_lm_weights"]),
        "nsp_accuracy": losses.nsp_accuracy(out.nsp_logits, batch["next_sentence_labels"]),
    }
    return mlm + nsp, metrics


def make_loss_fn(model):
    """`loss_fn(params, batch, rng) -> (loss, metrics)` with dropout, for `core.make_train_step`."""
    def loss_fn(params, batch, rng):
        return pretraining_losses(forward(model, params, batch, deterministic=False, rng=rng),
                                  batch)
    return loss_fn


def make_eval_step(model):
    def eval_step(params, batch):
        out = forward(model, params, batch, deterministic=True)
        loss, m = pretraining_losses(out, batch)
        w = batch["masked_lm_weights"]
        return {"loss": loss, "mlm_loss": m["mlm_loss"], "nsp_loss": m["nsp_loss"],
                "mlm_correct": m["mlm_accuracy"] * jnp.sum(w), "mlm_count": jnp.sum(w),
                "nsp_correct": m["nsp_accuracy"] * w.shape[0], "nsp_count": w.shape[0] * 1.0}
    return eval_step


def summarize_eval(sums: dict, n: int) -> dict[str, float]:
    """Eval metrics from `core.evaluate`'s sums of `make_eval_step` outputs over `n` batches."""
    if not n:
        return {}
    return {"loss": sums["loss"] / n, "mlm_loss": sums["mlm_loss"] / n,
            "nsp_loss": sums["nsp_loss"] / n,
            "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0),
            "nsp_accuracy": sums["nsp_correct"] / max(sums["nsp_count"], 1.0), "batches": n}
