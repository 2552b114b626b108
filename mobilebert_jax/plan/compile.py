"""Compiles every step program of a training config for a Cloud TPU slice or NVIDIA GPUs, on this
machine, with no TPU or GPU (XLA:TPU from libtpu, `pip install -e ".[tpu]"`; XLA:GPU from JAX's
CUDA plugin, `pip install -e ".[gpu-compile]"`):

    python -m mobilebert_jax.plan.compile --config=configs/teacher.py[:VARIANT] --topology=v4-8
        [--stages=train,eval] [--num_slices=N] [--teacher_preset=ibbert_large]
        [--model_preset=mobilebert] [--total_steps=N] [--json=FILE] [--config.x=y ...]

The programs are the trainer's own (`build_program` of pretrain, distill or finetune): the same
state shardings, step functions and abstract arguments a run compiles, on a mesh of the config's
`mesh.shape` over the slice's compile-only devices. Per program and device: XLA's memory
analysis (arguments, outputs, aliases, temporaries, generated code; total = arguments + outputs
- aliases + temporaries + code) against the memory a run may use (on a TPU what XLA allows; on a
GPU 92 % of it, launch/gpu_host.sh's XLA_PYTHON_CLIENT_MEM_FRACTION), with the margin and a
verdict; the FLOPs XLA counts (`cost_analysis`: every op, norms, activations and the optimizer
included; XLA:GPU without a device counts none) and those of the matmuls alone (the lowered
program's dots over the devices: what the analytic count of `metrics.throughput` and MFU cover);
the collectives' bytes by kind (`plan/hlo.py`) against an ideal FSDP step (`fsdp_ideal`); with
`--num_slices` > 1 (the mesh from `mesh.dcn_shape`, as the trainer builds it) the transfers
between slices. A program that does not fit makes the
command fail with one line naming it.

Distillation: the teacher's model config comes from `teacher_checkpoint` when it is a directory,
else from `--teacher_preset` (in the student's dtype); every stage program is compiled (PKT: one
per layer, then PD), and `--stages` picks some. Fine-tuning: the model config comes from
`init_checkpoint` when it is a directory, else from `--model_preset`; `--total_steps` only sets
the schedule's length.

The slices and GPUs, their topology names and memory: `plan/topologies.py`. XLA:GPU compiles
without autotuning (no device to time kernels on), so a GPU's figures are those of untuned
kernels.
"""
from __future__ import annotations

import gc
import math
import os
import re
import sys
import time

import jax
from flax import linen as nn

from mobilebert_jax import checkpoint, cli, files, parallel
from mobilebert_jax.metrics import throughput
from mobilebert_jax.models.config import MobileBertConfig, get_config
from mobilebert_jax.plan import hlo
from mobilebert_jax.plan.topologies import GIB, host_on_cpu, make_mesh, target, topology_devices
from mobilebert_jax.train import core, distill, distill_stages, finetune, finetune_tasks, pretrain


# -- the trainer's programs -----------------------------------------------------------------------
def model_config_from(directory: str, preset: str, dtype: str | None = None,
                      ) -> tuple[MobileBertConfig, str]:
    """(model config, where from): a checkpoint directory's when it is one, else the preset."""
    if directory and files.isdir(directory):
        return checkpoint.load_config(files.resolve(directory)), directory
    overrides = {"dtype": dtype} if dtype else {}
    return get_config(preset, **overrides), f"preset {preset}"


def check_batch(size: int, mesh) -> None:
    """The trainer's batch checks, with the slice's hosts (one process each) as the processes."""
    parallel.check_batch_divisible(size, mesh)
    hosts = len({d.process_index for d in mesh.devices.flat})
    if size % hosts:
        raise ValueError(f"global batch size {size} is not divisible by the slice's {hosts} "
                         f"hosts (one process each)")


