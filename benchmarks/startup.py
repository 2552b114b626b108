"""Start-to-first-step time of the smoke teacher and of a smoke distillation run, with and
without JAX's persistent compilation cache:

    python -m benchmarks.startup --workdir=DIR [--repeats=2] [--json=PATH]

Every run is `python -m mobilebert_jax.main` as a user starts it (one process, this machine's
CPU device), on one dataset prepared first into DIR/data (so no run pays for data preparation),
timed from the process start to its first logged training step (`log_every=1`):

* teacher (`configs/teacher.py:smoke`):
  - fresh: a new workdir and an empty cache;
  - restart: the same workdir after SIGTERM (the run saves and exits), cache on;
  - restart, no cache: the same again with the cache off (`JAX_ENABLE_COMPILATION_CACHE=false`,
    what every restart cost before the cache);
* distillation (`configs/distill.py:smoke`, 2 steps per stage: 4 transfer stages + pre-training
  distillation, one program per stage), from the fresh teacher: the whole run with an empty
  cache and again in a new workdir with the cache the first run filled (what a restart or a
  rerun finds), timed to the first step and to the end (every stage's program compiled or
  loaded).

Each repeat uses its own cache and workdirs; the cold and warm sides alternate. Prints the
median of each figure over the repeats and the load average.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

from benchmarks.common import load_average, write_json
from benchmarks.transfer import REPO, load_config

STEP_LINE = re.compile(r"^step \d+/\d+")
TEACHER_STEPS = 200  # never reached: the teacher runs are stopped after their first step
DISTILL = ["--config.steps_per_layer=2", "--config.total_steps=10",
           "--config.optimizer.warmup_steps=1", "--config.eval_every=1000",
           "--config.checkpoint_every=1000"]


def run(args: list[str], env: dict, stop_after_first_step: bool) -> dict:
    """Runs `python -m mobilebert_jax.main ARGS`; seconds to the first step line and to exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mobilebert_jax.main", *args, "--config.log_every=1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    first, lines, how = None, [], []
    for line in proc.stdout:
        lines.append(line)
        if "compiled in" in line or "loaded from the compilation cache" in line:
            how.append(line.split(":")[0] + (": cache" if "cache" in line else ": compiled"))
        if first is None and STEP_LINE.match(line):
            first = time.perf_counter() - start
            if stop_after_first_step:
                proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    if code != 0 or first is None:
        raise SystemExit(f"error: {' '.join(args[:2])} failed (exit {code}):\n"
                         + "".join(lines[-20:]))
    return {"first_step_s": first, "wall_s": time.perf_counter() - start, "programs": how}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    data = os.path.join(args.workdir, "data")
    base = dict(os.environ)
    results = {"cpus": os.cpu_count(), "load_average_before": load_average(), "repeats": []}
    if not os.path.isfile(os.path.join(data, "pretraining_meta.json")):
        print("preparing the smoke teacher's dataset once ...", flush=True)
        d = load_config("teacher", "smoke").data
        subprocess.run([sys.executable, "-m", "mobilebert_jax.data.prepare",
                        f"--corpus={d.corpus}", f"--tokenizer={d.tokenizer}", f"--out={data}",
                        f"--seq_len={d.seq_len}",
                        f"--max_predictions_per_seq={d.max_predictions_per_seq}",
                        f"--dupe_factor={d.dupe_factor}", f"--eval_fraction={d.eval_fraction}",
                        f"--seed={d.seed}"], check=True)
    data_flags = [f"--config.data.dataset_dir={data}", "--config.data.corpus="]
    for r in range(args.repeats):
        root = os.path.join(args.workdir, f"r{r}")
        shutil.rmtree(root, ignore_errors=True)
        cache = os.path.join(root, "cache")
        teacher_dir = os.path.join(root, "teacher")
        t_args = ["--config=configs/teacher.py:smoke", f"--workdir={teacher_dir}",
                  f"--config.total_steps={TEACHER_STEPS}",
                  f"--config.compilation_cache_dir={cache}",
                  "--config.checkpoint_every=1000", *data_flags]
        off = dict(base, JAX_ENABLE_COMPILATION_CACHE="false")
        row = {"teacher_fresh": run(t_args, base, True)}
        order = ["restart_cache", "restart_no_cache"] if r % 2 == 0 else \
            ["restart_no_cache", "restart_cache"]
        for side in order:
            row[f"teacher_{side}"] = run(t_args, base if side == "restart_cache" else off, True)
        for side in ("distill_cold", "distill_warm"):
            row[side] = run(["--config=configs/distill.py:smoke",
                             f"--workdir={os.path.join(root, side)}",
                             f"--config.teacher_checkpoint={teacher_dir}",
                             f"--config.compilation_cache_dir={cache}", *data_flags, *DISTILL],
                            base, False)
        results["repeats"].append(row)
        print(f"repeat {r}: " + ", ".join(f"{k} {v['first_step_s']:.1f}s"
                                          for k, v in row.items()), flush=True)
    results["load_average_after"] = load_average()
    rows = results["repeats"]

    def med(key, field):
        return statistics.median(row[key][field] for row in rows)

    print(f"\nseconds from process start, median of {len(rows)} (this machine: "
          f"{os.cpu_count()} CPUs; load average {results['load_average_before']} -> "
          f"{results['load_average_after']}):")
    print(f"  {'run':<34}{'first step':>11}{'whole run':>11}  programs")
    for key, what in (("teacher_fresh", "teacher, fresh (empty cache)"),
                      ("teacher_restart_cache", "teacher, restart (cache)"),
                      ("teacher_restart_no_cache", "teacher, restart (no cache)"),
                      ("distill_cold", "distillation, empty cache"),
                      ("distill_warm", "distillation, warm cache")):
        whole = f"{med(key, 'wall_s'):>10.1f}" if key.startswith("distill") else f"{'':>10}"
        print(f"  {what:<34}{med(key, 'first_step_s'):>10.1f} {whole}  "
              f"{'; '.join(rows[-1][key]['programs'])}")
    summary = {k: {"first_step_s": med(k, "first_step_s"), "wall_s": med(k, "wall_s")}
               for k in rows[0]}
    results["median"] = summary
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
