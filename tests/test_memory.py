"""Remat policies: same numbers, less memory; the memory planner's analytic activation count against
XLA:TPU's memory analysis (compile-only devices from libtpu); the teacher variants planned for TPU
v4-64 and 8 GPUs."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mobilebert_jax import config_checks
from mobilebert_jax.models import MobileBertConfig, MobileBertModel, get_config
from mobilebert_jax.models.heads import MobileBertForPreTraining
from tests.helpers import REPO, TINY_MODEL, config_module

teacher = config_module("teacher")
# one block, wider inside than helpers.TINY_MODEL, with dropout
TINY = dict(TINY_MODEL, num_hidden_layers=1, intermediate_size=48, intra_bottleneck_size=32,
            hidden_dropout_prob=0.1)


def test_remat_policies_give_the_same_loss_and_gradients():
    c = get_config("ibbert_large", **TINY)
    ids = jax.random.randint(jax.random.PRNGKey(0), (3, 12), 1, 64)
    params = nn.meta.unbox(MobileBertModel(c).init(jax.random.PRNGKey(1), ids))["params"]

    def loss(p, config):
        out = MobileBertModel(config).apply(
            {"params": p}, ids, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
        return jnp.mean(out.sequence_output ** 2) + jnp.mean(out.pooled_output ** 2)

    step = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    ref_loss, ref_grads = step(params, c)
    for policy in ("full", "dots_no_batch"):
        value, grads = step(params, c.replace(remat=policy))
        np.testing.assert_allclose(value, ref_loss, rtol=1e-6)
        for x, y in zip(jax.tree_util.tree_leaves(ref_grads), jax.tree_util.tree_leaves(grads)):
            np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6)


def test_remat_reads_old_booleans_and_names_unknown_policies(tmp_path):
    assert get_config("mobilebert", remat=True).remat == "full"
    assert get_config("mobilebert", remat=False).remat == "none"
    old = get_config("mobilebert").to_dict()
    old["remat"] = True
    (tmp_path / "model_config.json").write_text(json.dumps(old))
    assert MobileBertConfig.from_json_file(str(tmp_path / "model_config.json")).remat == "full"
    with pytest.raises(ValueError, match=r"^model config: unknown remat 'some'; expected one of"):
        get_config("mobilebert", remat="some")
    config = teacher.get_config("smoke")
    config.model.remat = "every_other"
    with pytest.raises(ValueError, match=r"^config\.model\.remat='every_other': must be one of"):
        config_checks.check_config(config)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """The memory planner on the gpu8 variant, its check compiled by XLA:TPU (in a fresh process:
    libtpu's compile-only devices beside this process's CPU devices)."""
    out = tmp_path_factory.mktemp("memory") / "plan.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "mobilebert_jax.plan.memory",
                        "--config=configs/teacher.py:gpu8", "--target=8xH100", f"--json={out}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text()), r.stdout


def test_full_remat_step_needs_less_xla_memory(plan):
    rows = {r["remat"]: r for r in plan[0]["check"]}
    assert rows["full"]["xla_temp_bytes"][-1] < 0.9 * rows["none"]["xla_temp_bytes"][-1]
    assert rows["full"]["xla_per_layer"] < 0.7 * rows["none"]["xla_per_layer"]


def test_analytic_activations_against_xla(plan):
    rows = {r["remat"]: r for r in plan[0]["check"]}
    for key in ("xla_per_layer", "analytic_per_layer"):
        assert rows["none"][key] > rows["dots_no_batch"][key] > rows["full"][key], key
    # The analytic count is the planner's basis for the targets: per added layer it stays within
    # a factor 1.5 of XLA:TPU without remat and with dots_no_batch (the policies that carry the
    # activations); full remat keeps a few MiB a layer, within a factor 2.5.
    for policy, band in (("none", 1.5), ("dots_no_batch", 1.5), ("full", 2.5)):
        ratio = rows[policy]["xla_per_layer"] / rows[policy]["analytic_per_layer"]
        assert 1 / band <= ratio <= band, (policy, ratio)


def test_gpu8_variant_fits_by_the_plan(plan):
    results, stdout = plan
    chosen = results["chosen"]
    assert chosen["remat"] == "dots_no_batch" and chosen["fits"]
    assert chosen["total"] <= results["usable_fraction"] * results["bytes_per_device"]
    assert results["batch_size"] == 4096 and results["seq_len"] == 128
    assert "XLA:TPU (measured)" in stdout and "analytic estimate" in stdout
    config = teacher.get_config("gpu8")
    assert tuple(config.mesh.shape) == (1, 8, 1) and config.grad_accum_steps == 1
    config_checks.check_config(config)
    config_checks.check_config(teacher.get_config("v4_64"))


def _plan(tmp_path, config, target):
    out = tmp_path / "plan.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "mobilebert_jax.plan.memory", f"--config={config}",
                        f"--target={target}", "--check=false", f"--json={out}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text())


def test_distillation_plan_counts_the_teacher_and_the_machine_variants_fit(tmp_path):
    distill = config_module("distill")
    # The paper's distillation (batch 2048 x 512, teacher forward in the step) with the default
    # mesh and no remat does not fit a v4-64 chip; the v4_64 variant does.
    default = _plan(tmp_path, "configs/distill.py", "v4-64")
    assert (default["batch_size"], default["seq_len"]) == (2048, 512)
    assert default["mesh"] == [32, 1, 1] and not default["chosen"]["fits"]
    # On the data-only mesh every device holds the whole float32 teacher, counted here
    # independently of the project's shardings.
    t = get_config("ibbert_large")
    shapes = jax.eval_shape(lambda: MobileBertForPreTraining(t).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    teacher_bytes = sum(4 * x.size for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))
    assert default["chosen"]["teacher_params"] == teacher_bytes
    assert default["chosen"]["teacher_activations"] > 0
    for variant, target in (("v4_64", "v4-64"), ("gpu8", "8xH100")):
        plan = _plan(tmp_path, f"configs/distill.py:{variant}", target)
        assert plan["chosen"]["fits"], (variant, plan["chosen"])
        assert plan["chosen"]["teacher_params"] < teacher_bytes / 4  # sharded over fsdp
        config_checks.check_config(distill.get_config(variant))
    with pytest.raises(ValueError, match="machine variant is for the official run"):
        distill.get_config("smoke,gpu8")
