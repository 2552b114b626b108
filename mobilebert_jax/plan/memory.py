"""Per-device memory plan of a pretraining config on a target machine:

    python -m mobilebert_jax.plan.memory --config=configs/teacher.py --target=v4-64
        [--mesh=4x8x1] [--remat=none|full|dots_no_batch] [--grad_accum_steps=N]
        [--batch_size=B] [--seq_len=S] [--check=true] [--json=PATH]

Per device, for the mesh (`--mesh`, or the config's `mesh.shape` on the target's devices), remat
policy and accumulation: parameters and LAMB state (the project's own shardings on an abstract
mesh), gradients and updates, activations (an analytic count) and the total; then the smallest
setting that fits (fewest micro-batches, then remat none < dots_no_batch < full). A distillation
config is planned with its frozen teacher (`--teacher_preset`) in the step.

The target's figures are estimates. `--check` (default) also compiles the forward and backward
pass of a small IB-BERT-shaped config at two depths with XLA:TPU for 8 compile-only TPU v4 chips
(libtpu, the `tpu` extra; no TPU needed) and prints the compiler's temporaries per added layer
(measured) next to the analytic count (estimated). `mobilebert_jax.plan.compile` compiles a
config's own programs at full size.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import linen as nn
from ml_collections import config_flags

from mobilebert_jax import cli, files, parallel
from mobilebert_jax.models.config import PRESETS, REMAT_POLICIES, MobileBertConfig, get_config
from mobilebert_jax.models.heads import MobileBertForPreTraining
from mobilebert_jax.plan import topologies
from mobilebert_jax.plan.sharding import layout
from mobilebert_jax.train import objectives

GIB = 2 ** 30
USABLE_FRACTION = 0.85  # of a device's memory: XLA's own workspace, fragmentation, the runtime


@dataclasses.dataclass(frozen=True)
class Target:
    devices: int  # JAX devices: TPU v4 chips, TPU v3 cores, GPUs
    bytes_per_device: int
    source: str


TARGETS = {
    "v4-64": Target(32, 32 * GIB,
                    "Cloud TPU v4: 32 GiB HBM per chip (one JAX device); v4-64 = 32 chips"),
    "v3-256": Target(256, 16 * GIB,
                     "Cloud TPU v3: 32 GiB HBM per chip of 2 cores, 16 GiB per core (one JAX "
                     "device); v3-256 = 256 cores"),
    "8xH100": Target(8, 80 * 10 ** 9, "NVIDIA H100 SXM: 80 GB HBM3 per GPU"),
    "8xH200": Target(8, 141 * 10 ** 9, "NVIDIA H200: 141 GB HBM3e per GPU"),
}

# The check config: IB-BERT's shape (bottleneck, LayerNorm, GELU, one FFN) at small sizes, bfloat16
# as the targets run, without dropout (the random bits double the compile time; the masks' bytes
# are in the count for the targets). Compiled by XLA:TPU for a v4 slice of 8 chips: below about
# 2 layers at this batch it keeps the whole program's temporaries in on-chip memory and reports
# none, so the check compares the growth between 2 and 4 layers.
CHECK = dict(hidden_size=128, embedding_size=64, intra_bottleneck_size=256, intermediate_size=1024,
             num_attention_heads=4, vocab_size=2048, max_position_embeddings=128,
             dtype="bfloat16", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
CHECK_BATCH, CHECK_SEQ, CHECK_PREDICTIONS, CHECK_MESH = 512, 128, 20, (2, 4, 1)
CHECK_LAYERS = (2, 4)
CHECK_TOPOLOGY = "v4:2x2x2"


def layer_bytes_per_token(c: MobileBertConfig, seq_len: int, policy: str,
                          training: bool = True) -> dict[str, int]:
    """Bytes one block keeps per token for its backward pass, by tensor (reference §2 layout).

    none: the inputs of every matmul (compute dtype), the q/k/v projections and the FFN
    activation's input (compute dtype), each norm's float32 input, the float32 softmax output
    over `num_attention_heads × seq_len` scores per token with its dropout mask (1 byte) and its
    compute-dtype copy, and 1-byte masks of the hidden dropouts. dots_no_batch: the block's float32
    input and the outputs of its dense layers (compute dtype); the rest is recomputed. full: the
    block's float32 input only.
    """
    cb = 2 if c.dtype == "bfloat16" else 4
    f32, H, d, inner = 4, c.hidden_size, c.inner_size, c.intermediate_size
    ffns = c.num_feedforward_networks
    if policy == "full":
        return {"block input": f32 * H}
    bottleneck_outs = (d if c.use_bottleneck else 0) + (d if c.key_query_shared_bottleneck else 0)
    if policy == "dots_no_batch":
        dense_outs = bottleneck_outs + 3 * d + d + ffns * (inner + d) + (H if c.use_bottleneck
                                                                         else 0)
        return {"block input": f32 * H, "dense outputs": cb * dense_outs}
    if policy != "none":
        raise ValueError(f"unknown remat policy {policy!r}; expected one of {REMAT_POLICIES}")
    matmul_inputs = H + (d if c.key_query_shared_bottleneck or c.use_bottleneck_attention else 0)
    matmul_inputs += d + ffns * (d + inner) + (d if c.use_bottleneck else 0)
    norms = bottleneck_outs + d + ffns * d + (H if c.use_bottleneck else 0)
    scores = c.num_attention_heads * seq_len
    attn_dropout = training and c.attention_probs_dropout_prob > 0
    hidden_dropout = training and c.hidden_dropout_prob > 0
    dropped = (H if c.use_bottleneck else 2 * H) if hidden_dropout else 0
    return {"matmul inputs": cb * matmul_inputs, "q/k/v": cb * 3 * d,
            "ffn activation inputs": cb * ffns * inner, "norm inputs": f32 * norms,
            "softmax": (f32 + cb + (1 if attn_dropout else 0)) * scores,
            "dropout masks": dropped}


def embedding_bytes_per_token(c: MobileBertConfig) -> int:
    """Trigram input of the embedding transformation (compute dtype), the norm's float32 input
    and the dropout mask."""
    cb = 2 if c.dtype == "bfloat16" else 4
    return cb * c.embedding_input_width + 4 * c.hidden_size + c.hidden_size


def head_bytes_per_sequence(c: MobileBertConfig, predictions: int) -> int:
    """MLM head at the gathered positions: transform input/activation/norm, then float32 logits
    over the vocabulary and their softmax (the largest term)."""
    cb = 2 if c.dtype == "bfloat16" else 4
    return predictions * (3 * cb * c.hidden_size + 4 * c.hidden_size + 2 * 4 * c.vocab_size)


def activation_bytes(c: MobileBertConfig, micro_batch_per_device: int, seq_len: int,
                     predictions: int, policy: str) -> dict[str, float]:
    """Analytic activations of one device's micro-batch: saved per layer × layers, plus, under a
    remat policy, one block's recomputed set during its backward pass; embeddings and MLM head."""
    tokens = micro_batch_per_device * seq_len
    per_layer = sum(layer_bytes_per_token(c, seq_len, policy).values()) * tokens
    recompute = 0 if policy == "none" else sum(
        layer_bytes_per_token(c, seq_len, "none").values()) * tokens
    return {"per_layer": per_layer, "layers": per_layer * c.num_hidden_layers,
            "recompute": recompute, "embeddings": embedding_bytes_per_token(c) * tokens,
            "head": head_bytes_per_sequence(c, predictions) * micro_batch_per_device}


