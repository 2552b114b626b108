"""Quantization fidelity: the task-metric drop of TFLite float / dynamic / int8 exports, and the
activation ranges that decide whether int8 survives.

Sub-commands:

* `finetune` - a short GLUE classification fine-tune of a project checkpoint by the project's
  fine-tuning trainer (`finetune_config`), whose workdir is a checkpoint directory with a
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
from flax.core import meta

from benchmarks.common import write_json
from benchmarks.transfer import load_config
from mobilebert_jax import checkpoint, cli
from mobilebert_jax.data import glue
from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.export import calibration, runtime, tflite
from mobilebert_jax.models import MobileBertModel, get_config


def glue_features(task_dir: str, split: str, tokenizer, seq_len: int,
                  limit: int | None = None) -> dict[str, np.ndarray]:
    task = glue.get_task(os.path.basename(os.path.normpath(task_dir)))
    examples = glue.load_glue(task, task_dir, split)
    if limit:
        examples = examples[:limit]
    return glue.featurize_glue(examples, tokenizer, seq_len, task)


# -- fine-tuning --------------------------------------------------------------------------------
def finetune_config(checkpoint_dir: str, task_dir: str, steps: int, batch_size: int,
                    learning_rate: float, seq_len: int, seed: int):
    """`configs/finetune_glue.py` for the task of `task_dir` at these settings. About `steps`
    updates: one epoch over the first `steps * batch_size` training examples, or whole epochs
    over all of them when there are fewer; warm-up over the first 10% then linear decay, AdamW
    with bias correction, clipping 1.0, dropout 0.1."""
    task = glue.get_task(os.path.basename(os.path.normpath(task_dir)))
    num_train = len(glue.load_glue(task, task_dir, "train"))
    wanted = steps * batch_size
    config = load_config("finetune_glue", task.name)
    config.update(init_checkpoint=checkpoint_dir, data_dir=task_dir, batch_size=batch_size,
                  learning_rate=learning_rate, max_seq_length=seq_len, seed=seed,
                  train_subset=wanted if wanted < num_train else 0,
                  num_epochs=max(1, round(wanted / num_train)), decay_after_warmup=True,
                  bias_correction=True, predict_test=False, log_every=25)
    if not checkpoint.tokenizer_file(checkpoint_dir):
        config.tokenizer = "bert-base-uncased"
    return config


def finetune(checkpoint_dir: str, task_dir: str, out_dir: str, steps: int = 600,
             batch_size: int = 32, learning_rate: float = 1e-4, seq_len: int = 64,
             seed: int = 0) -> str:
    """Fine-tunes the encoder of `checkpoint_dir` with a fresh classifier by the project's
    fine-tuning trainer into `out_dir` (a project checkpoint directory holding the best dev
    epoch's params and the tokenizer; a run already there resumes or stands)."""
    from mobilebert_jax import config_checks
    from mobilebert_jax.train import finetune as finetune_trainer

    config = finetune_config(checkpoint_dir, task_dir, steps, batch_size, learning_rate,
                             seq_len, seed)
    config_checks.check_config(config)
    results = finetune_trainer.train_and_evaluate(config, out_dir)
    best = results["best"]
    print(f"best dev epoch {best['epoch']} (step {best['step']}): {best['metrics']}", flush=True)
    return out_dir


# -- accuracy drop --------------------------------------------------------------------------------
def jax_logits(config, params, feats: dict, batch_size: int = 64) -> np.ndarray:
    params = tflite.inference_params(params)
    fn = jax.jit(tflite.inference_fn(config, params))
    out = []
    for i in range(0, len(feats["input_ids"]), batch_size):
        sl = {k: feats[k][i:i + batch_size] for k in runtime.INPUT_NAMES}
        out.append(np.asarray(fn(params, sl["input_ids"], sl["input_mask"],
                                 sl["segment_ids"])["logits"]))
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
    calib = calibration.representative_inputs(tokenizer, seq_len, num_calibration, task_dir)
    runs = [(m, {}) for m in modes] + [(name, kw) for name, kw in (variants or {}).items()]
    for name, kwargs in runs:
        quantize = name if name in tflite.QUANTIZE_MODES else "int8"
        start = time.time()
        data = tflite.to_tflite(config, params, seq_len, quantize,
                                calib if quantize == "int8" else None, **kwargs)
        logits = runtime.TFLiteModel(data, num_threads=threads).predict(dev)["logits"]
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
    _, state = model.apply({"params": params}, feats["input_ids"], feats["segment_ids"],
                           feats["input_mask"], capture_intermediates=True,
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
    flags.DEFINE_string("out", None, "finetune: the trainer's workdir, the output checkpoint "
                        "directory (a run there resumes).")
    flags.DEFINE_integer("steps", 600, "finetune: optimizer steps (whole epochs past one).")
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
                                        "float_ops": list(tflite.INT8_FLOAT_OPS)}})
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
            feats = calibration.representative_inputs(load_tokenizer("bert-base-uncased"),
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
