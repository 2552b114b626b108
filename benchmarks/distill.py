"""Distillation step benchmark on this machine, in one process:

    python -m benchmarks.distill [--sizes=smoke|full] [--batch=8] [--seq=128] [--steps=5]

Times (median of `--steps` after a warm-up), with random weights and a synthetic batch:
  * the teacher forward (encoder + MLM/NSP heads at the masked positions);
  * the student train step on its own (the pretraining trainer's step: forward, backward, LAMB
    update; MLM + NSP loss; no dropout, as in distillation);
  * the full-depth distillation step (pre-training distillation: both of the above in one
    program, soft-label MLM), and its ratio to the sum of the two (goal: <= 1.15);
  * the PKT transfer step of every stage k with only layers <= k run, against the same stage
    run at full depth: the speed-up of stage-k truncation.
`smoke` sizes are those of `configs/teacher.py:smoke` and `configs/distill.py:smoke`; `full`
the IB-BERT_LARGE teacher and MobileBERT (24 layers).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from flax import linen as nn

from benchmarks.common import load_average, synthetic_batch, time_calls, write_json
from mobilebert_jax import host_memory
from mobilebert_jax.models import MobileBertForPreTraining, get_config
from mobilebert_jax.train import distill_stages, objectives, optim, pretrain
from mobilebert_jax.train.core import TrainState

flags.DEFINE_enum("sizes", "smoke", ["smoke", "full"], "Teacher/student sizes.")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("seq", 128, "Sequence length.")
flags.DEFINE_integer("predictions", 20, "Masked positions per sequence.")
flags.DEFINE_integer("steps", 5, "Timed steps (median reported), after one warm-up step.")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
FLAGS = flags.FLAGS
RATIO_GOAL = 1.15


def model_configs(sizes: str):
    if sizes == "full":
        return get_config("ibbert_large"), get_config("mobilebert")
    shape = dict(num_hidden_layers=4, hidden_size=128, embedding_size=64,
                 num_attention_heads=4, max_position_embeddings=128)
    teacher = get_config("ibbert_large", intra_bottleneck_size=256, intermediate_size=1024,
                         **shape)
    student = get_config("mobilebert", intra_bottleneck_size=32, intermediate_size=128, **shape)
    return teacher, student


def _block(tree):
    jax.tree_util.tree_map(lambda x: x.block_until_ready(), tree)


def run_benchmark(sizes: str, batch: int, seq: int, predictions: int, steps: int) -> dict:
    teacher_cfg, student_cfg = model_configs(sizes)
    data = {k: jnp.asarray(v)
            for k, v in synthetic_batch(student_cfg, batch, seq, predictions).items()}

    def init(cfg, seed):
        return nn.meta.unbox(MobileBertForPreTraining(cfg).init(
            jax.random.PRNGKey(seed), data["input_ids"][:1])["params"])

    t_params, s_params = init(teacher_cfg, 0), init(student_cfg, 1)
    opt = ml_collections.ConfigDict(dict(name="lamb", learning_rate=1e-4, warmup_steps=0,
                                         total_steps=1000))
    pd_tx, pd_schedule = optim.make_optimizer(opt)
    settings = distill_stages.LossSettings(student_cfg.num_hidden_layers, {})
    results = {}

    teacher_fwd = jax.jit(lambda p, b: objectives.forward(
        MobileBertForPreTraining(teacher_cfg), p, b, deterministic=True))
    results["teacher_forward"] = time_calls(lambda: _block(teacher_fwd(t_params, data)), steps)

    def timed_state_step(fn, tx):
        state = [TrainState(jnp.zeros((), jnp.int32), jax.tree_util.tree_map(jnp.copy, s_params),
                            tx.init(s_params), jax.random.key_data(jax.random.PRNGKey(0)))]

        def call():
            state[0] = fn(state[0])
            _block(state[0].params)
        return time_calls(call, steps)

    # The pretraining trainer's step on the student; without dropout, as distillation runs it.
    student = MobileBertForPreTraining(student_cfg.replace(hidden_dropout_prob=0.0,
                                                           attention_probs_dropout_prob=0.0))
    student_step = jax.jit(pretrain.make_train_step(student, pd_tx, pd_schedule, 1),
                           donate_argnums=0)
    results["student_step"] = timed_state_step(lambda s: student_step(s, data)[0], pd_tx)

    pd_stage = distill_stages.StagePlan("pkt", student_cfg.num_hidden_layers, 1).stages[-1]
    pd_step = jax.jit(distill_stages.make_train_step(pd_stage, teacher_cfg, student_cfg,
                                                     settings, pd_tx, lambda s: {}),
                      donate_argnums=0)
    results["distill_step"] = timed_state_step(lambda s: pd_step(s, data, t_params)[0], pd_tx)

    cfg = ml_collections.ConfigDict(dict(learning_rate=1.5e-3, multiplier=3.0,
                                         lower_multiplier=0.1, hard_freeze=False,
                                         optimizer="lamb", weight_decay=0.01, clip_norm=1.0))
    n = student_cfg.num_hidden_layers
    tx = distill_stages.transfer_optimizer(
        cfg, distill_stages.transfer_multipliers(cfg, "pkt", n, 10))
    plan = distill_stages.StagePlan("pkt", n, 10)
    stages = sorted({0, n // 2, n - 1})
    results["transfer"] = {}
    for k in stages:
        stage = plan.stages[k]
        full_stage = distill_stages.Stage(stage.index, stage.kind, stage.layers, n, stage.start,
                                          stage.end)
        times = []
        for st in (stage, full_stage):
            fn = jax.jit(distill_stages.make_train_step(st, teacher_cfg, student_cfg, settings,
                                                        tx, lambda s: {}), donate_argnums=0)
            times.append(timed_state_step(lambda s, fn=fn: fn(s, data, t_params)[0], tx))
        results["transfer"][k] = tuple(times)
    return results


def main(argv):
    del argv
    host_memory.keep_freed_memory()  # as the trainers' entry point (main.py) does
    r = run_benchmark(FLAGS.sizes, FLAGS.batch, FLAGS.seq, FLAGS.predictions, FLAGS.steps)
    ms = lambda s: f"{1000 * s:9.1f} ms"  # noqa: E731
    print(f"{FLAGS.sizes} sizes, batch {FLAGS.batch} x seq {FLAGS.seq}, "
          f"{jax.devices()[0].device_kind}, median of {FLAGS.steps}")
    print(f"teacher forward                 {ms(r['teacher_forward'])}")
    print(f"student train step              {ms(r['student_step'])}")
    both = r["teacher_forward"] + r["student_step"]
    print(f"teacher forward + student step  {ms(both)}")
    ratio = r["distill_step"] / both
    print(f"distillation step (PD, full)    {ms(r['distill_step'])}   ratio {ratio:.2f} "
          f"({'meets' if ratio <= RATIO_GOAL else 'misses'} the <= {RATIO_GOAL} goal)")
    for k, (truncated, full) in r["transfer"].items():
        print(f"PKT stage {k:2d}: layers <= {k:2d} {ms(truncated)}   full depth {ms(full)}   "
              f"speed-up {full / truncated:.2f}x")
    print(f"load average after: {load_average()}")
    write_json(FLAGS.json, dict(
        sizes=FLAGS.sizes, batch=FLAGS.batch, seq=FLAGS.seq, steps=FLAGS.steps,
        teacher_forward_s=r["teacher_forward"], student_step_s=r["student_step"],
        distill_step_s=r["distill_step"], ratio=ratio, load_average_after=load_average(),
        transfer={str(k): {"truncated_s": t, "full_depth_s": f}
                  for k, (t, f) in r["transfer"].items()}))


if __name__ == "__main__":
    app.run(main)