def build(config, mesh, rules, teacher_preset: str = "ibbert_large",
          model_preset: str = "mobilebert", total_steps: int = 1000):
    """(the trainer's `core.Program`, a description, the trained model's config) for `config`
    on `mesh`, with the checks its trainer makes before it builds."""
    trainer = config.get("trainer")
    check_batch(config.batch_size, mesh)
    if trainer == "pretrain":
        seq, preds = config.data.seq_len, config.data.max_predictions_per_seq
        return (pretrain.build_program(config, mesh, rules, seq, preds),
                f"batch {config.batch_size} x seq {seq}, {preds} predictions",
                MobileBertConfig.from_dict(config.model.to_dict()))
    if trainer == "distill":
        student = MobileBertConfig.from_dict(config.model.to_dict())
        distill_stages.check_student_preset(config.student, student)
        teacher, source = model_config_from(config.teacher_checkpoint, teacher_preset,
                                            student.dtype)
        distill_stages.check_compatible(teacher, student,
                                        attention_transfer=config.transfer.weights["at"] != 0)
        seq, preds = config.data.seq_len, config.data.max_predictions_per_seq
        return (distill.build_program(config, mesh, rules, teacher, seq, preds),
                f"strategy {config.strategy}, teacher from {source}, batch "
                f"{config.batch_size} x seq {seq}, {preds} predictions", student)
    if trainer in finetune_tasks.TASKS:
        task = finetune_tasks.task_for(config)
        check_batch(config.eval_batch_size, mesh)
        model, source = model_config_from(config.init_checkpoint, model_preset)
        seq = int(config.max_seq_length)
        return (finetune.build_program(config, mesh, rules, task, model, seq, total_steps),
                f"{task.name}, model from {source}, batch {config.batch_size} x seq {seq}",
                model)
    raise ValueError(f"unknown trainer {trainer!r} in config; expected pretrain, distill, "
                     f"{', '.join(finetune_tasks.TASKS)}")


def select(steps: dict, stages: list[str] | None) -> dict:
    """The programs named in `stages` (program names without " step"), all when None."""
    short = {name.removesuffix(" step"): name for name in steps}
    if not stages:
        return dict(steps)
    unknown = [s for s in stages if s not in short]
    if unknown:
        raise ValueError(f"--stages: unknown program {unknown[0]!r}; this config's: "
                         f"{', '.join(short)}")
    return {short[s]: steps[short[s]] for s in stages}


# -- compiling and reading the result -------------------------------------------------------------
_SIZE = r"([\d.]+)\s*([KMGTP]?)i?B?"
_EXHAUSTED = (re.compile(rf"\({_SIZE}\) exceeds available HBM \({_SIZE}\)"),
              re.compile(rf"Used {_SIZE} of {_SIZE} hbm"))


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * 1024 ** " KMGTP".index(unit or " "))


def exhausted(message: str) -> tuple[int | None, int | None]:
    """(bytes needed, bytes available) from XLA's RESOURCE_EXHAUSTED message, when it says."""
    for pattern in _EXHAUSTED:
        m = pattern.search(message)
        if m:
            return _bytes(m[1], m[2]), _bytes(m[3], m[4])
    return None, None


def compile_program(fn, args, mesh, rules, usable_bytes: int) -> dict:
    """Compiles one program; returns its figures per device (`fits` False, with `needs_bytes`,
    when XLA runs out of HBM)."""
    start = time.perf_counter()
    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            lowered = fn.lower(*args)
            compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001  XLA's JaxRuntimeError; anything else is re-raised
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        needs, available = exhausted(str(e))
        return {"fits": False, "seconds": time.perf_counter() - start, "needs_bytes": needs,
                "usable_bytes": available or usable_bytes, "error": cli.one_line(e)}
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    memory = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
              ("argument", "output", "alias", "temp", "generated_code")}
    total = (memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
             + memory["generated_code"])
    text = compiled.as_text()
    ops, crossing = hlo.collective_ops(text), hlo.cross_slice(text)
    cost = compiled.cost_analysis()  # None from XLA:GPU without a device
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    return {"fits": total <= usable_bytes, "seconds": seconds, "memory": memory,
            "total_bytes": total, "usable_bytes": usable_bytes,
            "margin_bytes": usable_bytes - total,
            "flops": float(cost["flops"]) if "flops" in cost else None,
            "matmul_flops": hlo.dot_flops(lowered.as_text(dialect="hlo")) / mesh.size,
            "collectives": hlo.totals(ops), **({"cross_slice": hlo.totals(crossing)}
                                                if parallel.num_slices(mesh.devices.flat) > 1
                                                else {})}


