"""Device mesh, logical-axis rules, parameter/state/batch shardings: the only place that knows how
arrays are laid out on devices.

The mesh has three axes, `data`, `fsdp` and `tensor` (any may be 1; -1 takes the devices left).
Model code names axes logically (`embed`, `mlp`, `qkv`, `vocab`, `batch`, ...); `rules` in the
config map them to mesh axes. A logical name may appear in several rules: flax takes the rules in
order and gives a dimension the first mesh axis its other dimensions have not taken, so every
weight matrix gets one dimension on `fsdp` and the other on `tensor` (`ROW_SPLIT_RULES`, which
the TPU v4-64 teacher config uses, splits the kernels that leave the attention and the FFN on
their input side only). A mesh axis that does not
divide its dimension evenly moves to another dimension of the array that it divides (a 30,522-row
vocabulary's tensor axis goes to the 128-wide embedding dimension); when none does, the array is
replicated along it, and `sharding_report` lists the arrays that end up fully replicated.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_embed", None),
    ("vocab", "tensor"),
    ("qkv", "tensor"),
    ("qkv_rows", "tensor"),
    ("mlp", "tensor"),
    ("mlp_rows", "tensor"),
    ("embed", "fsdp"),
    ("inner", "fsdp"),
    ("inner", "tensor"),
    ("embedding", "fsdp"),
    ("embedding", "tensor"),
    ("embed_out", "tensor"),
    ("position", "tensor"),
    ("token_type", None),
    ("classes", None),
)

# The kernels that leave the attention and the FFN (`qkv_rows`, `mlp_rows`) with their input side
# over `tensor` × `fsdp` (Megatron's row-parallel split with FSDP's inside it) and their output
# side whole. XLA:TPU all-reduces a gradient whole instead of reduce-scattering it when the mesh
# splits it along the dimension its layout keeps minor: for IB-BERT_LARGE's [1024, 1024] and
# [4096, 1024] kernels on `fsdp` 8 that is the default rules' split (docs/scaling.md).
ROW_SPLIT_RULES = (("qkv_rows", ("tensor", "fsdp")),
                   ("mlp_rows", ("tensor", "fsdp"))) + DEFAULT_RULES


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Resolves one -1 entry to the devices left; checks that the product is `num_devices`."""
    shape = [int(s) for s in shape]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries "
                         f"{MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one entry may be -1")
    known = math.prod(s for s in shape if s != -1)
    if known <= 0 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh shape {tuple(shape)}: entries must be positive or -1")
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh shape {tuple(shape)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, "
                         f"{num_devices} available")
    return tuple(shape)


