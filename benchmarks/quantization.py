"""Quantization fidelity: the task-metric drop of TFLite float / dynamic / int8 exports, and the
activation ranges that decide whether int8 survives.

Sub-commands:

* `finetune` - a short GLUE classification fine-tune (optax AdamW, warm-up + linear decay,
  clipping 1.0, dropout) of a project checkpoint, saved as a checkpoint directory with a
  `classifier` head and the tokenizer: a fine-tuned model to measure export drops on.
* `drop` - accuracy of the JAX model and of each TFLite export on a GLUE dev set, and the drop
  of each export in accuracy points.
* `ranges` - per-tensor max |activation| of a model on real text (norm outputs, attention
  scores, FFN outputs), the quantity full-int8 calibration has to cover with 256 levels.

Example:
    python -m benchmarks.quantization finetune --checkpoint=/tmp/minilm \
        --task_dir=GLUE_DIR/SST-2 --out=/tmp/sst2_minilm
    python -m benchmarks.quantization drop --checkpoint=/tmp/sst2_minilm \
        --task_dir=GLUE_DIR/SST-2
    python -m benchmarks.quantization ranges --preset=mobilebert
"""
from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta

from mobilebert_jax import checkpoint, cli, export
from benchmarks.common import write_json
from mobilebert_jax.data import glue
from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.models import MobileBertForSequenceClassification, MobileBertModel, get_config


def glue_features(task_dir: str, split: str, tokenizer, seq_len: int,
                  limit: int | None = None) -> dict[str, np.ndarray]:
    task = glue.get_task(os.path.basename(os.path.normpath(task_dir)))
    examples = glue.load_glue(task, task_dir, split)
    if limit:
        examples = examples[:limit]
    return glue.featurize_glue(examples, tokenizer, seq_len, task)


# -- fine-tuning --------------------------------------------------------------------------------
def finetune(checkpoint_dir: str, task_dir: str, out_dir: str, steps: int = 600,
             batch_size: int = 32, learning_rate: float = 1e-4, seq_len: int = 64,
             seed: int = 0) -> str:
    """Fine-tunes the encoder of `checkpoint_dir` with a fresh classifier; saves to `out_dir`."""
    config, params = checkpoint.load_pretrained(checkpoint_dir)
    tokenizer = load_tokenizer(checkpoint.tokenizer_file(checkpoint_dir) or "bert-base-uncased")
    train = glue_features(task_dir, "train", tokenizer, seq_len)
    num_labels = int(train["labels"].max()) + 1
    model = MobileBertForSequenceClassification(config, num_labels)
    rng = jax.random.PRNGKey(seed)
    init = meta.unbox(model.init(rng, jnp.ones((1, seq_len), jnp.int32))["params"])
    params = {"bert": meta.unbox(params["bert"]), "classifier": init["classifier"]}
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, max(1, steps // 10)),
         optax.linear_schedule(learning_rate, 0.0, steps - steps // 10)], [max(1, steps // 10)])
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, batch["input_ids"], batch["token_type_ids"],
                                 batch["attention_mask"], deterministic=False,
                                 rngs={"dropout": key}).logits
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    order = np.random.default_rng(seed).permutation(len(train["labels"]))
    start = time.time()
    for i in range(steps):
        idx = order[(np.arange(batch_size) + i * batch_size) % len(order)]
        batch = {k: jnp.asarray(v[idx]) for k, v in train.items()}
        params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(rng, i))
        if i % 25 == 0 or i == steps - 1:
            print(f"step {i} loss {float(loss):.4f} ({time.time() - start:.0f}s)", flush=True)
    checkpoint.save_pretrained(out_dir, config, params,
                               tokenizer_path=checkpoint.tokenizer_file(checkpoint_dir))
    return out_dir


# -- accuracy drop --------------------------------------------------------------------------------
def jax_logits(config, params, feats: dict, batch_size: int = 64) -> np.ndarray:
    params = export.inference_params(params)
    fn = jax.jit(export.inference_fn(config, params))
    out = []
    for i in range(0, len(feats["input_ids"]), batch_size):
        sl = {k: feats[k][i:i + batch_size] for k in export.INPUT_NAMES}
        out.append(np.asarray(fn(params, sl["input_ids"], sl["attention_mask"],
                                 sl["token_type_ids"])["logits"]))
    return np.concatenate(out)


def accuracy_drop(checkpoint_dir: str, task_dir: str, seq_len: int = 64,
                  modes=("none", "dynamic", "int8"), num_calibration: int = 100,
                  variants: dict | None = None, threads: int = 2) -> list[dict]:
    """Dev accuracy of JAX and of each TFLite export; `variants` adds named int8 variants as
    {name: dict(float_ops=..., export_mask_mode=...)}."""
    config, params = checkpoint.load_pretrained(checkpoint_dir)
    tokenizer = load_tokenizer(checkpoint.tokenizer_file(checkpoint_dir) or "bert-base-uncased")
    dev = glue_features(task_dir, "dev", tokenizer, seq_len)
    labels = dev["labels"]
    ref = jax_logits(config, params, dev)
    rows = [{"model": "jax fp32", "accuracy": float((ref.argmax(-1) == labels).mean()),
             "max_abs_logit_diff": 0.0, "bytes": None}]
    calib = export.representative_inputs(tokenizer, seq_len, num_calibration, task_dir)
    runs = [(m, {}) for m in modes] + [(name, kw) for name, kw in (variants or {}).items()]
    for name, kwargs in runs:
        quantize = name if name in export.QUANTIZE_MODES else "int8"
        start = time.time()
        data = export.to_tflite(config, params, seq_len, quantize,
                                calib if quantize == "int8" else None, **kwargs)
        logits = export.TFLiteModel(data, num_threads=threads).predict(dev)["logits"]
        acc = float((logits.argmax(-1) == labels).mean())
        rows.append({"model": f"tflite {name}", "accuracy": acc, "bytes": len(data),
                     "max_abs_logit_diff": float(np.abs(logits - ref).max()),
                     "seconds": round(time.time() - start, 1)})
        print(rows[-1], flush=True)
    return rows