def fsdp_ideal(trained, frozen, mesh, compute_bytes: int, train: bool = True) -> dict:
    """The collective bytes per device of an ideal FSDP step, by kind of `hlo.KINDS`, in the
    unit `plan/hlo.py` counts (the whole array a collective spans on one device: an
    all-gather's output, a reduce-scatter's input, an all-reduce's operand).

    `trained`: the abstract params (sharded `jax.ShapeDtypeStruct`s) that the step
    differentiates, `frozen`: params it only reads (a distillation teacher); c: the compute
    dtype's size (the params' copies the matmuls read, whose gradients XLA reduces before
    converting them to the params' float32). For a param of n elements split t ways by the
    mesh axes other than `fsdp` (the tensor axis stays split):
    * sharded on `fsdp`: all-gathered once in the forward and once in the backward pass
      (2 c n / t bytes; once for a frozen param or in an eval step), its gradient
      reduce-scattered once (c n / t), and with `data` > 1 that shard's gradient all-reduced
      over `data` (c n / (t fsdp));
    * not sharded on `fsdp` (replicated over the batch axes): its gradient all-reduced whole
      (c n / t) when data x fsdp > 1.
    Nothing else: no all-to-all or collective-permute (activation traffic, the batch's
    gathers and the loss's scalar reductions are not counted). Per-device wire traffic is
    (k-1)/k of these bytes for an all-gather or reduce-scatter over k devices and 2(k-1)/k for
    an all-reduce (ring algorithms), the same factor for compiled and ideal."""
    out = {kind: 0 for kind in hlo.KINDS}
    data, fsdp = mesh.shape["data"], mesh.shape["fsdp"]

    def split(leaf):
        axes = [n for dim in leaf.sharding.spec for n in parallel._axis_names(dim)]
        ways = math.prod(mesh.shape[n] for n in axes if n != "fsdp")
        return compute_bytes * math.prod(leaf.shape) / ways, "fsdp" in axes and fsdp > 1

    for leaf in jax.tree.leaves(frozen):
        nbytes, sharded = split(leaf)
        out["all-gather"] += nbytes if sharded else 0
    for leaf in jax.tree.leaves(trained):
        nbytes, sharded = split(leaf)
        if sharded:
            out["all-gather"] += (2 if train else 1) * nbytes
        if not train:
            continue
        if sharded:
            out["reduce-scatter"] += nbytes
            out["all-reduce"] += nbytes / fsdp if data > 1 else 0
        elif data * fsdp > 1:
            out["all-reduce"] += nbytes
    return {k: int(v) for k, v in out.items()}


def _size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def describe(name: str, r: dict, target_name: str) -> list[str]:
    """The printed lines of one program's result."""
    if not r["fits"] and "memory" not in r:
        needs = _size(r["needs_bytes"]) if r["needs_bytes"] else "more"
        return [f"{name}: does not fit on {target_name}: needs {needs} of "
                f"{_size(r['usable_bytes'])} HBM per device ({r['seconds']:.1f}s)"]
    m = r["memory"]
    verdict = "fits" if r["fits"] else "does not fit"
    lines = [f"{name}: compiled in {r['seconds']:.1f}s",
             f"  per device: arguments {_size(m['argument'])}, outputs {_size(m['output'])}, "
             f"aliases {_size(m['alias'])}, temporaries {_size(m['temp'])}, generated code "
             f"{_size(m['generated_code'])}",
             f"  total {_size(r['total_bytes'])} of {_size(r['usable_bytes'])}: {verdict} "
             f"(margin {_size(r['margin_bytes'])})",
             (f"  FLOPs per device {r['flops']:.4g}, of which matmuls" if r["flops"] is not None
              else "  FLOPs per device: the compiler counts none; matmuls")
             + f" {r['matmul_flops']:.4g}"
             + (f" (analytic {r['analytic_flops']:.4g})" if "analytic_flops" in r else ""),
             "  collectives per device (MiB; ideal: fsdp_ideal):  count  compiled     ideal"]
    for kind, c in r["collectives"].items():
        ideal = r.get("collectives_ideal", {}).get(kind)
        lines.append(f"    {kind:<20}{c['count']:>31}{c['bytes'] / 2 ** 20:>10.2f}"
                     + (f"{ideal / 2 ** 20:>10.2f}" if ideal is not None else ""))
    if "cross_slice" in r:
        lines.append(f"  across slices (sent per device): {hlo.summary(r['cross_slice'])}")
    return lines


