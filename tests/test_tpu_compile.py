"""`python -m mobilebert_jax.plan.compile`: the trainers' programs compiled for a Cloud TPU slice on
this CPU, with libtpu's compiler and compile-only devices (no TPU).

The teacher program is configs/teacher.py:smoke at 2 layers (hidden 128, batch 32 x seq 128, in
bfloat16 as the full-size teacher) on a v4-8 (4 chips, `v4:2x2x1` megacore) with the FSDP mesh
(1, 4, 1). Not hidden 32 (the tiny
models of the other tests): XLA:TPU lays arrays out in (8, 128) tiles, so a 32-wide array takes
4x its bytes (per-device arguments 2.5x the state / 4 for TINY_TEACHER at vocab 64), and at that
width norms, activations, softmax and LAMB are 21% of the FLOPs XLA counts (3.7% at hidden 128).
"""
import json
import math
import subprocess
import sys
import time

import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[tpu]'): the TPU "
                                     "compile checks need its compiler")

from mobilebert_jax.plan import compile as tpu_compile  # noqa: E402
from mobilebert_jax.plan import hlo, topologies  # noqa: E402
from tests import helpers  # noqa: E402

TOPOLOGY = "v4:2x2x1"  # = v4-8: 4 TPU v4 chips, one device each (megacore)
MESH = (1, 4, 1)


def _run(config, **kwargs):
    lines = []
    start = time.perf_counter()
    results = tpu_compile.run(config, kwargs.pop("topology", TOPOLOGY), echo=lines.append,
                              **kwargs)
    results["wall_seconds"] = time.perf_counter() - start
    print("\n".join(lines))
    return results, lines


@pytest.fixture(scope="module")
def teacher():
    config = helpers.config_module("teacher").get_config("smoke")
    helpers.apply_overrides(config, {"model.num_hidden_layers": 2, "mesh.shape": MESH,
                                     "model.dtype": "bfloat16"})
    results, lines = _run(config, stages=["train"])
    return config, results, lines


def test_fsdp_arguments_are_the_state_split_over_the_devices(teacher):
    _, results, lines = teacher
    r = results["programs"]["train step"]
    assert r["fits"] and results["devices"] == 4 and results["device_kind"] == "TPU v4"
    ideal = results["state_bytes"] / 4
    assert abs(r["memory"]["argument"] / ideal - 1) < 0.2, (r["memory"], ideal)
    assert r["memory"]["alias"] >= 0.99 * results["state_bytes_per_device"]  # donated state
    total = sum(r["memory"][k] for k in ("argument", "output", "temp", "generated_code"))
    assert r["total_bytes"] == total - r["memory"]["alias"]
    assert r["margin_bytes"] == r["usable_bytes"] - r["total_bytes"] > 0
    assert any("fits (margin" in line for line in lines)
    # FSDP: the params are gathered for the forward and backward passes, the gradients reduced
    assert r["collectives"]["all-gather"]["count"] > 0
    assert (r["collectives"]["reduce-scatter"]["count"]
            + r["collectives"]["all-reduce"]["count"]) > 0


def _param_bytes(config, dtype_bytes=2):
    """(all params, the two vocabulary-sized output tables) in bytes, counted from the model
    config: the encoder's parameters from jax.eval_shape, the tables as V x E and V x (H - E)."""
    import jax
    import jax.numpy as jnp

    from mobilebert_jax.models.config import MobileBertConfig
    from mobilebert_jax.models.heads import MobileBertForPreTraining

    model = MobileBertForPreTraining(MobileBertConfig.from_dict(config.model.to_dict()))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    m = config.model
    return dtype_bytes * total, dtype_bytes * m.vocab_size * m.hidden_size


