"""Device mesh, logical-axis rules, parameter/state/batch shardings: the only place that knows how
arrays are laid out on devices.

The mesh has three axes, `data`, `fsdp` and `tensor` (any may be 1; -1 takes the devices left).
Model code names axes logically (`embed`, `mlp`, `qkv`, `vocab`, `batch`, ...); `rules` in the
config map them to mesh axes. A dimension that a mesh axis does not divide evenly is replicated
instead (e.g. a 30,522-row vocabulary on a 4-way tensor axis).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("vocab", "tensor"),
    ("embedding", None),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("inner", None),
    ("qkv", "tensor"),
    ("mlp", "tensor"),
    ("position", None),
    ("token_type", None),
    ("classes", None),
    ("act_embed", None),
)


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


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    resolved = mesh_shape(shape, len(devices))
    grid = mesh_utils.create_device_mesh(resolved, devices=devices)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules) -> tuple:
    """Config rules (a sequence of (logical, mesh axis | tuple | None)) as a tuple of tuples."""
    out = []
    for logical, physical in rules:
        if isinstance(physical, list):
            physical = tuple(physical)
        out.append((logical, physical))
    return tuple(out)


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drops mesh axes from dimensions they do not divide evenly."""
    dims = []
    for axes, size in zip(tuple(spec) + (None,) * (len(shape) - len(spec)), shape):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        ways = math.prod(mesh.shape[n] for n in names)
        dims.append(axes if ways == 1 or size % ways == 0 else None)
    return P(*dims)


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


def opt_state_shardings(tx, params, param_sh, mesh: Mesh):
    """Shardings of `tx.init(params)`: every slot like its param, counters replicated."""
    repl = replicated(mesh)
    abstract = jax.eval_shape(tx.init, params)
    return optax.tree_utils.tree_map_params(
        tx, lambda _, sh: sh, abstract, param_sh, transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def sharded_init(init_fn: Callable[[], Any], mesh: Mesh, rules) -> tuple[Any, Any]:
    """Runs `init_fn` (returning a tree with boxed params) directly into its shardings.

    `jax.eval_shape` gives the boxed abstract tree without allocating; the logical names become
    NamedShardings; `jax.jit(..., out_shardings=...)` then materializes every array on its
    devices only. Returns (unboxed sharded tree, shardings).
    """
    abstract = jax.eval_shape(init_fn)
    shardings = logical_shardings(abstract, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        tree = jax.jit(lambda: nn.meta.unbox(init_fn()), out_shardings=shardings)()
    return tree, shardings
