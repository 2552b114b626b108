"""Distillation trainer: composed losses (hand-worked values), PKT learning-rate multipliers
as the trainer applies them, freezing, truncation, teacher/student checks, exact resume across
stage boundaries, and the config variants."""
import math
import os
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mobilebert_jax import checkpoint
from mobilebert_jax.models.config import MobileBertConfig, get_config
from mobilebert_jax.models.heads import MobileBertForPreTraining
from mobilebert_jax.train import core, distill, distill_stages, layer_multipliers
from tests.helpers import (
    SPL,
    TINY_STUDENT,
    apply_overrides,
    config_module,
    losses,
    metrics_rows,
    save_tiny_teacher,
    small_data,
    tiny_teacher_config,
)

distill_config = config_module("distill")

LR = 1.5e-3
TEACHER = tiny_teacher_config()


@pytest.fixture(scope="module")
def data_dir(small_pretraining_data):
    return small_pretraining_data


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A randomly initialised tiny IB-BERT teacher saved as a project checkpoint directory."""
    out = str(tmp_path_factory.mktemp("teacher") / "ckpt")
    save_tiny_teacher(out)
    return out


def tiny_config(data_dir, teacher_dir, variant="smoke,pkt", **overrides):
    c = distill_config.get_config(variant)
    c.teacher_checkpoint = teacher_dir
    c.model.update(TINY_STUDENT)
    c.data.update(small_data(data_dir))
    c.update(batch_size=8, steps_per_layer=SPL, total_steps=2 * SPL + 3, log_every=1,
             eval_every=1000, eval_steps=2, checkpoint_every=SPL // 2, keep_checkpoints=40)
    c.optimizer.update(warmup_steps=1, total_steps=3)
    return apply_overrides(c, overrides)


@pytest.fixture(scope="module")
def pkt_run(data_dir, teacher_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("pkt") / "run")
    distill.train_and_evaluate(tiny_config(data_dir, teacher_dir), workdir)
    return workdir


def test_distillation_workdir_carries_its_tokenizer(pkt_run):
    from mobilebert_jax.data import tokenizers
    vocab = tokenizers.load_tokenizer("bert-base-uncased")
    assert checkpoint.tokenizer_file(pkt_run) == os.path.join(pkt_run, "vocab.txt")
    assert open(os.path.join(pkt_run, "vocab.txt"), "rb").read() == open(vocab.path, "rb").read()


# -- losses the trainer composes ----------------------------------------------------------------


def test_transfer_terms_hand_computed():
    # one layer, B=1, S=2, H=2, one head. Teacher tokens [1,3] and [2,2]; student [0,4], [1,3].
    # normalized: teacher [-1,1], [0,0]; student [-1,1], [-1,1] -> FMT = (0+0+1+1)/4 = 0.5
    # means 2,2 vs 2,2 -> beta 0; variances 1,0 vs 4,1 -> gamma (3+1)/2 = 2
    # AT: teacher uniform, student softmax [1/4, 3/4] -> CE = (ln 4 + ln 4/3)/2 per query
    h_t = jnp.array([[[1.0, 3.0], [2.0, 2.0]]])
    h_s = jnp.array([[[0.0, 4.0], [1.0, 3.0]]])
    s_t = jnp.zeros((1, 1, 2, 2))
    s_s = jnp.tile(jnp.array([0.0, math.log(3.0)]), (1, 1, 2, 1))
    zeros = jnp.zeros_like(h_t)
    t_out = SimpleNamespace(hidden_states=(zeros, h_t), attention_scores=(s_t,))
    s_out = SimpleNamespace(hidden_states=(zeros, h_s), attention_scores=(s_s,))
    settings = distill_stages.LossSettings(2, dict(fmt=100.0, at=1.0, beta=5000.0, gamma=5.0))
    total, parts = distill_stages.transfer_terms(t_out, s_out, (0,), settings)
    at = 0.5 * (math.log(4.0) + math.log(4.0 / 3.0))
    assert float(parts["fmt_layer_0"]) == pytest.approx(0.5, rel=1e-6)
    assert float(parts["mean_layer_0"]) == pytest.approx(0.0, abs=1e-7)
    assert float(parts["var_layer_0"]) == pytest.approx(2.0, rel=1e-6)
    assert float(parts["at_layer_0"]) == pytest.approx(at, rel=1e-6)
    assert float(total) == pytest.approx((100 * 0.5 + at + 5 * 2.0) / 2, rel=1e-6)


def test_pd_terms_hand_computed_with_padding():
    # slot 0: teacher uniform over 2 classes, label 0 -> y = [3/4, 1/4]; student softmax
    # [1/4, 3/4] -> -(3/4 ln 1/4 + 1/4 ln 3/4). Slot 1 is padding (weight 0), wild logits.
    s_logits = jnp.array([[[0.0, math.log(3.0)], [50.0, -50.0]]])
    t_logits = jnp.array([[[0.0, 0.0], [-50.0, 50.0]]])
    batch = {"masked_lm_ids": jnp.array([[0, 1]]), "masked_lm_weights": jnp.array([[1.0, 0.0]]),
             "next_sentence_labels": jnp.array([0])}
    s_out = SimpleNamespace(mlm_logits=s_logits, nsp_logits=jnp.zeros((1, 2)))
    t_out = SimpleNamespace(mlm_logits=t_logits, nsp_logits=jnp.ones((1, 2)))
    loss, m = distill_stages.pd_terms(t_out, s_out, batch, distill_stages.LossSettings(2, {}))
    soft = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75)) / (1 + 1e-5)
    assert float(m["soft_mlm_loss"]) == pytest.approx(soft, rel=1e-6)
    assert float(m["nsp_loss"]) == pytest.approx(math.log(2.0), rel=1e-6)
    assert float(loss) == pytest.approx(soft + math.log(2.0), rel=1e-6)
    assert float(m["mlm_accuracy"]) == 0.0  # the only real slot predicts class 1, label 0


# -- stages, truncation, freezing at the step level ------------------------------------------------


def test_stage_plans():
    pkt = distill_stages.StagePlan("pkt", 3, 5)
    assert [pkt.stage_at(s).name for s in (0, 4, 5, 14, 15, 999)] == [
        "transfer_layer_0", "transfer_layer_0", "transfer_layer_1", "transfer_layer_2", "pd",
        "pd"]
    assert [pkt.stage_at(s).depth for s in (0, 5, 10)] == [1, 2, 3]
    jkt = distill_stages.StagePlan("jkt", 3, 5)
    assert [jkt.stage_at(s).name for s in (0, 14, 15)] == ["transfer_all", "transfer_all", "pd"]
    assert jkt.stage_at(0).layers == (0, 1, 2)
    akt = distill_stages.StagePlan("akt", 3, 5)
    assert akt.stage_at(0).kind == "akt" and akt.pd_start == 0
    with pytest.raises(ValueError, match="unknown distillation strategy 'xkt'"):
        distill_stages.StagePlan("xkt", 3, 5)


def _models_and_batch():
    student = MobileBertConfig.from_dict({**get_config("mobilebert").to_dict(), **TINY_STUDENT})
    rng = np.random.default_rng(0)
    batch = {"input_ids": jnp.asarray(rng.integers(1000, 2000, (2, 16)), jnp.int32),
             "segment_ids": jnp.zeros((2, 16), jnp.int32),
             "input_mask": jnp.asarray(np.arange(16)[None] < np.array([[16], [11]]), jnp.int32),
             "masked_lm_positions": jnp.array([[1, 2], [3, 0]], jnp.int32),
             "masked_lm_ids": jnp.array([[1500, 1600], [1700, 0]], jnp.int32),
             "masked_lm_weights": jnp.array([[1.0, 1.0], [1.0, 0.0]]),
             "next_sentence_labels": jnp.array([0, 1], jnp.int32)}
    init = lambda cfg, seed: nn.meta.unbox(MobileBertForPreTraining(cfg).init(  # noqa: E731
        jax.random.PRNGKey(seed), batch["input_ids"])["params"])
    return student, init(student, 1), init(TEACHER, 2), batch


def test_truncated_forward_gives_the_full_forward_loss():
    student, s_params, t_params, batch = _models_and_batch()
    settings = distill_stages.LossSettings(2, {})
    stage = distill_stages.StagePlan("pkt", 2, 5).stage_at(0)
    assert stage.depth == 1
    short, m_short = distill_stages.distillation_loss(stage, TEACHER, student, settings,
                                                      s_params, t_params, batch)
    full, m_full = distill_stages.distillation_loss(stage, TEACHER, student, settings,
                                                    s_params, t_params, batch, depth=2)
    np.testing.assert_allclose(float(short), float(full), rtol=1e-6)
    for k in m_full:
        np.testing.assert_allclose(float(m_short[k]), float(m_full[k]), rtol=1e-6)


def test_step_freezes_teacher_and_layers_above_the_stage():
    student, s_params, t_params, batch = _models_and_batch()
    s_params = distill_stages.copy_teacher_parts(s_params, t_params, same_norm=False)
    np.testing.assert_array_equal(s_params["bert"]["embeddings"]["word_embeddings"],
                                  t_params["bert"]["embeddings"]["word_embeddings"])
    plan = distill_stages.StagePlan("pkt", 2, SPL)
    cfg = tiny_config("", "").transfer
    multipliers = distill_stages.transfer_multipliers(cfg, "pkt", 2, SPL)
    tx = distill_stages.transfer_optimizer(cfg, multipliers)
    state = core.TrainState(jnp.asarray(1, jnp.int32), s_params, None,
                            jax.random.key_data(jax.random.PRNGKey(0)))
    opt_state = layer_multipliers.reset_opt_state(tx, s_params, step=1)  # 10% into stage 0
    state = state.replace(opt_state=opt_state)
    before = jax.tree_util.tree_map(np.array, (s_params, t_params))
    step = jax.jit(distill_stages.make_train_step(plan.stage_at(1), TEACHER, student,
                                                  distill_stages.LossSettings(2, {}), tx,
                                                  lambda s: {}),
                   donate_argnums=0)
    new, metrics = step(state, batch, t_params)
    # the teacher's buffers are neither donated nor changed
    for x, y in zip(jax.tree_util.tree_leaves(t_params), jax.tree_util.tree_leaves(before[1])):
        assert not x.is_deleted()
        np.testing.assert_array_equal(x, y)
    enc_new, enc_old = new.params["bert"]["encoder"], before[0]["bert"]["encoder"]
    for x, y in zip(jax.tree_util.tree_leaves(enc_new["layer_1"]),
                    jax.tree_util.tree_leaves(enc_old["layer_1"])):
        np.testing.assert_array_equal(x, y)  # above the stage: untouched
    # layer 0 moved: a LAMB kernel moves by lr * multiplier * ||w|| (trust ratio)
    w0 = enc_old["layer_0"]["bottleneck"]["input"]["dense"]["kernel"]
    w1 = enc_new["layer_0"]["bottleneck"]["input"]["dense"]["kernel"]
    bg = min(0.1 * math.sqrt(0.9) + 0.9, 1.0)
    assert np.linalg.norm(w1 - w0) / np.linalg.norm(w0) == pytest.approx(LR * 3 * bg, rel=1e-4)
    for name in ("embeddings", "pooler"):
        if name in before[0]["bert"]:
            for x, y in zip(jax.tree_util.tree_leaves(new.params["bert"][name]),
                            jax.tree_util.tree_leaves(before[0]["bert"][name])):
                np.testing.assert_array_equal(x, y)
    assert np.isfinite(float(metrics["loss"]))


# -- the trainer ---------------------------------------------------------------------------------


def test_trainer_multipliers_at_stage_boundaries(pkt_run):
    by_step = {r["step"]: r for r in metrics_rows(pkt_run) if "lr_layer_0" in r}
    bg = lambda t: min(0.1 * math.sqrt(1 - t / SPL) + 0.9, 10 * t / SPL)  # noqa: E731
    assert bg(1) == pytest.approx(0.99487, abs=1e-5) and bg(SPL - 1) == pytest.approx(0.93162,
                                                                                        abs=1e-5)
    for update, (m0, m1) in {0: (0, 0), 1: (3 * bg(1), 0), SPL - 1: (3 * bg(SPL - 1), 0),
                             SPL: (0, 0), SPL + 1: (0.3 * bg(1), 3 * bg(1)),
                             2 * SPL - 1: (0.3 * bg(SPL - 1), 3 * bg(SPL - 1))}.items():
        r = by_step[update + 1]  # the line of step s reports update s - 1
        assert r["lr_layer_0"] == pytest.approx(LR * m0, rel=1e-5, abs=1e-12), update
        assert r["lr_layer_1"] == pytest.approx(LR * m1, rel=1e-5, abs=1e-12), update
        assert r["stage"] == update // SPL
    pd = [r for r in metrics_rows(pkt_run) if r.get("stage") == 2 and "loss" in r]
    assert pd and all("mlm_accuracy" in r and "learning_rate" in r for r in pd)


def test_trainer_freezes_layers_above_the_stage(pkt_run, teacher_dir):
    teacher = checkpoint.load_params(teacher_dir)
    start, end = checkpoint.load_params(pkt_run, SPL // 2), checkpoint.load_params(pkt_run, SPL)
    leaves = lambda t: jax.tree_util.tree_leaves(t)  # noqa: E731
    enc = lambda p, i: p["bert"]["encoder"][f"layer_{i}"]  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(leaves(enc(start, 1)), leaves(enc(end, 1))))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(enc(start, 0)),
                                                         leaves(enc(end, 0))))
    # embeddings (but not the differing norm) and heads are the teacher's, at learning rate 0
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        np.testing.assert_array_equal(end["bert"]["embeddings"][name],
                                      teacher["bert"]["embeddings"][name])
    for x, y in zip(leaves(end["cls"]), leaves(teacher["cls"])):
        np.testing.assert_array_equal(x, y)
    # in PD everything trains
    last = checkpoint.load_params(pkt_run)
    assert not np.array_equal(last["cls"]["predictions"]["output_bias"],
                              teacher["cls"]["predictions"]["output_bias"])


@pytest.mark.slow
def test_resume_across_stage_boundaries_is_bitwise(pkt_run, data_dir, teacher_dir, tmp_path):
    workdir = str(tmp_path / "resumed")
    for total in (SPL, 2 * SPL, 2 * SPL + 3):  # stop at both boundaries, then finish
        distill.train_and_evaluate(tiny_config(data_dir, teacher_dir, total_steps=total), workdir)
    a, b = losses(pkt_run), losses(workdir)
    assert sorted(a) == sorted(b) == list(range(1, 2 * SPL + 4))
    assert all(a[s] == b[s] for s in a), [(s, a[s], b[s]) for s in a if a[s] != b[s]]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["smoke,jkt", "smoke,akt"])
def test_jkt_and_akt_run(data_dir, teacher_dir, tmp_path, variant):
    workdir = str(tmp_path / "run")
    last = distill.train_and_evaluate(
        tiny_config(data_dir, teacher_dir, variant, steps_per_layer=1, total_steps=4,
                    checkpoint_every=100), workdir)
    r = metrics_rows(workdir)
    assert [x["stage"] for x in r if "loss" in x] == ([0, 0, 1, 1] if "jkt" in variant
                                                      else [0, 0, 0, 0])
    assert "fmt_layer_1" in r[0] and np.isfinite(last["loss"])
    assert ("mlm_accuracy" in r[0]) == ("akt" in variant)


# -- bad input ---------------------------------------------------------------------------------


def test_teacher_student_mismatch_fails_before_compute(data_dir, teacher_dir, tmp_path):
    student = MobileBertConfig.from_dict({**get_config("mobilebert").to_dict(), **TINY_STUDENT})
    for field, value, match in [("hidden_size", 64, "hidden_size \\(teacher 32, student 64\\)"),
                                ("num_hidden_layers", 3, "num_hidden_layers"),
                                ("num_attention_heads", 2, "num_attention_heads")]:
        with pytest.raises(ValueError, match=match):
            distill_stages.check_compatible(TEACHER, student.replace(**{field: value}))
    distill_stages.check_compatible(TEACHER, student.replace(num_attention_heads=2),
                        attention_transfer=False)  # heads only matter for AT
    workdir = tmp_path / "w"
    with pytest.raises(ValueError, match="differ in hidden_size"):
        distill.train_and_evaluate(tiny_config(data_dir, teacher_dir, **{
            "model.hidden_size": 64}), str(workdir))
    assert not workdir.exists()  # nothing was written or computed
    with pytest.raises(FileNotFoundError, match="teacher_checkpoint .* not found"):
        distill.train_and_evaluate(tiny_config(data_dir, str(tmp_path / "none")), str(workdir))
    with pytest.raises(ValueError, match="warmup_steps=5"):
        distill.train_and_evaluate(tiny_config(data_dir, teacher_dir, **{
            "optimizer.warmup_steps": 5}), str(workdir))
    assert not workdir.exists()


def test_config_variants():
    c = distill_config.get_config("")
    assert (c.strategy, c.student, c.steps_per_layer, c.total_steps) == ("pkt", "mobilebert",
                                                                          10_000, 740_000)
    assert c.transfer.learning_rate == 1.5e-3 and c.optimizer.warmup_steps == 10_000
    assert c.optimizer.end_learning_rate == 1.5e-7 and c.optimizer.weight_decay == 0.01
    c = distill_config.get_config("tiny,smoke,jkt")
    assert (c.strategy, c.student, c.teacher_checkpoint) == ("jkt", "mobilebert_tiny",
                                                             "runs/teacher_smoke")
    assert c.model.use_bottleneck_attention and c.model.hidden_size == 128
    with pytest.raises(ValueError, match="unknown distill config variant 'fast'"):
        distill_config.get_config("smoke,fast")
    with pytest.raises(ValueError, match="more than one strategy"):
        distill_config.get_config("pkt,akt")


def test_student_override_must_match_model():
    from mobilebert_jax.models.config import MobileBertConfig

    c = distill_config.get_config("smoke")
    student = MobileBertConfig.from_dict(c.model.to_dict())
    distill_stages.check_student_preset("mobilebert", student)  # the variant's own pairing
    with pytest.raises(ValueError, match="config.student='mobilebert_tiny' but config.model has "
                                         "use_bottleneck_attention=False"):
        distill_stages.check_student_preset("mobilebert_tiny", student)
    with pytest.raises(ValueError, match="unknown student preset 'mobilebrt'"):
        distill_stages.check_student_preset("mobilebrt", student)


def test_claims_runs_give_scratch_and_distilled_students_the_same_model_and_budget(monkeypatch):
    """benchmarks.transfer: the from-scratch baseline must train the very student the
    distillation runs train, for the same steps, batch, data and PD optimizer settings."""
    from absl import flags
    from ml_collections import config_flags

    from benchmarks import transfer

    monkeypatch.chdir(transfer.REPO)
    args = SimpleNamespace(teacher="runs/some_teacher", steps_per_layer=3, pd_steps=5, batch_size=4)

    def parse(flag_list):  # as `python -m mobilebert_jax.main` parses them (config_flags reads
        argv = ["prog", *flag_list]  # sys.argv when the flag is defined)
        monkeypatch.setattr(sys, "argv", argv)
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True)
        values(argv)
        return values.config

    scratch = parse(transfer.run_flags("scratch", args, 1))
    assert scratch.trainer == "pretrain"
    for kind in ("pkt", "jkt", "akt"):
        distill = parse(transfer.run_flags(kind, args, 1))
        assert distill.trainer == "distill" and distill.strategy == kind
        assert scratch.model.to_dict() == distill.model.to_dict()
        assert distill.teacher_checkpoint == "runs/some_teacher"
        for key in ("total_steps", "batch_size", "seed", "eval_steps", "eval_every"):
            assert scratch[key] == distill[key], key
        assert scratch.data.dataset_dir == distill.data.dataset_dir == "runs/some_teacher/data"
        for key in ("learning_rate", "warmup_steps", "end_learning_rate"):
            assert scratch.optimizer[key] == distill.optimizer[key], key
    assert scratch.total_steps == distill.model.num_hidden_layers * 3 + 5
    assert scratch.seed == 1 and scratch.batch_size == 4
