"""IB-BERT_LARGE teacher pretraining (MLM + NSP).

    python -m mobilebert_jax.main --config=configs/teacher.py --workdir=DIR
    python -m mobilebert_jax.main --config=configs/teacher.py:smoke --workdir=DIR
    python -m mobilebert_jax.main --config=configs/teacher.py:phase2 --workdir=DIR \
        --config.init_checkpoint=PHASE1_WORKDIR
    python -m mobilebert_jax.main --config=configs/teacher.py:v4_64 --workdir=DIR   # TPU v4-64
    python -m mobilebert_jax.main --config=configs/teacher.py:v6e_64 --workdir=DIR  # TPU v6e-64
    python -m mobilebert_jax.main --config=configs/teacher.py:v5e_256 --workdir=DIR # TPU v5e-256
    python -m mobilebert_jax.main --config=configs/teacher.py:gpu8 --workdir=DIR    # 8 GPUs

Default: the paper's recipe (LAMB, 500k steps, batch 4096, seq 128, 30,522 WordPiece vocab,
English Wikipedia from TFDS). `phase2`: the optional seq-512 phase, starting from a phase-1
checkpoint. `smoke`: a small IB-BERT-shaped teacher on the Wikipedia sample inside the gensim
wheel, minutes on a CPU. `v4_64` (32 chips) and `gpu8` (8× H100 80 GB, or H200): the paper's
batch 4096 × 128 with the mesh, remat policy and accumulation that `mobilebert_jax.plan.memory`
plans for that machine (docs/scaling.md, "Memory plan"); `v4_64` also fits a v5p-64 (32 chips),
and splits the attention-output and FFN-output kernels on their input side
(`parallel.ROW_SPLIT_RULES`), with which XLA:TPU reduce-scatters their gradients there.
`v6e_64` (64 chips): the same batch on the mesh (8,8,1), no remat, that XLA:TPU compiles within
a v6e chip's HBM; `v5e_256` (256 chips): mesh (16,16,1), no remat, within a v5e chip's 16 GB,
with the kernel split of `v4_64` (docs/scaling.md, "Compiled for a TPU slice or GPUs, on a CPU").
"""
import ml_collections

from mobilebert_jax.config_defaults import pretraining_data, trainer_fields
from mobilebert_jax.models.config import PRESETS
from mobilebert_jax.parallel import ROW_SPLIT_RULES
from mobilebert_jax.train.optim import default_optimizer_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.trainer = "pretrain"
    trainer_fields(config)
    config.model = ml_collections.ConfigDict(dict(PRESETS["ibbert_large"], dtype="bfloat16",
                                                  remat="none", attention_mask_mode="add",
                                                  embedding_and_output_norm_eps=None))
    config.data = pretraining_data("tfds:wikipedia/20230601.en", "bert-base-uncased")
    config.optimizer = default_optimizer_config()
    config.optimizer.total_steps = 0  # decay steps; 0: the run's total_steps
    if variant == "phase2":
        config.data = pretraining_data("tfds:wikipedia/20230601.en", "bert-base-uncased", 512)
        config.total_steps = 50_000
        config.optimizer.warmup_steps = 5_000
    elif variant == "smoke":
        config.model.update(num_hidden_layers=4, hidden_size=128, embedding_size=64,
                            intra_bottleneck_size=256, intermediate_size=1024,
                            num_attention_heads=4, max_position_embeddings=128,
                            dtype="float32")
        config.data = pretraining_data("gensim_wiki", "bert-base-uncased", 64)
        config.data.max_predictions_per_seq = 10  # 15% of 64 tokens
        config.data.dupe_factor = 1
        config.data.eval_fraction = 0.05
        config.total_steps = 200
        config.batch_size = 8
        config.log_every = 20
        config.eval_every = 50
        config.eval_steps = 10
        config.checkpoint_every = 100
        config.optimizer.update(learning_rate=2e-3, warmup_steps=30, end_learning_rate=0.0)
    elif variant == "v4_64":
        config.mesh.shape = (4, 8, 1)
        config.model.remat = "none"
        config.grad_accum_steps = 1
        config.mesh.rules = ROW_SPLIT_RULES
    elif variant == "v6e_64":
        config.mesh.shape = (8, 8, 1)
        config.model.remat = "none"
        config.grad_accum_steps = 1
    elif variant == "v5e_256":
        config.mesh.shape = (16, 16, 1)
        config.model.remat = "none"
        config.grad_accum_steps = 1
        config.mesh.rules = ROW_SPLIT_RULES
    elif variant == "gpu8":
        config.mesh.shape = (1, 8, 1)
        config.model.remat = "dots_no_batch"
        config.grad_accum_steps = 1
    elif variant:
        raise ValueError(f"unknown teacher config variant {variant!r}; expected smoke, phase2, "
                         "v4_64, v6e_64, v5e_256 or gpu8")
    return config