def test_fsdp_collectives_match_the_ideal(teacher):
    """Every gradient is reduced once (reduce-scattered onto its shard: no plain all-reduce of
    a sharded param's whole gradient beyond the vocabulary tables, see docs/scaling.md), the
    params are gathered at most twice, and nothing is resharded by collective-permutes."""
    config, results, lines = teacher
    r = results["programs"]["train step"]
    c = {k: v["bytes"] for k, v in r["collectives"].items()}
    ideal = r["collectives_ideal"]
    params, tables = _param_bytes(config)
    # the ideal's own arithmetic, from the config (bf16): every gradient reduced once, all but
    # the replicated 30,522-entry MLM bias (and the tensor-axis vectors) reduce-scattered; the
    # params gathered twice
    assert 0.97 * params < ideal["reduce-scatter"] + ideal["all-reduce"] <= params
    assert ideal["all-gather"] == 2 * ideal["reduce-scatter"]
    # compiled: reduce-scattered, all but the two vocabulary tables (XLA:TPU all-reduces their
    # gradients whole, in float32), within 5 %
    assert c["reduce-scatter"] == pytest.approx(ideal["reduce-scatter"] - tables, rel=0.05), \
        (c, ideal)
    assert c["all-reduce"] <= ideal["all-reduce"] + 2.04 * tables
    assert c["all-gather"] <= 1.05 * ideal["all-gather"]
    assert c["collective-permute"] < 0.001 * params
    assert any(line.lstrip().startswith("reduce-scatter") for line in lines)


def test_compiled_flops_match_the_analytic_count(teacher):
    config, results, _ = teacher
    r = results["programs"]["train step"]
    # the lowered program's matmuls are exactly what metrics.throughput counts ...
    assert r["matmul_flops"] == pytest.approx(r["analytic_flops"], rel=1e-6)
    # ... and XLA's count adds the norms, activations, softmax, dropout, LAMB and the bf16
    # conversions
    assert 1.0 <= r["flops"] / r["analytic_flops"] < 1.1, r


