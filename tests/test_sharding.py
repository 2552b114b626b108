"""Parameter and LAMB-state layout under the default rules, counted from the shardings the trainers
use on the 8 fake CPU devices (all abstract: the teacher is never materialised)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mobilebert_jax import parallel
from mobilebert_jax.models import MobileBertForPreTraining, get_config
from mobilebert_jax.train import core, optim
from tests import helpers

RULES = parallel.rules_from_config(parallel.DEFAULT_RULES)


def abstract_state(name, mesh, rules=RULES, **overrides):
    """(params, opt state) as ShapeDtypeStructs and their shardings, as create_sharded_state
    builds them."""
    model = MobileBertForPreTraining(get_config(name, **overrides))
    ids = jnp.zeros((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids)["params"])
    params = nn.meta.unbox(boxed)
    param_sh = parallel.logical_shardings(boxed, mesh, rules)
    tx, _ = optim.make_optimizer(optim.default_optimizer_config())
    opt_sh = core.opt_state_shardings(tx, params, param_sh, mesh)
    return params, param_sh, jax.eval_shape(tx.init, params), opt_sh


def layout(tree, shardings, mesh):
    """(total bytes, bytes on one device, bytes of arrays split over some axis)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    total = per_device = sharded = 0
    for leaf, sh in zip(leaves, treedef.flatten_up_to(shardings)):
        nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        names = [n for axes in sh.spec if axes is not None
                 for n in (axes if isinstance(axes, tuple) else (axes,))]
        ways = math.prod(mesh.shape[n] for n in names)
        assert math.prod(sh.shard_shape(leaf.shape)) * ways == math.prod(leaf.shape), sh
        total += nbytes
        per_device += nbytes / ways
        sharded += nbytes if ways > 1 else 0
    return total, per_device, sharded


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 4, 1), (1, 4, 2)])
def test_teacher_state_is_spread_over_fsdp_and_tensor(shape):
    mesh = parallel.make_mesh(shape)
    params, param_sh, opt_state, opt_sh = abstract_state("ibbert_large", mesh)
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) > 300e6
    p_total, p_device, p_sharded = layout(params, param_sh, mesh)
    o_total, o_device, o_sharded = layout(opt_state, opt_sh, mesh)
    assert o_total >= 2 * p_total  # LAMB: two moments per parameter
    ways = shape[1] * shape[2]
    assert p_device + o_device <= 1.1 * (p_total + o_total) / ways
    assert p_sharded >= 0.95 * p_total and o_sharded >= 0.95 * o_total
    report = parallel.sharding_report(params, param_sh)
    assert report.total_bytes == p_total and report.per_device_bytes == p_device
    assert report.sharded_fraction == pytest.approx(p_sharded / p_total)


def test_student_is_sharded_over_fsdp():
    mesh = parallel.make_mesh((1, 8, 1))
    params, param_sh, opt_state, opt_sh = abstract_state("mobilebert", mesh)
    for tree, sh in ((params, param_sh), (opt_state, opt_sh)):
        total, per_device, sharded = layout(tree, sh, mesh)
        assert sharded >= 0.95 * total
        assert per_device <= 1.1 * total / 8


@pytest.mark.parametrize("shape", [(1, 8, 1), (1, 4, 2)])
def test_row_split_rules_split_the_kernels_leaving_attention_and_ffn_on_their_input_side(shape):
    """Default rules: every kernel has fsdp on one side and tensor on the other. ROW_SPLIT_RULES
    (the v4-64 teacher's): the attention-output and FFN-output kernels' rows over tensor
    (Megatron's row-parallel split) and fsdp inside it, their columns whole; the kernels that
    enter them unchanged."""
    mesh = parallel.make_mesh(shape)
    rows = ("tensor", "fsdp")

    def spec(sharding):
        return tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))

    def kernels(rules, preset="ibbert_large"):
        layer = abstract_state(preset, mesh, rules, num_hidden_layers=1)[1]["bert"]["encoder"][
            "layer_0"]
        return layer, {"attention output": spec(layer["attention"]["output"]["dense"]["kernel"]),
                       "ffn output": spec(layer["output"]["dense"]["kernel"]),
                       "ffn input": spec(layer["intermediate"]["dense"]["kernel"]),
                       "query": spec(layer["attention"]["self"]["query"]["kernel"])}

    _, default = kernels(RULES)
    assert default == {"attention output": ("tensor", "fsdp"), "ffn output": ("tensor", "fsdp"),
                       "ffn input": ("fsdp", "tensor"), "query": ("fsdp", "tensor")}
    split_rules = parallel.rules_from_config(parallel.ROW_SPLIT_RULES)
    _, split = kernels(split_rules)
    assert split == {"attention output": (rows, None), "ffn output": (rows, None),
                     "ffn input": ("fsdp", "tensor"), "query": ("fsdp", "tensor")}
    student, _ = kernels(split_rules, "mobilebert")
    assert spec(student["ffn_layer_0"]["output"]["dense"]["kernel"]) == (rows, None)
    v4_64 = helpers.config_module("teacher").get_config("v4_64")
    assert parallel.rules_from_config(v4_64.mesh.rules) == split_rules


def test_indivisible_dimension_is_replicated_and_reported():
    mesh = parallel.make_mesh((1, 2, 4))  # 30,522 vocabulary rows: not divisible by 4
    params, param_sh, _, _ = abstract_state("mobilebert", mesh, num_hidden_layers=1)
    bias_sh = param_sh["cls"]["predictions"]["output_bias"]
    assert bias_sh.shard_shape((30522,)) == (30522,)
    table_sh = param_sh["bert"]["embeddings"]["word_embeddings"]
    assert table_sh.shard_shape((30522, 128)) == (30522, 128 // 8)  # tensor moved to columns
    report = parallel.sharding_report(params, param_sh)
    assert ("cls/predictions/output_bias", (30522,), 30522 * 4) in report.replicated
    total, _, sharded = layout(params, param_sh, mesh)
    assert report.replicated_bytes == total - sharded
    assert "replicated: " in report.summary()


def test_planner_layout_on_an_abstract_mesh_matches_the_trainers_shardings():
    from mobilebert_jax.plan import sharding as plan_sharding

    mesh = parallel.make_mesh((1, 8, 1))
    params, param_sh, opt_state, opt_sh = abstract_state("mobilebert", mesh)
    reports = plan_sharding.layout("mobilebert", (1, 8, 1))
    for key, tree, sh in (("params", params, param_sh), ("opt_state", opt_state, opt_sh)):
        want = parallel.sharding_report(tree, sh)
        assert reports[key].per_device_bytes == want.per_device_bytes, key
        assert reports[key].total_bytes == want.total_bytes, key
    with pytest.raises(ValueError, match="is not data x fsdp x tensor"):
        plan_sharding.parse_mesh("2x4")
