"""The whole pipeline at a scale this CPU can run, resumable, and one table of the paper's claims:

    python -m benchmarks.pipeline --workdir=runs/pipeline --glue_dir=GLUE_DIR \
        [--teacher_steps=3000] [--steps_per_layer=100] [--pd_steps=600] [--batch_size=32] \
        [--tasks=sst2,mrpc] [--seeds=0] [--stages=teacher,students,finetune,int8] \
        [--finetune_flags=[TASK:]KEY=VALUE,...] [--seq_len=128]

1. teacher   `configs/teacher.py:smoke` (a small IB-BERT-shaped teacher on the gensim Wikipedia
             sample) for `--teacher_steps`, evaluated on the held-out split every 250 steps
             (the table reports the curve);
2. students  the MobileBERT-shaped student of `configs/distill.py:smoke` (NoNorm, bottlenecks,
             stacked FFNs, ReLU) by PKT + PD from that teacher, and the same student trained
             from scratch with MLM + NSP for the same steps, batch and data
             (`benchmarks.transfer`'s runs);
3. finetune  teacher, PKT student and scratch student on each task (`configs/finetune_glue.py`,
             the full train set, the dev metrics), for each seed; `--finetune_flags`
             overrides its fields for every task (`KEY=VALUE`) or one (`TASK:KEY=VALUE`);
4. int8      the fine-tuned PKT student of the first task and seed exported to TFLite: float,
             post-training int8 as `mobilebert_jax.export` makes it (`tflite.default_options`:
             its default float ops and, for an additive-mask model, the fill mask) and int8
             with every op quantized (same mask); the same student fine-tuned with
             quantization-aware training (`--config.qat=true`) exported to int8; dev
             accuracy of each, the drop against the float JAX model, and the latency of one
             sequence.

Every stage is `python -m mobilebert_jax.main ...` (or, for int8, the export functions) in
WORKDIR/<run>; a finished run is not repeated and an interrupted one resumes from its
checkpoint, so the pipeline can be stopped at any time and started again. Writes
WORKDIR/pipeline.{md,json} with what has finished so far.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

from benchmarks import transfer
from benchmarks.transfer import mean_std

STAGES = ("teacher", "students", "finetune", "int8")
TASK_DIRS = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "cola": "CoLA", "stsb": "STS-B",
             "wnli": "WNLI"}
EVAL_EVERY = 250
LATENCY_RUNS = 50


def main_run(flags: list[str], workdir: str) -> None:
    """`python -m mobilebert_jax.main FLAGS --workdir=WORKDIR`, logged to WORKDIR.log."""
    cmd = [sys.executable, "-m", "mobilebert_jax.main", *flags, f"--workdir={workdir}"]
    print("$", " ".join(cmd[1:]), flush=True)
    with open(workdir + ".log", "a") as log:
        code = subprocess.call(cmd, cwd=transfer.REPO, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"error: {os.path.basename(workdir)} failed (exit {code}); see "
                         f"{workdir}.log")


def teacher_flags(args) -> list[str]:
    return ["--config=configs/teacher.py:smoke", f"--config.total_steps={args.teacher_steps}",
            f"--config.eval_every={EVAL_EVERY}", f"--config.checkpoint_every={EVAL_EVERY}",
            "--config.eval_steps=10", "--config.optimizer.warmup_steps=150"]


def parse_finetune_flags(text: str, tasks: list[str]) -> dict[str, list[str]] | str:
    """'num_epochs=1,sst2:max_seq_length=64' -> {task: [--config.KEY=VALUE flags]}, or the
    item that is not [TASK:]KEY=VALUE with TASK one of `tasks`."""
    flags: dict[str, list[str]] = {task: [] for task in tasks}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")  # a value may hold ':' (gs://...)
        scope, _, key = key.rpartition(":")
        if not eq or not key or (scope and scope not in tasks):
            return item
        for task in [scope] if scope else tasks:
            flags[task].append(f"--config.{key}={value}")
    return flags


def teacher_curve(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    rows = [json.loads(line) for line in open(path)]
    return [{"step": r["step"], "mlm_accuracy": r["eval_mlm_accuracy"],
             "mlm_loss": r["eval_mlm_loss"]} for r in rows if "eval_mlm_accuracy" in r]


def finetune_result(workdir: str) -> dict | None:
    path = os.path.join(workdir, "eval_results.json")
    if not os.path.isfile(path):
        return None
    results = json.load(open(path))
    return results if results.get("finished") else None


def tflite_latency_ms(model: bytes, features: dict) -> float:
    """Median milliseconds of one sequence (the first of `features`) through the TFLite model
    (XNNPACK, 2 threads)."""
    from mobilebert_jax.export import runtime
    runner = runtime.TFLiteModel(model, num_threads=2)
    feed = {k: features[k][:1] for k in runtime.INPUT_NAMES}
    runner(**feed)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        runner(**feed)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def int8_rows(float_dir: str, qat_dir: str, task_dir: str, seq_len: int) -> list[dict]:
    """Dev accuracy and latency of the float JAX model (fine-tuned without QAT) and of the TFLite
    exports of it and of the QAT-fine-tuned model; every drop is against that float model."""
    import numpy as np

    from benchmarks import quantization
    from mobilebert_jax import checkpoint
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.export import calibration, runtime, tflite
    tokenizer = load_tokenizer(checkpoint.tokenizer_file(float_dir))
    dev = quantization.glue_features(task_dir, "dev", tokenizer, seq_len)
    calib = calibration.representative_inputs(tokenizer, seq_len, 100, task_dir)
    config, params = checkpoint.load_pretrained(float_dir)
    reference = quantization.jax_logits(config, params, dev)
    ref_acc = float((reference.argmax(-1) == dev["labels"]).mean())
    rows = [{"model": "JAX float32", "accuracy": ref_acc}]
    for name, source, quantize, float_ops in (
            ("TFLite float32", float_dir, "none", None),
            ("TFLite int8, post-training (export default)", float_dir, "int8", None),
            ("TFLite int8, post-training, every op", float_dir, "int8", ()),
            ("TFLite int8, QAT fine-tuning + export default", qat_dir, "int8", None)):
        config, params = checkpoint.load_pretrained(source)
        float_ops, mask_mode = tflite.default_options(config, quantize, float_ops)
        model = tflite.to_tflite(config, params, seq_len, quantize,
                                 calib if quantize == "int8" else None, float_ops=float_ops,
                                 export_mask_mode=mask_mode)
        logits = runtime.TFLiteModel(model, num_threads=2).predict(dev)["logits"]
        acc = float((logits.argmax(-1) == dev["labels"]).mean())
        rows.append({"model": name, "accuracy": acc, "drop_points": 100 * (ref_acc - acc),
                     "max_abs_logit_diff": float(np.abs(logits - reference).max()),
                     "bytes": len(model), "latency_ms": tflite_latency_ms(model, dev)})
        print(rows[-1], flush=True)
    return rows


def write_table(args, out: dict) -> str:
    lines = ["## Teacher (held-out MLM accuracy by step)", "",
             "| step | MLM accuracy (%) | MLM loss |", "|---:|---:|---:|"]
    lines += [f"| {r['step']} | {100 * r['mlm_accuracy']:.2f} | {r['mlm_loss']:.3f} |"
              for r in out["teacher_curve"]]
    lines += ["", "## Students (held-out MLM after the same steps, batch and data)", "",
              "| model | MLM accuracy (%) | MLM loss |", "|---|---:|---:|"]
    for kind, rows in out["students"].items():
        lines.append(f"| {kind} | {mean_std([100 * r['eval_mlm_accuracy'] for r in rows])} | "
                     f"{mean_std([r['eval_mlm_loss'] for r in rows])} |")
    tasks = list(out["finetune"].get("teacher", {}))
    if tasks:
        lines += ["", "## Fine-tuned (dev, best epoch; mean ± std over seeds)", "",
                  "| model | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for model, by_task in out["finetune"].items():
            cells = []
            for task in tasks:
                runs = by_task.get(task, [])
                metric = runs[0]["best_metric"] if runs else ""
                cells.append(f"{mean_std([100 * r['best']['metrics'][metric] for r in runs])}"
                             + (f" ({metric}, {len(runs)})" if runs else ""))
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if out.get("int8"):
        lines += ["", f"## int8 export of the fine-tuned PKT student ({out['int8']['task']}, "
                  "dev)", "", "| model | accuracy (%) | drop (points) | latency (ms) | bytes |",
                  "|---|---:|---:|---:|---:|"]
        for r in out["int8"]["rows"]:
            lines.append(f"| {r['model']} | {100 * r['accuracy']:.2f} | "
                         f"{r.get('drop_points', 0.0):.2f} | "
                         f"{r['latency_ms']:.1f} | {r['bytes']:,} |" if "bytes" in r else
                         f"| {r['model']} | {100 * r['accuracy']:.2f} | - | - | - |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.workdir, "pipeline.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.workdir, "pipeline.json"), "w") as f:
        json.dump({"settings": vars(args), **out}, f, indent=2)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--glue_dir", required=True, help="GLUE root holding SST-2/, MRPC/, ...")
    p.add_argument("--teacher_steps", type=int, default=3000)
    p.add_argument("--steps_per_layer", type=int, default=100)
    p.add_argument("--pd_steps", type=int, default=600)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--tasks", default="sst2,mrpc")
    p.add_argument("--seeds", default="0")
    p.add_argument("--finetune_flags", default="",
                   help="Fine-tuning config overrides, [TASK:]KEY=VALUE,... (e.g. "
                        "sst2:num_epochs=1,sst2:max_seq_length=64).")
    p.add_argument("--seq_len", type=int, default=128, help="int8: exported sequence length.")
    p.add_argument("--stages", default=",".join(STAGES))
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    bad = sorted(set(stages) - set(STAGES)) + sorted(set(tasks) - set(TASK_DIRS))
    if bad or not seeds or args.teacher_steps < EVAL_EVERY:
        print(f"error: bad arguments: {bad or ''} seeds {seeds} teacher_steps "
              f"{args.teacher_steps} (at least {EVAL_EVERY})", file=sys.stderr)
        return 1
    finetune_flags = parse_finetune_flags(args.finetune_flags, tasks)
    if isinstance(finetune_flags, str):
        print(f"error: --finetune_flags: {finetune_flags!r} is not [TASK:]KEY=VALUE with TASK "
              f"one of {','.join(tasks)}", file=sys.stderr)
        return 1
    missing = [f"{TASK_DIRS[t]}/{split}.tsv" for t in tasks for split in ("train", "dev")
               if not os.path.isfile(os.path.join(args.glue_dir, TASK_DIRS[t], f"{split}.tsv"))]
    if missing:
        print(f"error: --glue_dir={args.glue_dir} lacks {', '.join(missing)}", file=sys.stderr)
        return 1
    args.workdir, args.glue_dir = os.path.abspath(args.workdir), os.path.abspath(args.glue_dir)
    os.makedirs(args.workdir, exist_ok=True)
    teacher = os.path.join(args.workdir, "teacher")
    out = {"teacher_curve": [], "students": {}, "finetune": {}, "int8": None}

    if "teacher" in stages and not any(r["step"] == args.teacher_steps
                                       for r in teacher_curve(teacher)):
        main_run(teacher_flags(args), teacher)
    out["teacher_curve"] = teacher_curve(teacher)
    if not out["teacher_curve"] or out["teacher_curve"][-1]["step"] != args.teacher_steps:
        print(write_table(args, out))
        return 0

    spec = SimpleNamespace(teacher=teacher, steps_per_layer=args.steps_per_layer,
                           pd_steps=args.pd_steps, batch_size=args.batch_size)
    total = transfer.total_steps(spec)
    students = {"PKT + PD student": "pkt", "student from scratch": "scratch"}
    for name, kind in students.items():
        for seed in seeds:
            workdir = os.path.join(args.workdir, f"{kind}_s{seed}")
            if transfer.final_eval(workdir, total) is None and "students" in stages:
                main_run(transfer.run_flags(kind, spec, seed), workdir)
            row = transfer.final_eval(workdir, total)
            if row is not None:
                out["students"].setdefault(name, []).append(row)

    def finetune_run(task: str, init: str, seed: int) -> list[str]:
        return [f"--config=configs/finetune_glue.py:{task}", f"--config.init_checkpoint={init}",
                f"--config.data_dir={args.glue_dir}", f"--config.seed={seed}",
                "--config.predict_test=false", *finetune_flags[task]]

    models = {"teacher": teacher, "PKT + PD student": os.path.join(args.workdir, "pkt_s0"),
              "student from scratch": os.path.join(args.workdir, "scratch_s0")}
    for name, init in models.items():
        if name != "teacher" and transfer.final_eval(init, total) is None:
            continue
        for task in tasks:
            for seed in seeds:
                workdir = os.path.join(args.workdir, f"ft_{os.path.basename(init)}_{task}_s{seed}")
                if finetune_result(workdir) is None and "finetune" in stages:
                    main_run(finetune_run(task, init, seed), workdir)
                result = finetune_result(workdir)
                if result is not None:
                    out["finetune"].setdefault(name, {}).setdefault(task, []).append(result)

    student_ft = os.path.join(args.workdir, f"ft_pkt_s0_{tasks[0]}_s{seeds[0]}")
    student_qat = student_ft + "_qat"
    int8_file = os.path.join(args.workdir, "int8.json")
    if finetune_result(student_ft) is not None:
        if finetune_result(student_qat) is None and "int8" in stages:
            main_run(finetune_run(tasks[0], models["PKT + PD student"], seeds[0])
                     + ["--config.qat=true"], student_qat)
        if not os.path.isfile(int8_file) and finetune_result(student_qat) is not None:
            rows = int8_rows(student_ft, student_qat,
                             os.path.join(args.glue_dir, TASK_DIRS[tasks[0]]), args.seq_len)
            with open(int8_file + ".tmp", "w") as f:
                json.dump({"task": tasks[0], "checkpoint": student_ft, "qat_checkpoint":
                           student_qat, "rows": rows}, f, indent=2)
            os.replace(int8_file + ".tmp", int8_file)
        if os.path.isfile(int8_file):
            out["int8"] = json.load(open(int8_file))
    print(write_table(args, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
