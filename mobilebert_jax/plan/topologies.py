"""The Cloud TPU slices a config can be compiled for: their names, libtpu's topology strings,
the HBM per device XLA allows, and the slice's compile-only devices and mesh (the compiler in
libtpu, `pip install -e ".[tpu]"`; no TPU needed).

Verified with libtpu 0.0.42.1 (jax 0.10.2): `get_topology_desc(platform="tpu", topology_name=T,
chip_config_name=C)` accepts T = "v4:AxBxC" and "v5p:AxBxC" with C "megacore" (one device per
chip; v4 "default" gives a device per core, 2 per chip; v5p "default" also gives one per chip),
"v5e:AxB" and "v6e:AxB" with C "default" ("megacore" is refused: one core per chip); names such as
"v5litepod:2x2" or "v6:2x2" are refused. Hosts hold 2x2 chips unless `chips_per_host_bounds`
says otherwise: (1, 1, 1) for "v5e:1x1" / "v6e:1x1" (required), (2, 4, 1) for the one-host
"v5e:2x4" / "v6e:2x4". `num_slices=N` gives N slices (devices carry `slice_index`).
Device kinds: "TPU v4", "TPU v5", "TPU v5 lite", "TPU v6 lite". A compile-only device reports no
memory; the HBM per device XLA allows (from its RESOURCE_EXHAUSTED message) is 30.75 GiB on v4
(15.25 GiB per core with "default"), 95.74 GiB on v5p, 15.75 GiB on v5e and 31.25 GiB on v6e.
"""
from __future__ import annotations

import dataclasses
import os

from jax.sharding import Mesh

from mobilebert_jax import cli, parallel

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Generation:
    libtpu: str  # the topology name's prefix libtpu accepts
    chip_config: str
    hbm: str  # per chip, from the Cloud TPU data sheet
    usable_bytes: int  # per device: what XLA allows (its RESOURCE_EXHAUSTED message)
    topologies: dict  # Cloud size (the number in v4-8, v5litepod-4) -> chip grid


_CUBE = {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8",
         512: "4x8x8", 1024: "8x8x8"}  # v4-N / v5p-N: N counts TensorCores, 2 per chip
_PLANE = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
          256: "16x16"}  # v5litepod-N / v6e-N: N chips of one core
GENERATIONS = {
    "v4": Generation("v4", "megacore", "32 GiB HBM2", int(30.75 * GIB),
                     {n: t for n, t in _CUBE.items() if n <= 512}),
    "v5p": Generation("v5p", "megacore", "95 GB HBM2e", int(95.74 * GIB), _CUBE),
    "v5litepod": Generation("v5e", "default", "16 GB HBM2", int(15.75 * GIB), _PLANE),
    "v6e": Generation("v6e", "default", "32 GB HBM", int(31.25 * GIB), _PLANE),
}
ALIASES = {"v5e": "v5litepod"}  # libtpu's name of the v5litepod generation


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # as given: a Cloud TPU type (v4-8) or a libtpu topology (v4:2x2x1)
    topology: str  # libtpu's topology name
    chip_config: str
    generation: Generation

    @property
    def usable_bytes(self) -> int:
        if self.generation.libtpu == "v4" and self.chip_config == "default":
            return int(15.25 * GIB)  # one device per TensorCore, half a chip's HBM
        return self.generation.usable_bytes


def target(name: str, chip_config: str | None = None) -> Target:
    """A Cloud TPU type (`v4-8`, `v5p-128`, `v5litepod-16`, `v6e-256`) or a libtpu topology
    name (`v4:2x2x1`) as a Target."""
    if ":" in name:
        prefix, grid = name.split(":", 1)
        gen = next((g for g in GENERATIONS.values() if g.libtpu == prefix), None)
    else:
        prefix, _, size = name.partition("-")
        gen = GENERATIONS.get(ALIASES.get(prefix, prefix))
        grid = gen.topologies.get(int(size)) if gen and size.isdigit() else None
    if gen is None or grid is None:
        known = ", ".join(f"{p}-{{{','.join(map(str, g.topologies))}}}"
                          for p, g in GENERATIONS.items())
        raise ValueError(f"--topology={name!r}: unknown TPU slice; known: {known}, or a libtpu "
                         f"topology such as v4:2x2x1")
    return Target(name, f"{gen.libtpu}:{grid}", chip_config or gen.chip_config, gen)


def topology_devices(t: Target, num_slices: int = 1) -> list:
    """The slice's compile-only devices (libtpu's compiler; no TPU needed)."""
    from jax.experimental import topologies

    # libtpu's start-up looks for the TPU VM it runs on and warns on stderr when it finds none:
    # naming the slice quiets it (a compile-only topology does not depend on it). Its lock file
    # lets one process at a time load it; compiling opens no chip, so another may hold it.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", t.name if ":" not in t.name else "v4-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    if t.topology.endswith((":1x1", ":2x4")):  # single-host slices (libtpu: 2x2 chips a host)
        kwargs["chips_per_host_bounds"] = (1, 1, 1) if t.topology.endswith("1x1") else (2, 4, 1)
    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=t.topology,
                                            chip_config_name=t.chip_config, **kwargs)
    except RuntimeError as e:  # JaxRuntimeError, or no libtpu
        raise ValueError(f"--topology={t.name} ({t.topology}, chip config {t.chip_config}): "
                         f"{cli.one_line(e)}") from None
    return list(topo.devices)


def make_mesh(shape, devices, dcn_shape=(-1, 1, 1)) -> Mesh:
    """The trainer's mesh (`parallel.make_mesh`: with several slices, `dcn_shape` of them per
    axis) over `devices`. A shape that it cannot lay on the slice's torus is an error, as it
    would be in the run."""
    try:
        return parallel.make_mesh(shape, devices, dcn_shape)
    except NotImplementedError as e:  # jax's mesh_utils: no torus axis assignment
        raise ValueError(f"mesh {parallel.mesh_shape(shape, len(devices))} over "
                         f"{len(devices)} devices: the trainer's parallel.make_mesh cannot "
                         f"lay it on the torus ({str(e).split('. ')[0]})") from None
