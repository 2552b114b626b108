"""`python -m mobilebert_jax.plan.compile --topology=8xH100`: the trainers' programs compiled by
XLA:GPU for NVIDIA GPUs on this CPU, with JAX's CUDA plugin and no GPU (the `gpu_compile`
extra; CI installs it after the main test run: with it JAX logs at every start that it finds no
CUDA driver).

The program is configs/teacher.py:smoke at 2 layers in bfloat16, mesh (1, 8, 1) over 8 H100s.
"""
import importlib.util

import pytest

if (importlib.util.find_spec("jax_plugins") is None
        or importlib.util.find_spec("jax_plugins.xla_cuda12") is None):
    pytest.skip("JAX's CUDA plugin is not installed (pip install -e '.[gpu-compile]'): the GPU "
                "compile checks need XLA:GPU", allow_module_level=True)

from mobilebert_jax.plan import compile as plan_compile  # noqa: E402
from mobilebert_jax.plan import topologies  # noqa: E402
from tests import helpers  # noqa: E402


def _teacher(**overrides):
    config = helpers.config_module("teacher").get_config("smoke")
    helpers.apply_overrides(config, {"model.num_hidden_layers": 2, "mesh.shape": (1, 8, 1),
                                     "model.dtype": "bfloat16", **overrides})
    lines = []
    results = plan_compile.run(config, "8xH100", stages=["train"], echo=lines.append)
    print("\n".join(lines))
    return results, lines


@pytest.fixture(scope="module")
def teacher():
    return _teacher()


def test_the_teacher_step_compiles_for_eight_h100s(teacher):
    results, lines = teacher
    assert results["platform"] == "cuda" and results["devices"] == 8
    assert results["device_kind"] == "NVIDIA H100 80GB HBM3"
    r = results["programs"]["train step"]
    assert r["fits"] and r["usable_bytes"] == int(0.92 * 84_929_347_584)
    # FSDP over 8 GPUs: each holds an eighth of the state, donated to the step's output
    per_device = results["state_bytes"] / 8
    assert abs(r["memory"]["argument"] / per_device - 1) < 0.05, (r["memory"], per_device)
    assert r["memory"]["alias"] >= 0.99 * results["state_bytes_per_device"]
    assert r["memory"]["temp"] > 0
    # XLA:GPU counts no FLOPs without a device; the lowered program's matmuls are the analytic
    # count of metrics.throughput
    assert r["flops"] is None and any("the compiler counts none" in line for line in lines)
    assert r["matmul_flops"] == pytest.approx(r["analytic_flops"], rel=1e-6)
    assert r["collectives"]["all-gather"]["count"] > 0  # the params gathered


def test_a_batch_far_too_large_does_not_fit(teacher):
    # 4096 sequences of 512 tokens per GPU (a quarter of them compile to about 31 GiB)
    results, lines = _teacher(**{"batch_size": 32768, "data.seq_len": 512,
                                 "model.max_position_embeddings": 512,
                                 "data.max_predictions_per_seq": 1})
    r = results["programs"]["train step"]
    assert not r["fits"] and r["total_bytes"] > r["usable_bytes"]
    assert any(line.startswith("  total ") and ": does not fit (margin -" in line
               for line in lines), lines


def test_gpu_targets():
    t = topologies.target("16xH200")
    assert (t.platform, t.topology, t.gpu.memory) == ("cuda", "1x2x8", "141 GB HBM3e")
    assert len(topologies.topology_devices(t)) == 16
    assert topologies.target("4xH100").topology == "1x1x4"
    with pytest.raises(ValueError, match="up to 8 GPUs or hosts of 8"):
        topologies.target("12xH100")
    with pytest.raises(ValueError, match="slices are TPU pods'"):
        topologies.topology_devices(topologies.target("8xH100"), num_slices=2)
