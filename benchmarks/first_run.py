"""Wall time of the README's first job (the embedded default, `configs/teacher.py:smoke`) as a
user runs it: `python -m mobilebert_jax.main` in a new workdir, data preparation, compilation,
every step and evaluation included; optionally beside the same job with other settings, the two
alternating on the machine (A B A B ...):

    python -m benchmarks.first_run --workdir=DIR [--repeats=2] \
        [--baseline=batch_size=32,data.seq_len=128,data.max_predictions_per_seq=20] [--json=PATH]

Prints, per side, the median wall seconds, the steps/s range of its log lines and the first and
last logged training loss; with a baseline, the median of the per-pair wall ratios; and the load
average before and after.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time

from benchmarks.common import load_average, write_json
from benchmarks.transfer import REPO
from mobilebert_jax import cli

CONFIG = "configs/teacher.py:smoke"
STEP = re.compile(r"^step (\d+)/\d+ .*\bloss=([\d.]+).*steps_per_second=([\d.]+)")


def overrides(spec: str) -> list[str]:
    """'a=1,b.c=2' -> ['--config.a=1', '--config.b.c=2']."""
    flags = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" not in item:
            raise ValueError(f"--baseline: {item!r} is not FIELD=VALUE")
        flags.append(f"--config.{item}")
    return flags


def run_once(workdir: str, extra: list[str]) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mobilebert_jax.main", f"--config={CONFIG}",
                        f"--workdir={workdir}", *extra], cwd=REPO, capture_output=True,
                       text=True)
    wall = time.perf_counter() - start
    if r.returncode:
        raise cli.CommandError(f"the job failed: {r.stderr.strip().splitlines()[-1]}")
    steps = [m.groups() for m in map(STEP.match, r.stdout.splitlines()) if m]
    if not steps:
        raise cli.CommandError("the job logged no training step")
    rates = [float(s[2]) for s in steps]
    return {"wall_seconds": wall, "steps": int(steps[-1][0]), "first_loss": float(steps[0][1]),
            "last_loss": float(steps[-1][1]), "steps_per_second": [min(rates), max(rates)]}


def summary(runs: list[dict]) -> dict:
    return {"wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
            "steps": runs[0]["steps"],
            "steps_per_second": [min(r["steps_per_second"][0] for r in runs),
                                 max(r["steps_per_second"][1] for r in runs)],
            "first_loss": runs[0]["first_loss"], "last_loss": runs[0]["last_loss"]}


def line(name: str, s: dict) -> str:
    lo, hi = s["steps_per_second"]
    return (f"{name:<9} {s['wall_seconds']:7.1f} s  {s['steps']} steps at {lo:.2f}-{hi:.2f} "
            f"steps/s  loss {s['first_loss']:.2f} -> {s['last_loss']:.2f}")


@cli.guarded
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.first_run", description=__doc__)
    p.add_argument("--workdir", required=True, help="Scratch directory (its runs are removed).")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--baseline", default="", help="FIELD=VALUE,... for the second side.")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    sides = {"default": []}
    if args.baseline:
        sides["baseline"] = overrides(args.baseline)
    before = load_average()
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for i in range(args.repeats):
        for name, extra in sides.items():
            runs[name].append(run_once(f"{args.workdir}/{name}", extra))
            print(f"repeat {i + 1} {name}: {runs[name][-1]['wall_seconds']:.1f} s", flush=True)
    results = {name: summary(r) for name, r in runs.items()}
    results.update(load_average_before=before, load_average_after=load_average(),
                   baseline_settings=args.baseline)
    print(f"load average before {before}, after {results['load_average_after']}")
    for name in sides:
        print(line(name, results[name]))
    if args.baseline:
        ratios = [b["wall_seconds"] / d["wall_seconds"]
                  for d, b in zip(runs["default"], runs["baseline"])]
        results["baseline_over_default"] = statistics.median(ratios)
        print(f"baseline / default wall: {results['baseline_over_default']:.2f}x "
              f"(pairs {', '.join(f'{r:.2f}' for r in ratios)})")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