def num_slices(devices) -> int:
    """The TPU slices `devices` span (their `slice_index`; 1 for devices without one)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None,
              dcn_shape: Sequence[int] = (-1, 1, 1)) -> Mesh:
    """The (data, fsdp, tensor) mesh of `shape` (over all devices) on `devices`. On several TPU
    slices (multislice) `dcn_shape` says how many slices each axis spans (-1: the slices left;
    the default puts them on `data`: data parallelism across slices, whose gradient reduction
    is the only traffic between them) and `shape` / `dcn_shape` is the mesh inside a slice."""
    devices = jax.devices() if devices is None else devices
    resolved = mesh_shape(shape, len(devices))
    slices = num_slices(devices)
    try:
        dcn = mesh_shape(dcn_shape, slices)
    except ValueError:
        raise ValueError(f"mesh.dcn_shape {tuple(dcn_shape)} does not fit the {slices} "
                         f"slice(s) the devices span (its entries multiply to the slice count; "
                         f"-1 takes the slices left)") from None
    if slices == 1:
        grid = mesh_utils.create_device_mesh(resolved, devices=devices)
    else:
        if any(r % d for r, d in zip(resolved, dcn)):
            raise ValueError(f"mesh shape {resolved} does not split over the slices as "
                             f"mesh.dcn_shape {dcn} says")
        ici = tuple(r // d for r, d in zip(resolved, dcn))
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                    allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules) -> tuple:
    """Config rules (a sequence of (logical, mesh axis | tuple | None)) as a tuple of tuples."""
    out = []
    for logical, physical in rules:
        if isinstance(physical, list):
            physical = tuple(physical)
        out.append((logical, physical))
    return tuple(out)


def _axis_names(axes) -> tuple[str, ...]:
    return () if axes is None else (axes if isinstance(axes, tuple) else (axes,))


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drops mesh axes from dimensions they do not divide evenly and moves each to the dimension
    with the most elements per shard that it still divides; an axis none divides is dropped."""
    padded = tuple(spec) + (None,) * (len(shape) - len(spec))
    names = [_axis_names(axes) for axes in padded]
    ways = [math.prod(mesh.shape[n] for n in dim) for dim in names]
    dropped = []
    for i, size in enumerate(shape):
        if size % ways[i]:
            dropped += [n for n in names[i] if mesh.shape[n] > 1]
            names[i], ways[i] = (), 1
    for n in dropped:
        fits = [i for i, size in enumerate(shape) if size % (ways[i] * mesh.shape[n]) == 0]
        if fits:
            i = max(fits, key=lambda j: shape[j] // ways[j])
            names[i], ways[i] = names[i] + (n,), ways[i] * mesh.shape[n]
    return P(*(axes if _axis_names(axes) == dim else (dim[0] if len(dim) == 1 else dim or None)
               for axes, dim in zip(padded, names)))


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings for a tree of boxed (`nn.Partitioned`) abstract values; unboxed leaves
    (scalars, counters) are replicated."""
    specs = nn.get_partition_spec(abstract_tree)
    shapes = nn.meta.unbox(abstract_tree)

    def to_sharding(spec, leaf):
        spec = nn.logical_to_mesh_axes(tuple(spec), rules) if spec is not None else P()
        return NamedSharding(mesh, _fit_spec(spec, tuple(leaf.shape), mesh))

    return jax.tree_util.tree_map(to_sharding, specs, shapes,
                                  is_leaf=lambda x: isinstance(x, P))


@dataclasses.dataclass(frozen=True)
class ShardingReport:
    """Where the bytes of a tree of arrays lie: in all, on each device, and the arrays that no
    mesh axis splits, as (name, shape, bytes)."""

    total_bytes: int
    per_device_bytes: int
    replicated: tuple[tuple[str, tuple[int, ...], int], ...]

    @property
    def replicated_bytes(self) -> int:
        return sum(nbytes for _, _, nbytes in self.replicated)

    @property
    def sharded_fraction(self) -> float:
        return 1.0 - self.replicated_bytes / self.total_bytes if self.total_bytes else 1.0

    def summary(self, what: str = "parameter") -> str:
        mib = 2 ** 20
        return (f"{self.sharded_fraction:.1%} of {what} bytes sharded "
                f"({self.per_device_bytes / mib:.1f} of {self.total_bytes / mib:.1f} MiB per "
                f"device); replicated: {len(self.replicated)} tensors, "
                f"{self.replicated_bytes / mib:.2f} MiB")


def sharding_report(tree: Any, shardings: Any) -> ShardingReport:
    """The layout of `tree` (arrays or `jax.ShapeDtypeStruct`s, unboxed) under `shardings`
    (NamedShardings, on a concrete or abstract mesh)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    total = per_device = 0
    replicated = []
    for (path, leaf), sharding in zip(leaves, treedef.flatten_up_to(shardings)):
        nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        ways = math.prod(sharding.mesh.shape[n] for axes in sharding.spec
                         for n in _axis_names(axes))
        total += nbytes
        per_device += nbytes // ways
        if ways == 1:
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            replicated.append((name, tuple(leaf.shape), nbytes))
    return ShardingReport(total, per_device, tuple(replicated))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data and fsdp axes."""
    return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's rows into global arrays sharded along the batch axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in host_batch.items()}


def process_rows(global_host_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's contiguous block of a global batch that every process holds whole (the
    layout `global_batch` expects: process i's rows are block i)."""
    n, i = jax.process_count(), jax.process_index()
    return {k: v[len(v) // n * i:len(v) // n * (i + 1)] for k, v in global_host_batch.items()}


def to_host_global(tree) -> Any:
    """Host copies of (possibly batch-sharded) global arrays, whole on every process."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)
    from jax.experimental import multihost_utils

    return jax.tree_util.tree_map(np.asarray,
                                  multihost_utils.process_allgather(tree, tiled=True))


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch_size % ways:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"data×fsdp mesh size {ways}")
    if global_batch_size % jax.process_count():
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"process count {jax.process_count()}")
