"""The paper's distillation claims at small scale, run end to end and tabulated:

    python -m benchmarks.transfer --teacher=runs/teacher_long --workdir=runs/claims \
        [--seeds=0,1] [--steps_per_layer=100] [--pd_steps=600] [--batch_size=32] \
        [--runs=scratch,pkt,jkt,akt] [--distill_flags=KEY=VALUE,...]

From one teacher workdir (a `configs/teacher.py:smoke`-shaped run), every run trains the student
of `configs/distill.py:smoke` for the same number of steps (num_layers * steps_per_layer +
pd_steps), at the same batch size, on the teacher's prepared data (`TEACHER/data`), and ends with
an evaluation on the whole held-out split:

* `scratch`      the student trained from random init with MLM + NSP (`configs/teacher.py:smoke`
                 with the student's model fields and the PD optimizer settings);
* `pkt|jkt|akt`  `configs/distill.py:smoke,STRATEGY` (knowledge transfer, then pre-training
                 distillation; AKT spends the whole budget on PD with the auxiliary losses).

Each run is `python -m mobilebert_jax.main ...` in `WORKDIR/RUN_sSEED`; a run that has finished
is not run again, a run that was interrupted resumes from its last checkpoint. Prints the table
of held-out MLM accuracy and loss (mean ± std over seeds) with the teacher's own, and writes
`WORKDIR/claims.{json,md}`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNS = ("scratch", "pkt", "jkt", "akt")
WHOLE_SPLIT = 1_000_000  # eval_steps: the held-out pass ends with the split, at any batch size


def load_config(name: str, variant: str):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def flag(key: str, value) -> str:
    return f"--config.{key}={value}"


def total_steps(args) -> int:
    layers = load_config("distill", "smoke").model.num_hidden_layers
    return layers * args.steps_per_layer + args.pd_steps


def run_flags(kind: str, args, seed: int) -> list[str]:
    """The `mobilebert_jax.main` flags of one run."""
    total = total_steps(args)
    distill = load_config("distill", f"smoke,{'pkt' if kind == 'scratch' else kind}")
    common = [flag("seed", seed), flag("total_steps", total), flag("eval_every", total),
              flag("checkpoint_every", max(1, total // 4)), flag("log_every", 50),
              flag("eval_steps", WHOLE_SPLIT),
              flag("batch_size", args.batch_size or distill.batch_size),
              flag("data.dataset_dir", os.path.join(args.teacher, "data"))]
    if kind == "scratch":
        teacher = load_config("teacher", "smoke")
        model = [flag(f"model.{k}", v) for k, v in distill.model.items() if teacher.model[k] != v]
        optimizer = [flag(f"optimizer.{k}", distill.optimizer[k])
                     for k in ("learning_rate", "warmup_steps", "end_learning_rate")]
        return ["--config=configs/teacher.py:smoke", *model, *optimizer, *common]
    extra = [flag(*item.split("=", 1)) for item in getattr(args, "distill_flags", "").split(",")
             if item]
    return [f"--config=configs/distill.py:smoke,{kind}", flag("teacher_checkpoint", args.teacher),
            flag("steps_per_layer", args.steps_per_layer), *common, *extra]


def final_eval(workdir: str, step: int) -> dict | None:
    """The held-out evaluation logged at `step` in WORKDIR/metrics.jsonl, if any."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    found = None
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "eval_mlm_accuracy" in row and (step is None or row["step"] == step):
                found = row
    return found


def mean_std(values: list[float]) -> str:
    """Mean ± sample std for a table cell; the value alone for one run, "-" for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="Teacher workdir (configs/teacher.py:smoke).")
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps_per_layer", type=int, default=100)
    p.add_argument("--pd_steps", type=int, default=600)
    p.add_argument("--batch_size", type=int, default=0,
                   help="Per-step batch of every run (0: that of configs/distill.py:smoke).")
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--distill_flags", default="",
                   help="Config overrides of the distillation runs, KEY=VALUE,... (e.g. "
                        "transfer.all_teacher_layers=false,"
                        "transfer.reset_optimizer_each_stage=false: the earlier defaults).")
    args = p.parse_args(argv)
    kinds = [k for k in args.runs.split(",") if k]
    unknown = sorted(set(kinds) - set(RUNS))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    teacher_eval = final_eval(args.teacher, None)
    bad_flags = [i for i in args.distill_flags.split(",") if i and "=" not in i]
    if bad_flags:
        print(f"error: --distill_flags: {bad_flags[0]!r} is not KEY=VALUE", file=sys.stderr)
        return 1
    if (unknown or not seeds or args.steps_per_layer < 0 or args.pd_steps < 1
            or args.batch_size < 0):
        print(f"error: bad arguments (unknown runs {unknown}, seeds {seeds}, steps_per_layer "
              f"{args.steps_per_layer}, pd_steps {args.pd_steps}, batch_size {args.batch_size})",
              file=sys.stderr)
        return 1
    if teacher_eval is None or not os.path.isdir(os.path.join(args.teacher, "data")):
        print(f"error: {args.teacher} is not a finished teacher workdir (no held-out evaluation "
              "in metrics.jsonl or no data/)", file=sys.stderr)
        return 1
    total = total_steps(args)
    os.makedirs(args.workdir, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for kind in kinds:
        for seed in seeds:
            workdir = os.path.join(args.workdir, f"{kind}_s{seed}")
            row = final_eval(workdir, total)
            if row is None:
                cmd = [sys.executable, "-m", "mobilebert_jax.main", *run_flags(kind, args, seed),
                       f"--workdir={workdir}"]
                print("$", " ".join(cmd[1:]), flush=True)
                with open(workdir + ".log", "a") as log:
                    code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
                row = final_eval(workdir, total)
                if code != 0 or row is None:
                    print(f"error: run {kind} seed {seed} failed (exit {code}); see "
                          f"{workdir}.log", file=sys.stderr)
                    return 1
            results.setdefault(kind, []).append(row)
    names = {"scratch": "student from scratch (MLM + NSP)", "pkt": "PKT + PD",
             "jkt": "JKT + PD", "akt": "AKT (PD + auxiliary transfer losses)"}
    batch = args.batch_size or load_config("distill", "smoke").batch_size
    lines = [f"held-out MLM after {total} student steps (batch {batch}), seeds "
             f"{','.join(map(str, seeds))}; teacher at step {teacher_eval['step']}",
             "", "| model | held-out MLM accuracy (%) | held-out MLM loss |", "|---|---:|---:|",
             f"| teacher | {100 * teacher_eval['eval_mlm_accuracy']:.2f} | "
             f"{teacher_eval['eval_mlm_loss']:.2f} |"]
    for kind, rows in results.items():
        lines.append(f"| {names[kind]} | {mean_std([100 * r['eval_mlm_accuracy'] for r in rows])}"
                     f" | {mean_std([r['eval_mlm_loss'] for r in rows])} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.workdir, "claims.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.workdir, "claims.json"), "w") as f:
        json.dump({"settings": vars(args), "total_steps": total, "teacher": teacher_eval,
                   "runs": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