def teacher_bytes(t: MobileBertConfig, micro_batch_per_device: int, seq_len: int,
                  predictions: int, stage: str, all_teacher_layers: bool) -> dict[str, float]:
    """Activations of the frozen teacher in a distillation step (one device's micro-batch): its
    forward pass keeps one block's intermediates at a time (nothing is differentiated) and the
    outputs the losses read stay until the backward pass: at a transfer stage the compared
    layer's hidden state (compute dtype) and float32 attention map, plus every hidden state
    when mean/variance compare with all teacher layers; in pre-training distillation the MLM
    logits and their softmax (float32) at the masked positions."""
    cb = 2 if t.dtype == "bfloat16" else 4
    tokens = micro_batch_per_device * seq_len
    forward = (sum(layer_bytes_per_token(t, seq_len, "none", training=False).values())
               + embedding_bytes_per_token(t)) * tokens
    if stage == "transfer":
        layers = t.num_hidden_layers + 1 if all_teacher_layers else 1
        kept = (cb * t.hidden_size * layers + 4 * t.num_attention_heads * seq_len) * tokens
    else:
        kept = 2 * 4 * t.vocab_size * predictions * micro_batch_per_device
    return {"forward": forward, "kept": kept}


def distill_activations(s: MobileBertConfig, t: MobileBertConfig, micro: int, seq_len: int,
                        predictions: int, policy: str, all_teacher_layers: bool) -> dict:
    """Student + teacher activations of the larger of the two kinds of distillation step: the
    last layer-wise transfer stage (every student block differentiated) and pre-training
    distillation."""
    act = activation_bytes(s.replace(remat=policy), micro, seq_len, predictions, policy)
    encoder = act["layers"] + act["recompute"] + act["embeddings"]
    # The transfer losses read the student's last attention map in float32 too.
    student_at = 4 * s.num_attention_heads * seq_len * micro * seq_len
    stages = {}
    for stage, student in (("transfer", encoder + student_at), ("pd", encoder + act["head"])):
        teacher = teacher_bytes(t, micro, seq_len, predictions, stage, all_teacher_layers)
        stages[stage] = {"student": student, "teacher": teacher["forward"] + teacher["kept"]}
    stage = max(stages, key=lambda k: sum(stages[k].values()))
    return {"stage": stage, **stages[stage]}