# -- activation ranges -----------------------------------------------------------------------------
def activation_ranges(config, params, feats: dict) -> dict[str, float]:
    """Max |value| of each norm output, FFN/attention dense output and score tensor, grouped by
    the module path with the layer index dropped (max over layers)."""
    model = MobileBertModel(config)
    _, state = model.apply({"params": params}, feats["input_ids"], feats["token_type_ids"],
                           feats["attention_mask"], capture_intermediates=True,
                           mutable=["intermediates"])
    flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    ranges: dict[str, float] = {}
    for path, value in flat:
        names = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        key = "/".join("layer_*" if n.startswith("layer_") else n for n in names
                       if n not in ("__call__", "0"))
        if not hasattr(value, "shape") or value.dtype not in (jnp.float32,):
            continue
        ranges[key] = max(ranges.get(key, 0.0), float(jnp.max(jnp.abs(value))))
    return ranges


def main(argv=None) -> int:
    from absl import app, flags

    flags.DEFINE_enum("command", None, ["finetune", "drop", "ranges"], "What to run.")
    flags.DEFINE_string("checkpoint", None, "Project checkpoint directory.")
    flags.DEFINE_string("task_dir", None, "finetune/drop: the GLUE SST-2 task directory.")
    flags.DEFINE_string("out", None, "finetune: output checkpoint directory.")
    flags.DEFINE_integer("steps", 600, "finetune: optimizer steps.")
    flags.DEFINE_integer("seq_len", 64, "Sequence length.")
    flags.DEFINE_integer("batch_size", 32, "finetune: batch size.")
    flags.DEFINE_string("preset", "mobilebert", "ranges without --checkpoint: random preset.")
    flags.DEFINE_string("json", None, "drop, ranges: also write the results to this JSON file.")
    FLAGS = flags.FLAGS
    argv = list(argv or sys.argv)
    if len(argv) > 1 and not argv[1].startswith("-"):
        argv = [argv[0], f"--command={argv[1]}", *argv[2:]]
    app.define_help_flags()  # --help prints the flags
    try:
        FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        if FLAGS.command == "finetune":
            if not FLAGS.checkpoint or not FLAGS.out or not FLAGS.task_dir:
                raise ValueError("finetune needs --checkpoint, --task_dir (GLUE SST-2) and --out")
            out = finetune(FLAGS.checkpoint, FLAGS.task_dir, FLAGS.out, FLAGS.steps,
                           FLAGS.batch_size, seq_len=FLAGS.seq_len)
            print(f"wrote {out}")
        elif FLAGS.command == "drop":
            if not FLAGS.checkpoint or not FLAGS.task_dir:
                raise ValueError("drop needs --checkpoint and --task_dir (GLUE SST-2)")
            rows = accuracy_drop(FLAGS.checkpoint, FLAGS.task_dir, FLAGS.seq_len,
                                 variants={
                "int8 fill-mask": {"export_mask_mode": "fill"},
                "int8 fill, attention float": {"export_mask_mode": "fill",
                                               "float_ops": ["BATCH_MATMUL", "SOFTMAX"]},
                "int8 export default": {"export_mask_mode": "fill",
                                        "float_ops": list(export.INT8_FLOAT_OPS)}})
            base = rows[0]["accuracy"]
            for r in rows:
                print(f"{r['model']:<28} acc {100 * r['accuracy']:6.2f}  drop "
                      f"{100 * (base - r['accuracy']):5.2f} pt  max|Δlogit| "
                      f"{r['max_abs_logit_diff']:.2e}")
            write_json(FLAGS.json, {"checkpoint": FLAGS.checkpoint, "task_dir": FLAGS.task_dir,
                                    "seq_len": FLAGS.seq_len, "rows": rows})
        elif FLAGS.command == "ranges":
            if FLAGS.checkpoint:
                config, params = checkpoint.load_pretrained(FLAGS.checkpoint)
                params = meta.unbox(params["bert"])
            else:
                config = get_config(FLAGS.preset)
                params = meta.unbox(MobileBertModel(config).init(
                    jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"])
            feats = export.representative_inputs(load_tokenizer("bert-base-uncased"),
                                                 FLAGS.seq_len, 8)
            ranges = activation_ranges(config, params, feats)
            for key, value in sorted(ranges.items()):
                print(f"{value:12.2f}  {key}")
            write_json(FLAGS.json, {"max_abs_activation": ranges})
        else:
            raise ValueError("give a command: finetune, drop or ranges")
    except cli.EXPECTED as e:
        return cli.fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
