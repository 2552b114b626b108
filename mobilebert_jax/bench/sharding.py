"""How the default logical-axis rules lay out the presets' parameters and LAMB optimizer state, as
printed in the README:

    python -m mobilebert_jax.bench.sharding [--models=ibbert_large,mobilebert]
        [--meshes=1x8x1,2x4x1,1x4x2] [--list] [--json=PATH]

Meshes are (data, fsdp, tensor) shapes on an abstract mesh, so no devices are needed and nothing
is allocated (`jax.eval_shape`). For each model and mesh: the share of parameter and optimizer
state bytes that `fsdp`/`tensor` split, the bytes one device holds against the ideal
total / (fsdp x tensor), and with `--list` the parameters left fully replicated.
"""
from __future__ import annotations

from absl import app, flags

from mobilebert_jax import parallel
from mobilebert_jax.bench.common import layout, write_json

flags.DEFINE_list("models", ["ibbert_large", "mobilebert"], "Presets (with MLM/NSP heads).")
flags.DEFINE_list("meshes", ["1x8x1", "2x4x1", "1x4x2"], "Mesh shapes data x fsdp x tensor.")
flags.DEFINE_bool("list", False, "Also list the fully replicated parameters.")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    results = []
    print(f"{'model':<14}{'mesh':<8}{'params sharded':>15}{'LAMB sharded':>14}"
          f"{'MiB/device':>12}{'ideal':>9}{'replicated tensors':>20}")
    for name in FLAGS.models:
        for text in FLAGS.meshes:
            shape = tuple(int(s) for s in text.split("x"))
            if len(shape) != len(parallel.MESH_AXES):
                raise ValueError(f"--meshes: {text!r} is not data x fsdp x tensor")
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
    write_json(FLAGS.json, results)


if __name__ == "__main__":
    app.run(main)