def test_only_the_data_parallel_gradient_reduction_crosses_slices():
    """Two v4-8 slices, mesh (-1, 4, 1) with the default dcn_shape (the slices on `data`):
    FSDP inside each slice; between them the all-reduce of each device's gradient shard (the
    data-parallel reduction: the ideal's all-reduce) and two small all-gathers of batch
    gradients (the embedding lookup's and the MLM positions' transposes, see
    docs/scaling.md)."""
    config = helpers.config_module("teacher").get_config("smoke")
    helpers.apply_overrides(config, {"model.num_hidden_layers": 1, "mesh.shape": (-1, 4, 1),
                                     "model.dtype": "bfloat16", "batch_size": 16,
                                     "data.seq_len": 64, "data.max_predictions_per_seq": 10})
    results, lines = _run(config, stages=["train"], num_slices=2)
    assert results["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    r = results["programs"]["train step"]
    crossing = {k: v["bytes"] for k, v in r["cross_slice"].items() if v["count"]}
    assert set(crossing) <= {"all-reduce", "all-gather"}, crossing
    params, tables = _param_bytes(config)
    # each device's shard (a quarter) of every gradient, in bf16 but for the vocabulary tables'
    # (float32, the tied word table's two parts apart: docs/scaling.md); far below a whole
    # gradient's bytes (4 x the ideal)
    ideal = r["collectives_ideal"]["all-reduce"]
    assert 0.9 * params / 4 < ideal < 1.05 * params / 4  # + the replicated vectors whole
    assert ideal < crossing["all-reduce"] < ideal + tables, (crossing, ideal, tables)
    assert crossing.get("all-gather", 0) < 0.02 * crossing["all-reduce"]
    assert any(line.startswith("  across slices") for line in lines)


def test_a_batch_far_too_large_does_not_fit_in_one_line(tmp_path):
    out = tmp_path / "plan.json"
    tiny = {f"--config.model.{k}": v for k, v in helpers.TINY_TEACHER.items()}
    start = time.perf_counter()
    r = helpers.run_module("mobilebert_jax.plan.compile",
                           f"--config={helpers.CONFIGS / 'teacher.py'}:smoke",
                           "--topology=v4-8", "--stages=train", f"--json={out}",
                           "--config.mesh.shape=(1,4,1)", "--config.batch_size=1048576",
                           "--config.data.seq_len=64", "--config.data.max_predictions_per_seq=10",
                           *(f"{k}={v}" for k, v in tiny.items()), timeout=300)
    print(f"{time.perf_counter() - start:.1f}s\n{r.stdout}")
    assert r.returncode == 1, r.stderr[-3000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr[-3000:]
    assert err[0].startswith("error: train step: does not fit on v4-8: needs "), err
    assert err[0].endswith("of 30.75 GiB HBM per device"), err
    figures = json.loads(out.read_text())["programs"]["train step"]
    assert not figures["fits"] and figures["needs_bytes"] > 30.75 * 2 ** 30


def test_a_distillation_stage_program(tmp_path):
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    helpers.tiny_teacher_config().to_json(str(teacher_dir / "model_config.json"))
    config = helpers.config_module("distill").get_config("smoke")
    helpers.apply_overrides(config, helpers.dotted_overrides(dict(
        model=helpers.TINY_STUDENT, teacher_checkpoint=str(teacher_dir), batch_size=16,
        data=dict(seq_len=64, max_predictions_per_seq=10), mesh=dict(shape=MESH))))
    results, lines = _run(config, stages=["transfer_layer_1"])
    assert "1 of 4 programs" in lines[1]  # PKT at 2 layers: 2 transfer stages, PD, eval
    r = results["programs"]["transfer_layer_1 step"]
    assert r["fits"] and r["flops"] > 0 and r["matmul_flops"] > 0
    # the frozen teacher is an argument, neither donated nor returned
    assert r["memory"]["argument"] > r["memory"]["output"] >= r["memory"]["alias"]


def test_a_finetuning_step(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    helpers.tiny_model_config(64).to_json(str(ckpt / "model_config.json"))
    config = helpers.config_module("finetune_glue").get_config("mrpc")
    helpers.apply_overrides(config, {"init_checkpoint": str(ckpt), "batch_size": 16,
                                     "eval_batch_size": 16, "max_seq_length": 32})
    results, _ = _run(config, stages=["train"], topology="v5litepod-4")
    assert results["device_kind"] == "TPU v5 lite" and results["mesh"]["data"] == 4
    r = results["programs"]["train step"]
    assert r["fits"] and r["usable_bytes"] == int(15.75 * 2 ** 30)
    assert r["collectives"]["all-reduce"]["count"] > 0  # data parallel: gradients summed


def test_topologies_and_meshes():
    assert topologies.target("v4-8").topology == "v4:2x2x1"
    assert topologies.target("v5p-128").topology == "v5p:4x4x4"
    assert topologies.target("v5e-16").topology == "v5e:4x4"
    assert topologies.target("v6e-256").chip_config == "default"
    with pytest.raises(ValueError, match="unknown TPU slice"):
        topologies.target("v4-12")
    two = topologies.topology_devices(topologies.target("v4-8"), num_slices=2)
    mesh = topologies.make_mesh((-1, 4, 1), two)  # default dcn_shape: slices on data
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert {d.slice_index for d in mesh.devices[0].flat} == {0}  # one slice per data row
    with pytest.raises(ValueError, match=r"mesh.dcn_shape \(3, 1, 1\) does not fit the 2 "):
        topologies.make_mesh((-1, 4, 1), two, dcn_shape=(3, 1, 1))
    with pytest.raises(ValueError, match="does not split over the slices"):
        topologies.make_mesh((-1, 4, 1), two, dcn_shape=(1, 1, 2))  # tensor 1 over 2 slices
    # a shape that jax's mesh_utils cannot lay on the 4x4x4 torus (the trainer's make_mesh too)
    with pytest.raises(ValueError, match="cannot lay it on the torus"):
        topologies.make_mesh((8, 8, 1), topologies.topology_devices(
            topologies.target("v4-128")))


def test_hlo_collectives_and_dot_flops():
    text = """HloModule m

%all-reduce-scatter (input: f32[8,4]) -> f32[2,4] {
  %input = f32[8,4]{1,0} parameter(0)
  %all-reduce.1 = f32[8,4]{1,0} all-reduce(%input), to_apply=%add
  ROOT %dynamic-slice.1 = f32[2,4]{1,0} dynamic-slice(%all-reduce.1, %c, %c)
}

ENTRY %main (p: bf16[2,4]) -> f32[2,4] {
  %p = bf16[2,4]{1,0:T(8,128)(2,1)} parameter(0)
  %all-gather = bf16[8,4]{1,0:T(8,128)(2,1)S(3)} all-gather(%p), dimensions={0}
  %cps = (f32[2,4]{1,0}, f32[2,4]{1,0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%x)
  %cpd = f32[2,4]{1,0} collective-permute-done(%cps)
  %ar = (f32[4]{0}, f32[]) all-reduce(%a, %b), to_apply=%add
  ROOT %fusion = f32[2,4]{1,0} fusion(%all-gather), kind=kCustom, calls=%all-reduce-scatter
}
"""
    stats = hlo.collectives(text)
    assert stats["all-gather"] == {"count": 1, "bytes": 64}
    assert stats["reduce-scatter"] == {"count": 1, "bytes": 64}  # its input: bf16 8x4
    assert stats["all-reduce"] == {"count": 1, "bytes": 20}  # not the one in the fusion
    assert stats["collective-permute"] == {"count": 1, "bytes": 32}
    assert stats["all-to-all"] == {"count": 0, "bytes": 0}
    # v5e/v6e's asynchronous collective fusion: one all-gather (channel 7) written into two
    # computations counts once; another channel is another all-gather; reduce-scatter fusions
    # whose inner all-reduces share a placeholder channel count one each
    fused = """HloModule m

%all-reduce-scatter.1 (input: f32[8,4]) -> f32[2,4] {
  %input = f32[8,4]{1,0} parameter(0)
  %all-reduce.1 = f32[8,4]{1,0} all-reduce(%input), channel_id=1, to_apply=%add
  ROOT %dynamic-slice.1 = f32[2,4]{1,0} dynamic-slice(%all-reduce.1, %c, %c)
}

%all-reduce-scatter.2 (input: f32[8,4]) -> f32[2,4] {
  %input = f32[8,4]{1,0} parameter(0)
  %all-reduce.2 = f32[8,4]{1,0} all-reduce(%input), channel_id=1, to_apply=%add
  ROOT %dynamic-slice.2 = f32[2,4]{1,0} dynamic-slice(%all-reduce.2, %c, %c)
}

%async_collective_fusion.3 (p: bf16[2,4]) -> bf16[8,4] {
  %p = bf16[2,4]{1,0} parameter(0)
  ROOT %all-gather.3 = bf16[8,4]{1,0} all-gather(%p), channel_id=7, dimensions={0}
}

ENTRY %main (p: bf16[2,4]) -> f32[2,4] {
  %p = bf16[2,4]{1,0} parameter(0)
  %all-gather.1 = bf16[8,4]{1,0} all-gather(%p), channel_id=7, dimensions={0}
  %all-gather.2 = bf16[8,4]{1,0} all-gather(%p), channel_id=8, dimensions={0}
  %f1 = f32[2,4]{1,0} fusion(%x), kind=kCustom, calls=%all-reduce-scatter.1
  ROOT %f2 = f32[2,4]{1,0} fusion(%y), kind=kCustom, calls=%all-reduce-scatter.2
}
"""
    stats = hlo.collectives(fused)
    assert stats["all-gather"] == {"count": 2, "bytes": 128}
    assert stats["reduce-scatter"]["count"] == 2 and stats["all-reduce"]["count"] == 0

    import jax
    import jax.numpy as jnp

    def scanned(x):  # 3 iterations of a [4, 8] x [8, 4] matmul, in a jitted helper called twice
        inner = jax.jit(lambda a: a @ a.T)
        return jax.lax.scan(lambda c, a: (c + jnp.sum(inner(a) + inner(a + 1)), None), 0.0,
                            x.reshape(3, 4, 8))[0]

    lowered = jax.jit(scanned).lower(jax.ShapeDtypeStruct((12, 8), jnp.float32))
    assert hlo.dot_flops(lowered.as_text(dialect="hlo")) == 3 * 2 * 2 * 4 * 4 * 8
    assert math.isclose(hlo.shape_bytes("(f32[2,3]{1,0}, bf16[4], pred[])"), 24 + 8 + 1)


def test_the_command_line_names_a_bad_stage():
    r = subprocess.run([sys.executable, "-m", "mobilebert_jax.plan.compile",
                        f"--config={helpers.CONFIGS / 'teacher.py'}:smoke", "--stages=nope"],
                       cwd=helpers.REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip() == ("error: --stages: unknown program 'nope'; this config's: "
                                "train, eval")
