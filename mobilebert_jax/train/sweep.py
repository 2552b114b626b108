"""A fine-tuning sweep: every (learning rate, epochs, seed) of the given lists, one table.

    python -m mobilebert_jax.train.sweep --config=configs/finetune_glue.py:mrpc --workdir=DIR \
        --learning_rates=1e-5,3e-5,5e-5 --num_epochs=2,3 --seeds=0,1,2 \
        [--config.init_checkpoint=CKPT_DIR --config.x=y ...]

Each run trains in `DIR/lr<LR>_ep<E>_seed<S>/` through `finetune.train_and_evaluate`; a run
whose `eval_results.json` says finished is not repeated and an interrupted one resumes. The
runs' best-epoch dev metrics are aggregated per (learning rate, epochs) as mean ± std over the
seeds (GLUE metrics in points, SQuAD as scored), printed and written to `DIR/sweep_results.md`
and `DIR/sweep_results.json`; the best setting by the task metric is named.
"""
from __future__ import annotations

import itertools
import json
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mobilebert_jax import cli, files

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a program, so that importing this
    module beside `mobilebert_jax.main` defines no second `--config`)."""
    config_flags.DEFINE_config_file("config", None, "Fine-tuning config file.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory of the sweep (one subdirectory per run).")
    flags.DEFINE_list("learning_rates", [], "Learning rates (default: the config's).")
    flags.DEFINE_list("num_epochs", [], "Epoch counts (default: the config's).")
    flags.DEFINE_list("seeds", [], "Seeds (default: the config's).")
    flags.mark_flags_as_required(["config", "workdir"])


def _numbers(values, kind, what: str, default, positive: bool = True) -> list:
    if not values:
        return [default]
    try:
        out = [kind(v) for v in values]
    except ValueError:
        raise ValueError(f"--{what} must be a comma-separated list of numbers, got "
                         f"{','.join(values)}") from None
    if positive and any(v <= 0 for v in out):
        raise ValueError(f"--{what} must be positive")
    return out


def run_name(lr: float, epochs: int, seed: int) -> str:
    return f"lr{lr:g}_ep{epochs}_seed{seed}"


def summarize(runs: list[dict], best_metric: str, scale: float) -> list[dict]:
    """Rows per (learning rate, epochs): mean and std over seeds of each best-epoch metric."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["learning_rate"], run["num_epochs"]), []).append(run)
    rows = []
    for (lr, epochs), group in sorted(groups.items()):
        row = {"learning_rate": lr, "num_epochs": epochs,
               "seeds": [r["seed"] for r in group], "metrics": {}}
        for name in group[0]["metrics"]:
            values = np.array([r["metrics"][name] for r in group], dtype=np.float64) * scale
            row["metrics"][name] = {"mean": float(values.mean()), "std": float(values.std()),
                                    "values": values.tolist()}
        rows.append(row)
    best = max(rows, key=lambda r: r["metrics"][best_metric]["mean"])
    for row in rows:
        row["best"] = row is best
    return rows


def markdown_table(task: str, rows: list[dict]) -> str:
    names = list(rows[0]["metrics"])
    lines = [f"**{task}** (best-epoch dev metrics, mean ± std over seeds)", "",
             "| learning rate | epochs | seeds | " + " | ".join(names) + " |",
             "|---:|---:|---:|" + "---:|" * len(names)]
    for row in rows:
        cells = [f"{row['metrics'][n]['mean']:.2f} ± {row['metrics'][n]['std']:.2f}"
                 for n in names]
        mark = " (best)" if row["best"] else ""
        lines.append(f"| {row['learning_rate']:g}{mark} | {row['num_epochs']} | "
                     f"{len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_sweep(config, workdir: str, learning_rates, num_epochs, seeds) -> list[dict]:
    """Runs (or reuses) every combination; returns the summary rows."""
    from mobilebert_jax.train import finetune

    files.makedirs(workdir)
    runs, task, best_metric = [], None, None
    for lr, epochs, seed in itertools.product(learning_rates, num_epochs, seeds):
        run_dir = files.join(workdir, run_name(lr, epochs, seed))
        results_path = files.join(run_dir, finetune.EVAL_RESULTS)
        results = None
        if files.isfile(results_path):
            results = files.read_json(results_path, "sweep run results")
            if not results.get("finished"):
                results = None  # an interrupted run resumes where it stopped
        if results is None:
            cfg = config.copy_and_resolve_references()
            cfg.learning_rate, cfg.num_epochs, cfg.seed = lr, epochs, seed
            print(f"== sweep run {run_name(lr, epochs, seed)}", flush=True)
            results = finetune.train_and_evaluate(cfg, run_dir)
        task, best_metric = results["task"], results["best_metric"]
        runs.append({"learning_rate": lr, "num_epochs": epochs, "seed": seed,
                     "metrics": results["best"]["metrics"]})
    scale = 1.0 if task.startswith("squad") else 100.0
    rows = summarize(runs, best_metric, scale)
    table = markdown_table(task, rows)
    files.write_text(files.join(workdir, "sweep_results.md"), table)
    files.write_text(files.join(workdir, "sweep_results.json"), json.dumps(
        {"task": task, "best_metric": best_metric, "rows": rows, "runs": runs}, indent=2))
    print(table, flush=True)
    return rows


@cli.guarded
def main(argv):
    del argv
    from absl import logging

    from mobilebert_jax import config_checks

    logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    lrs = _numbers(FLAGS.learning_rates, float, "learning_rates", config.learning_rate)
    epochs = _numbers(FLAGS.num_epochs, int, "num_epochs", config.num_epochs)
    seeds = _numbers(FLAGS.seeds, int, "seeds", config.seed, positive=False)
    config_checks.check_config(config)
    run_sweep(config, files.resolve(FLAGS.workdir), lrs, epochs, seeds)


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