def run(config, topology: str, stages: list[str] | None = None, num_slices: int = 1,
        chip_config: str | None = None, teacher_preset: str = "ibbert_large",
        model_preset: str = "mobilebert", total_steps: int = 1000, echo=print) -> dict:
    """Builds the config's programs for the slice, compiles the chosen ones and prints their
    figures; returns every figure (what `--json` writes)."""
    if num_slices < 1:
        raise ValueError(f"--num_slices={num_slices}: must be >= 1")
    t = target(topology, chip_config)
    devices = topology_devices(t, num_slices)
    mesh = make_mesh(config.mesh.shape, devices, config.mesh.get("dcn_shape", (-1, 1, 1)))
    rules = parallel.rules_from_config(config.mesh.rules)
    program, what, model = build(config, mesh, rules, teacher_preset, model_preset, total_steps)
    chosen = select(program.steps, stages)
    kind = devices[0].device_kind
    leaves = jax.tree.leaves(program.abstract_state)
    state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)
    state_per_device = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                           for x in leaves)
    slices = f" x {num_slices} slices" if num_slices > 1 else ""
    echo(f"target {t.name}{slices}: topology {t.topology} ({t.compiler}), {len(devices)} "
         f"devices ({kind}); memory per chip {t.memory}, a run may use "
         f"{_size(t.usable_bytes)} per device")
    echo(f"mesh {dict(mesh.shape)}; trainer {config.trainer}: {what}; "
         f"{len(chosen)} of {len(program.steps)} programs")
    first = " at the first stage" if config.trainer == "distill" else ""
    echo(f"train state (params, optimizer, step, RNG){first}: {_size(state_bytes)}, "
         f"{_size(state_per_device)} per device as sharded")
    if int(config.grad_accum_steps) > 1:
        echo(f"grad_accum_steps={config.grad_accum_steps}: XLA's FLOPs and the collectives count "
             "the accumulation loop's body once; the matmul FLOPs count every iteration")
    results = {"target": t.name, "topology": t.topology, "chip_config": t.chip_config,
               "num_slices": num_slices, "devices": len(devices), "device_kind": kind,
               "platform": t.platform, "memory_per_chip": t.memory,
               "usable_bytes_per_device": t.usable_bytes,
               "mesh": dict(mesh.shape), "trainer": config.trainer, "state_bytes": state_bytes,
               "state_bytes_per_device": state_per_device, "programs": {}}
    for name, (fn, args) in chosen.items():
        r = compile_program(fn, args, mesh, rules, t.usable_bytes)
        # JAX's tracing and lowering caches keep each program's modules: a distillation's 26
        # programs at full size outgrow a 24 GiB host unless they are dropped between compiles.
        jax.clear_caches()
        gc.collect()
        if "collectives" in r:
            train = isinstance(args[0], core.TrainState)
            r["collectives_ideal"] = fsdp_ideal(
                args[0].params if train else args[0], args[2:] if train else (), mesh,
                2 if model.dtype == "bfloat16" else 4, train)
        if config.trainer == "pretrain" and name == "train step":
            model = MobileBertConfig.from_dict(config.model.to_dict())
            r["analytic_flops"] = throughput.pretraining_step_flops(
                model, config.batch_size, config.data.seq_len,
                config.data.max_predictions_per_seq) / len(devices)
        results["programs"][name] = r
        for line in describe(name, r, t.name):
            echo(line)
    return results


@cli.guarded
def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    if target(FLAGS.topology, FLAGS.chip_config).gpu:
        # Without a GPU nothing is autotuned, and XLA:GPU's default Triton GEMM finds no tiling
        # for the [N, 30522] MLM logits of a full-size step: its library GEMMs compile them. Read
        # when XLA starts, i.e. before the first backend below.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_gpu_enable_triton_gemm=false").strip()
    host_on_cpu()
    config = FLAGS.config
    if config is None:
        raise ValueError("--config is required")
    from mobilebert_jax import config_checks

    config_checks.check_config(config)
    results = run(config, FLAGS.topology, FLAGS.stages, FLAGS.num_slices, FLAGS.chip_config,
                  FLAGS.teacher_preset, FLAGS.model_preset, FLAGS.total_steps)
    if FLAGS.json:
        files.write_json(FLAGS.json, results)
        print(f"wrote {FLAGS.json}")
    failed = [(n, r) for n, r in results["programs"].items() if not r["fits"]]
    if failed:
        name, r = failed[0]
        needs = r.get("needs_bytes") or r.get("total_bytes")
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise cli.CommandError(f"{name}{more}: does not fit on {results['target']}: needs "
                               f"{_size(needs) if needs else 'more than'} of "
                               f"{_size(r['usable_bytes'])} HBM per device")


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    from mobilebert_jax.models.config import PRESETS

    config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
    flags.DEFINE_string("topology", "v4-8", "Cloud TPU type (v4-8 ... v4-512, v5p-8 ... "
                        "v5p-1024, v5litepod-1 ... -256, v6e-1 ... -256), a libtpu topology "
                        "(v4:2x2x1) or NVIDIA GPUs (8xH100, 16xH200: hosts of 8).")
    flags.DEFINE_string("chip_config", None, "libtpu chip config (default: megacore for v4 "
                        "and v5p, default for v5e and v6e).")
    flags.DEFINE_integer("num_slices", 1, "Slices of that topology (multislice).")
    flags.DEFINE_list("stages", None, "Programs to compile (names without ' step', e.g. "
                      "train,eval or transfer_layer_0,pd); default: all.")
    flags.DEFINE_enum("teacher_preset", "ibbert_large", list(PRESETS), "Distillation: the "
                      "teacher when config.teacher_checkpoint is no directory.")
    flags.DEFINE_enum("model_preset", "mobilebert", list(PRESETS), "Fine-tuning: the model "
                      "when config.init_checkpoint is no directory.")
    flags.DEFINE_integer("total_steps", 1000, "Fine-tuning: the schedule's length (no shape "
                         "depends on it).")
    flags.DEFINE_string("json", None, "Also write every figure to this JSON file.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