def state_bytes(c: MobileBertConfig, mesh: tuple[int, ...]) -> tuple[int, int]:
    """(params, LAMB state) bytes per device under the default rules on an abstract mesh."""
    reports = layout(c, mesh)
    return reports["params"].per_device_bytes, reports["opt_state"].per_device_bytes


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The frozen teacher of a distillation plan (no LAMB state, no gradients): its config (a
    preset in the student's compute dtype, since a plan reads no checkpoint), its params' bytes
    per device and whether mean/variance compare with all its layers."""
    config: MobileBertConfig
    params: int
    all_layers: bool


def plan_row(c: MobileBertConfig, target: Target, mesh: tuple[int, ...], batch: int,
             seq_len: int, predictions: int, policy: str, accum: int,
             state: tuple[int, int], teacher: Teacher | None = None) -> dict:
    ways = mesh[0] * mesh[1]
    if batch % (accum * ways):
        raise ValueError(f"batch {batch} does not split into {accum} micro-batches over "
                         f"{ways} data x fsdp devices")
    micro = batch // accum // ways
    params, opt = state
    grads = params * (2 + (accum > 1))
    row = {"remat": policy, "grad_accum_steps": accum, "micro_batch_per_device": micro,
           "params": params, "opt_state": opt, "grads_and_updates": grads}
    if teacher is None:
        act = activation_bytes(c.replace(remat=policy), micro, seq_len, predictions, policy)
        activations = act["layers"] + act["recompute"] + act["embeddings"] + act["head"]
        total = params + opt + grads + activations
    else:
        act = distill_activations(c, teacher.config, micro, seq_len, predictions, policy,
                                  teacher.all_layers)
        activations = act["student"]
        total = params + opt + grads + teacher.params + activations + act["teacher"]
        row.update(stage=act["stage"], teacher_params=teacher.params,
                   teacher_activations=act["teacher"])
    return {**row, "activations": activations, "total": total,
            "fits": total <= USABLE_FRACTION * target.bytes_per_device}


def propose(c, target, mesh, batch, seq_len, predictions, state,
            teacher: Teacher | None = None) -> dict | None:
    """The first setting that fits: fewest micro-batches, then none < dots_no_batch < full."""
    ways = mesh[0] * mesh[1]
    for accum in (a for a in range(1, batch // ways + 1) if batch % (a * ways) == 0):
        for policy in ("none", "dots_no_batch", "full"):
            row = plan_row(c, target, mesh, batch, seq_len, predictions, policy, accum, state,
                           teacher)
            if row["fits"]:
                return row
    return None


@functools.cache
def check_devices(count: int) -> list:
    """`count` compile-only TPU v4 devices (XLA:TPU from libtpu) for the check (built once: every
    compile of the check uses them)."""
    try:
        devices = topologies.topology_devices(topologies.target(CHECK_TOPOLOGY))
    except ValueError as e:
        raise cli.CommandError(f"the check compiles with XLA:TPU and cannot ({e}); install "
                               "the tpu extra (pip install -e '.[tpu]') or pass --check=false"
                               ) from None
    return devices[:count]


def batch_spec(batch: int, seq_len: int, predictions: int, sharding) -> dict:
    """Shapes and dtypes of a pretraining batch (`data/loader.py`), placed by `sharding`."""
    def spec(shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    return {"input_ids": spec((batch, seq_len)), "input_mask": spec((batch, seq_len)),
            "segment_ids": spec((batch, seq_len)),
            "masked_lm_positions": spec((batch, predictions)),
            "masked_lm_ids": spec((batch, predictions)),
            "masked_lm_weights": spec((batch, predictions), jnp.float32),
            "next_sentence_labels": spec((batch,))}


def xla_grad_temporaries(c: MobileBertConfig, batch: int, seq_len: int, predictions: int,
                         mesh_shape: tuple[int, ...]) -> int:
    """XLA:TPU's temporaries per device of the train step's forward and backward pass (`jax.grad`
    of the pretraining loss, gradients out in the params' shardings) on the check's devices."""
    mesh = parallel.make_mesh(mesh_shape, check_devices(math.prod(mesh_shape)))
    rules = parallel.rules_from_config(parallel.DEFAULT_RULES)
    model = MobileBertForPreTraining(c)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids)["params"])
    param_sh = parallel.logical_shardings(boxed, mesh, rules)
    params = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.meta.unbox(boxed),
        param_sh)
    example = batch_spec(batch, seq_len, predictions, parallel.batch_sharding(mesh))

    def loss(p, b):
        out = objectives.forward(model, p, b, deterministic=False, rng=jax.random.PRNGKey(0))
        return objectives.pretraining_losses(out, b)[0]

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = jax.jit(jax.grad(loss), out_shardings=param_sh).lower(params, example).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def check(policies, depths=CHECK_LAYERS) -> list[dict]:
    """Per policy, on the check config: XLA's temporaries of the forward and backward pass at
    each depth (measured) next to the analytic activations (estimated), and the growth per layer
    between the first and last depth in both."""
    ways = CHECK_MESH[0] * CHECK_MESH[1]
    rows = []
    for policy in policies:
        configs = [MobileBertConfig.from_dict({**PRESETS["ibbert_large"], **CHECK,
                                               "remat": policy, "num_hidden_layers": n})
                   for n in depths]
        xla = [xla_grad_temporaries(m, CHECK_BATCH, CHECK_SEQ, CHECK_PREDICTIONS, CHECK_MESH)
               for m in configs]
        acts = [activation_bytes(m, CHECK_BATCH // ways, CHECK_SEQ, CHECK_PREDICTIONS, policy)
                for m in configs]
        row = {"remat": policy, "depths": list(depths), "xla_temp_bytes": xla,
               "analytic_bytes": [sum(a[k] for k in ("layers", "recompute", "embeddings", "head"))
                                  for a in acts],
               "analytic_per_layer": acts[-1]["per_layer"]}
        if len(depths) > 1:
            row["xla_per_layer"] = (xla[-1] - xla[0]) / (depths[-1] - depths[0])
        rows.append(row)
    return rows


def load_average() -> str:
    """This machine's 1/5/15-minute load average (the check's timings share it)."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


@cli.guarded
def main(argv):
    del argv
    FLAGS = flags.FLAGS
    config = FLAGS.config
    if config is None:
        raise ValueError("--config is required")
    topologies.host_on_cpu()
    target = TARGETS[FLAGS.target]
    c = MobileBertConfig.from_dict(config.model.to_dict())
    policy = FLAGS.remat or c.remat
    accum = FLAGS.grad_accum_steps or config.grad_accum_steps
    batch = FLAGS.batch_size or config.batch_size
    seq_len = FLAGS.seq_len or config.data.seq_len
    predictions = config.data.max_predictions_per_seq
    shape = (tuple(int(x) for x in FLAGS.mesh.split("x")) if FLAGS.mesh
             else tuple(config.mesh.shape))
    mesh = parallel.mesh_shape(shape, target.devices)
    results = {"cpus": os.cpu_count(), "load_average_before": load_average(),
               "target": FLAGS.target, "target_source": target.source,
               "bytes_per_device": target.bytes_per_device, "usable_fraction": USABLE_FRACTION,
               "mesh": mesh, "batch_size": batch, "seq_len": seq_len,
               "predictions": predictions, "dtype": c.dtype}
    if FLAGS.check:
        print(f"check config (IB-BERT shape {CHECK}, batch {CHECK_BATCH} x seq {CHECK_SEQ}, "
              f"mesh {CHECK_MESH} of TPU v4 chips, compiled for {CHECK_TOPOLOGY}): forward + "
              "backward temporaries per device added per layer:")
        print(f"  {'remat':<15}{'XLA:TPU (measured)':>20}{'analytic (estimated)':>22}{'ratio':>8}")
        results["check"] = check(REMAT_POLICIES)
        for r in results["check"]:
            print(f"  {r['remat']:<15}{r['xla_per_layer'] / 2 ** 20:>16.2f} MiB"
                  f"{r['analytic_per_layer'] / 2 ** 20:>18.2f} MiB"
                  f"{r['xla_per_layer'] / r['analytic_per_layer']:>8.2f}")
    state = state_bytes(c, mesh)
    teacher = None
    if config.trainer == "distill":
        t = get_config(FLAGS.teacher_preset, dtype=c.dtype)
        all_layers = bool(config.transfer.all_teacher_layers)
        teacher = Teacher(t, layout(t, mesh)["params"].per_device_bytes, all_layers)
        results.update(teacher_preset=FLAGS.teacher_preset, all_teacher_layers=all_layers)
    row = plan_row(c, target, mesh, batch, seq_len, predictions, policy, accum, state, teacher)
    best = propose(c, target, mesh, batch, seq_len, predictions, state, teacher)
    results.update(chosen=row, proposed=best, load_average_after=load_average())
    print(f"target {FLAGS.target}: {target.devices} devices x {_gib(target.bytes_per_device)} GiB "
          f"({target.source}); usable {USABLE_FRACTION:.0%}; mesh {mesh}")
    print(f"{c.num_hidden_layers}-layer model, {c.dtype}, batch {batch} x seq {seq_len}; "
          "analytic estimate, GiB per device:")
    if teacher:
        print(f"  with the frozen teacher ({FLAGS.teacher_preset}, {teacher.config.dtype}; "
              "'teacher' = its params + activations) at the larger of the last transfer stage "
              "and pre-training distillation ('stage')")
    extra = f"{'teacher':>8}{'stage':>10}" if teacher else ""
    print(f"  {'remat':<15}{'accum':>6}{'micro/dev':>10}{'params':>8}{'LAMB':>8}{'grads':>8}"
          f"{'activ.':>8}{extra}{'total':>8}  fits")
    for r, what in ((row, "chosen"), (best, "proposed")):
        if r is None:
            print(f"  proposed: nothing fits up to {batch // (mesh[0] * mesh[1])} micro-batches")
            continue
        extra = (f"{_gib(r['teacher_params'] + r['teacher_activations']):>8}{r['stage']:>10}"
                 if teacher else "")
        print(f"  {r['remat']:<15}{r['grad_accum_steps']:>6}{r['micro_batch_per_device']:>10}"
              f"{_gib(r['params']):>8}{_gib(r['opt_state']):>8}{_gib(r['grads_and_updates']):>8}"
              f"{_gib(r['activations']):>8}{extra}{_gib(r['total']):>8}  {r['fits']} ({what})")
    print(f"load average {results['load_average_before']} -> {results['load_average_after']}")
    if FLAGS.json:
        files.write_json(FLAGS.json, results)
        print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Pretraining config file.", lock_config=True)
    flags.DEFINE_enum("target", "v4-64", list(TARGETS), "Target machine.")
    flags.DEFINE_string("mesh", None, "data x fsdp x tensor, e.g. 4x8x1 (default: the config's "
                        "mesh.shape on the target's devices).")
    flags.DEFINE_enum("remat", None, list(REMAT_POLICIES), "Remat policy (default: the config's).")
    flags.DEFINE_integer("grad_accum_steps", None,
                         "Micro-batches per step (default: the config's).")
    flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's).")
    flags.DEFINE_integer("seq_len", None, "Sequence length (default: the config's data.seq_len).")
    flags.DEFINE_enum("teacher_preset", "ibbert_large", list(PRESETS),
                      "The teacher of a distillation config's plan.")
    flags.DEFINE_bool("check", True, "Also compare the analytic count with XLA:TPU on a check "
                      "config (needs libtpu).")
    flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
