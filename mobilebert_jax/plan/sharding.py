"""How the default logical-axis rules lay out the presets' parameters and LAMB optimizer state:

    python -m mobilebert_jax.plan.sharding [--models=ibbert_large,mobilebert]
        [--meshes=1x8x1,2x4x1,1x4x2] [--list] [--json=PATH]

Meshes are (data, fsdp, tensor) shapes on an abstract mesh, so no devices are needed and nothing
is allocated (`jax.eval_shape`). For each model and mesh: the share of parameter and optimizer
state bytes that `fsdp`/`tensor` split, the bytes one device holds against the ideal
total / (fsdp x tensor), and with `--list` the parameters left fully replicated.
"""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import AbstractMesh, AxisType

from mobilebert_jax import cli, files, parallel
from mobilebert_jax.models import MobileBertConfig, MobileBertForPreTraining, get_config
from mobilebert_jax.train import core, optim


def abstract_mesh(shape: tuple[int, ...]) -> AbstractMesh:
    """A (data, fsdp, tensor) mesh of `shape` without devices."""
    if len(shape) != len(parallel.MESH_AXES) or any(n < 1 for n in shape):
        raise ValueError(f"mesh {shape} is not data x fsdp x tensor with positive sizes")
    return AbstractMesh(tuple(shape), parallel.MESH_AXES,
                        axis_types=(AxisType.Auto,) * len(parallel.MESH_AXES))


def layout(model_config: str | MobileBertConfig, shape: tuple[int, ...]) -> dict:
    """Parameter and LAMB-state reports (`parallel.sharding_report`) of a preset name or config
    on an abstract mesh of `shape`, under the default rules."""
    mesh = abstract_mesh(shape)
    if isinstance(model_config, str):
        model_config = get_config(model_config)
    model = MobileBertForPreTraining(model_config)
    ids = jnp.zeros((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids)["params"])
    params = nn.meta.unbox(boxed)
    param_sh = parallel.logical_shardings(boxed, mesh, parallel.DEFAULT_RULES)
    tx, _ = optim.make_optimizer(optim.default_optimizer_config())
    opt_sh = core.opt_state_shardings(tx, params, param_sh, mesh)
    return {"params": parallel.sharding_report(params, param_sh),
            "opt_state": parallel.sharding_report(jax.eval_shape(tx.init, params), opt_sh)}


def parse_mesh(text: str) -> tuple[int, ...]:
    """'2x4x1' -> (2, 4, 1)."""
    try:
        shape = tuple(int(s) for s in text.split("x"))
    except ValueError:
        shape = ()
    if len(shape) != len(parallel.MESH_AXES):
        raise ValueError(f"--meshes: {text!r} is not data x fsdp x tensor")
    return shape


@cli.guarded
def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    results = []
    print(f"{'model':<14}{'mesh':<8}{'params sharded':>15}{'LAMB sharded':>14}"
          f"{'MiB/device':>12}{'ideal':>9}{'replicated tensors':>20}")
    for name in FLAGS.models:
        for text in FLAGS.meshes:
            shape = parse_mesh(text)
            reports = layout(name, shape)
            p, o = reports["params"], reports["opt_state"]
            per_device = (p.per_device_bytes + o.per_device_bytes) / 2 ** 20
            ideal = (p.total_bytes + o.total_bytes) / 2 ** 20 / (shape[1] * shape[2])
            print(f"{name:<14}{text:<8}{p.sharded_fraction:>15.2%}{o.sharded_fraction:>14.2%}"
                  f"{per_device:>12.1f}{ideal:>9.1f}"
                  f"{f'{len(p.replicated)} ({p.replicated_bytes / 1e3:.1f} kB)':>20}")
            if FLAGS.list:
                for path, dims, nbytes in p.replicated:
                    print(f"    replicated {path} {dims} {nbytes:,} B")
            results.append({"model": name, "mesh": shape, "ideal_mib_per_device": ideal,
                            "mib_per_device": per_device,
                            **{f"{k}_sharded_fraction": r.sharded_fraction
                               for k, r in reports.items()},
                            "replicated_params": [list(r) for r in p.replicated]})
    if FLAGS.json:
        files.write_json(FLAGS.json, results)
        print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_list("models", ["ibbert_large", "mobilebert"], "Presets (with MLM/NSP heads).")
    flags.DEFINE_list("meshes", ["1x8x1", "2x4x1", "1x4x2"], "Mesh shapes data x fsdp x tensor.")
    flags.DEFINE_bool("list", False, "Also list the fully replicated parameters.")
    flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
    sys.exit(app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, None)))
