"""The Cloud TPU slices and NVIDIA GPU hosts a config can be compiled for: their names, the
compilers' topology strings, the memory per device a run may use, and their compile-only devices
and mesh (XLA:TPU from libtpu, `pip install -e ".[tpu]"`; XLA:GPU from JAX's CUDA plugin,
`pip install -e ".[gpu-compile]"`; no TPU or GPU needed).

GPUs: `get_topology_desc(platform="cuda", topology="SLICESxHOSTSxGPUS",
target_config=GpuTargetConfigProto text)` (JAX 0.10.2, jax-cuda12-plugin 0.10.2, ptxas and
libdevice from nvidia-cuda-nvcc-cu12) compiles deviceless once JAX runs on the CPU platform;
`cost_analysis` is not implemented there, and nothing is autotuned.

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
import re

import jax
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


# NVIDIA GPUs, compiled by XLA:GPU without a GPU (the `gpu-compile` extra: JAX's CUDA plugin and
# ptxas): the GpuTargetConfigProto fields XLA reads in place of a device's own description.
_GPU_INFO = ("threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152 "
             "shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 "
             "fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 "
             "block_dim_limit_z: 65535 l2_cache_size: 52428800 clock_rate_ghz: 1.98 "
             "shared_memory_per_block_optin: 232448 cuda_compute_capability { major: 9 } "
             "registers_per_core_limit: 65536 registers_per_block_limit: 65536")
GPU_MEMORY_FRACTION = 0.92  # of a GPU's memory a run may use: launch/gpu_host.sh's
# XLA_PYTHON_CLIENT_MEM_FRACTION


@dataclasses.dataclass(frozen=True)
class Gpu:
    description: str  # as the device names itself
    memory: str  # from the data sheet
    memory_bytes: int  # as the device reports it
    bandwidth: int  # bytes per second

    def target_config(self) -> str:
        """XLA:GPU's target config (GpuTargetConfigProto, text format)."""
        return (f"gpu_device_info {{ {_GPU_INFO} device_memory_size: {self.memory_bytes} "
                f"memory_bandwidth: {self.bandwidth} }} platform_name: \"CUDA\" "
                "dnn_version_info { major: 9 minor: 7 } runtime_version { major: 12 minor: 8 } "
                f"device_description_str: \"{self.description}\"")


GPUS = {"H100": Gpu("NVIDIA H100 80GB HBM3", "80 GB HBM3", 84_929_347_584, 3_352_320_000_000),
        "H200": Gpu("NVIDIA H200", "141 GB HBM3e", 150_754_820_096, 4_800_000_000_000)}
GPUS_PER_HOST = 8
_GPU_NAME = re.compile(r"^(\d+)x(H100|H200)$")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # as given: a Cloud TPU type (v4-8), a libtpu topology (v4:2x2x1) or NxH100
    topology: str  # libtpu's topology name; GPUs: slices x hosts x GPUs per host
    chip_config: str  # libtpu's chip config; GPUs: ""
    generation: Generation | None
    gpu: Gpu | None = None

    @property
    def platform(self) -> str:
        return "cuda" if self.gpu else "tpu"

    @property
    def memory(self) -> str:
        """The memory of one chip or GPU, from its data sheet."""
        return self.gpu.memory if self.gpu else self.generation.hbm

    @property
    def compiler(self) -> str:
        return ("XLA:GPU, deviceless (no autotuning)" if self.gpu
                else f"XLA:TPU, chip config {self.chip_config}")

    @property
    def usable_bytes(self) -> int:
        if self.gpu:
            return int(GPU_MEMORY_FRACTION * self.gpu.memory_bytes)
        if self.generation.libtpu == "v4" and self.chip_config == "default":
            return int(15.25 * GIB)  # one device per TensorCore, half a chip's HBM
        return self.generation.usable_bytes


def target(name: str, chip_config: str | None = None) -> Target:
    """A Cloud TPU type (`v4-8`, `v5p-128`, `v5litepod-16`, `v6e-256`), a libtpu topology
    name (`v4:2x2x1`) or N GPUs (`8xH100`, `16xH200`: hosts of 8) as a Target."""
    m = _GPU_NAME.match(name)
    if m:
        n = int(m[1])
        if n < 1 or (n > GPUS_PER_HOST and n % GPUS_PER_HOST):
            raise ValueError(f"--topology={name!r}: up to {GPUS_PER_HOST} GPUs or hosts of "
                             f"{GPUS_PER_HOST}")
        hosts = max(1, n // GPUS_PER_HOST)
        return Target(name, f"1x{hosts}x{n // hosts}", "", None, GPUS[m[2]])
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
        raise ValueError(f"--topology={name!r}: unknown TPU slice or GPUs; known: {known}, a "
                         f"libtpu topology such as v4:2x2x1, or NxH100 / NxH200")
    return Target(name, f"{gen.libtpu}:{grid}", chip_config or gen.chip_config, gen)


def host_on_cpu() -> None:
    """Keeps JAX's own backend on this machine's CPU (unless JAX_PLATFORMS names one): a plan
    compiles for compile-only devices and never starts, holds or probes a local accelerator (with
    libtpu installed, probing for a TPU VM that is not there fills stderr with warnings)."""
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")


def topology_devices(t: Target, num_slices: int = 1) -> list:
    """The slice's compile-only devices (libtpu's compiler; no TPU needed), or the GPUs'
    (XLA:GPU from JAX's CUDA plugin; no GPU needed)."""
    from jax.experimental import topologies

    if t.gpu:
        if num_slices > 1:
            raise ValueError(f"--num_slices={num_slices}: slices are TPU pods'; give the GPU "
                             f"count ({t.name}) instead")
        try:
            topo = topologies.get_topology_desc(platform="cuda", topology=t.topology,
                                                target_config=t.gpu.target_config())
        except (RuntimeError, NotImplementedError) as e:  # no CUDA plugin, no ptxas
            raise ValueError(f"--topology={t.name}: XLA:GPU cannot compile here "
                             f"({cli.one_line(e)}); install the gpu-compile extra "
                             "(pip install -e '.[gpu-compile]')") from None
        return list(topo.devices)

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
