"""Knowledge transfer from an IB-BERT teacher into MobileBERT, then pre-training distillation.

    python -m mobilebert_jax.main --config=configs/distill.py --workdir=DIR \
        --config.teacher_checkpoint=TEACHER_DIR
    python -m mobilebert_jax.main --config=configs/distill.py:smoke --workdir=DIR
    python -m mobilebert_jax.main --config=configs/distill.py:smoke,tiny,jkt --workdir=DIR
    python -m mobilebert_jax.main --config=configs/distill.py:v4_64 --workdir=DIR \
        --config.teacher_checkpoint=TEACHER_DIR   # TPU v4-64; gpu8: 8x H100 80 GB (or H200)

The variant is a comma-separated list of words, in any order, at most one of each group:
  student:  mobilebert (default) | tiny
  strategy: pkt (default, progressive) | jkt (joint) | akt (auxiliary)
  scale:    (default: the official run) | smoke (distils the smoke teacher of
            `configs/teacher.py:smoke`, read from runs/teacher_smoke, on the embedded
            Wikipedia sample, on a CPU)
  machine:  (default: the mesh (-1,1,1), no remat) | v4_64 (TPU v4-64 or v5p-64) | v6e_64 |
            v5e_256 (v5litepod-256) | gpu8 (8 GPUs): the mesh and remat policy that fit batch
            2048 x 512 with the teacher forward in the same step, by XLA:TPU
            (`mobilebert_jax.plan.compile`) or, for GPUs, the memory plan
            (`mobilebert_jax.plan.memory`); docs/scaling.md

Defaults are the official hyperparameters: 24 stages of 10k steps of layer-wise transfer
(constant lr 1.5e-3 times the PKT layer multipliers), then 500k steps of pre-training
distillation (LAMB 1.5e-3, 10k warm-up, linear decay to 1.5e-7, weight decay 0.01, clip 1.0);
as in the official code, the LAMB moments start from zero at each stage boundary, the
mean/variance targets are all teacher layers stacked, and a 512-token sequence has 20 masked
positions.
`total_steps` counts the whole run (transfer + PD); `optimizer` is the PD optimizer.
"""
import ml_collections

from mobilebert_jax.config_defaults import pretraining_data, trainer_fields
from mobilebert_jax.models.config import PRESETS
from mobilebert_jax.train.optim import default_optimizer_config

STUDENTS = {"mobilebert": "mobilebert", "tiny": "mobilebert_tiny"}
STRATEGIES = ("pkt", "jkt", "akt")
SCALES = ("smoke",)
# machine variant -> (mesh, the student's remat policy): what `plan.compile` (TPU slices) and
# `plan.memory` (GPUs) say fits batch 2048 x 512 with the teacher forward in the same step
MACHINES = {"v4_64": ((4, 8, 1), "none"), "v6e_64": ((8, 8, 1), "none"),
            "v5e_256": ((16, 16, 1), "none"), "gpu8": ((1, 8, 1), "dots_no_batch")}


def parse_variant(variant: str) -> dict:
    """'smoke,tiny,jkt' -> {'student': 'tiny', 'strategy': 'jkt', 'scale': 'smoke',
    'machine': ''}."""
    chosen = {"student": "mobilebert", "strategy": "pkt", "scale": "", "machine": ""}
    seen = set()
    for word in filter(None, (w.strip() for w in variant.split(","))):
        group = ("student" if word in STUDENTS else "strategy" if word in STRATEGIES
                 else "scale" if word in SCALES else "machine" if word in MACHINES else None)
        if group is None:
            raise ValueError(f"unknown distill config variant {word!r}; expected a comma-"
                             f"separated list of "
                             f"{', '.join((*STUDENTS, *STRATEGIES, *SCALES, *MACHINES))}")
        if group in seen:
            raise ValueError(f"distill config variant {variant!r} names more than one {group}")
        seen.add(group)
        chosen[group] = word
    return chosen


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    choice = parse_variant(variant)
    config = ml_collections.ConfigDict()
    config.trainer = "distill"
    trainer_fields(config)
    config.teacher_checkpoint = ""  # a project checkpoint directory (trainer workdir or converted)
    config.student = STUDENTS[choice["student"]]  # the preset `model` was built from
    config.model = ml_collections.ConfigDict(dict(PRESETS[config.student], dtype="bfloat16",
                                                  remat="none", attention_mask_mode="add",
                                                  embedding_and_output_norm_eps=None))
    config.strategy = choice["strategy"]
    config.steps_per_layer = 10_000  # pkt: steps per stage; jkt: the transfer phase lasts
    # num_layers * steps_per_layer steps (the same budget); akt: unused
    config.total_steps = 24 * 10_000 + 500_000  # transfer + pre-training distillation
    config.batch_size = 2048
    config.transfer = ml_collections.ConfigDict(dict(
        learning_rate=1.5e-3,  # constant, times the layer multipliers
        multiplier=3.0,  # pkt: base * bg(t) at the layer being transferred
        lower_multiplier=0.1,  # pkt: layers below it (0 with hard_freeze)
        hard_freeze=False,
        # As the official TF1 code: at each stage boundary the LAMB moments start from zero
        # (False: they carry over), and the mean/variance targets are those of all teacher
        # hidden states stacked (False: the matching teacher layer only).
        reset_optimizer_each_stage=True,
        all_teacher_layers=True,
        weights=ml_collections.ConfigDict(dict(fmt=100.0, at=1.0, beta=5000.0, gamma=5.0)),
        optimizer="lamb",
        weight_decay=0.01,
        clip_norm=1.0,
    ))
    config.distill_ground_truth_ratio = 0.5  # PD soft labels: 0.5 one-hot + 0.5 teacher
    config.data = pretraining_data("tfds:wikipedia/20230601.en", "bert-base-uncased", 512)
    config.data.max_predictions_per_seq = 20  # the official distillation command's (not BERT's 80)
    config.optimizer = default_optimizer_config()
    config.optimizer.total_steps = 0  # PD decay steps; 0: total_steps minus the transfer steps

    if choice["scale"] == "smoke":
        config.teacher_checkpoint = "runs/teacher_smoke"
        config.model.update(num_hidden_layers=4, hidden_size=128, embedding_size=64,
                            intra_bottleneck_size=32, intermediate_size=128,
                            num_attention_heads=4, max_position_embeddings=128,
                            dtype="float32")
        # the smoke teacher's data settings: its prepared dataset is reused
        config.data = pretraining_data("gensim_wiki", "bert-base-uncased", 64)
        config.data.max_predictions_per_seq = 10
        config.data.dupe_factor = 1
        config.data.eval_fraction = 0.05
        config.data.dataset_dir = "runs/teacher_smoke/data"  # the teacher's; prepared if absent
        config.steps_per_layer = 25
        config.total_steps = 200  # 4 x 25 transfer + 100 PD
        config.batch_size = 32
        config.log_every = 20
        config.eval_every = 100
        config.eval_steps = 10  # 320 held-out examples
        config.checkpoint_every = 100
        config.optimizer.update(learning_rate=2e-3, warmup_steps=20, end_learning_rate=0.0)
    if choice["machine"]:
        if choice["scale"]:
            raise ValueError(f"distill config variant {variant!r}: a machine variant is for the "
                             "official run, not the smoke scale")
        config.mesh.shape, config.model.remat = MACHINES[choice["machine"]]
        config.grad_accum_steps = 1
    return config
