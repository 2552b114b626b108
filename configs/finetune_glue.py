"""GLUE fine-tuning from any project checkpoint directory.

    python -m mobilebert_jax.main --config=configs/finetune_glue.py:mrpc --workdir=DIR \
        --config.init_checkpoint=CKPT_DIR --config.data_dir=GLUE_DIR

`data_dir` (required) is the GLUE root holding the task folders (MRPC/, SST-2/, ... with the
official train/dev/test TSVs), one task's folder, or `tfds` for a prepared TFDS `glue/<task>`.
The variant (or `--config.task=`) is one of cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli.
Recipe (reference §5): AdamW without bias correction, 10% warm-up then linear decay, clipping
1.0, dropout 0.1 on [CLS]; seq 128. The paper searches lr in (1-10)e-5, 2-10 epochs and batch
{16, 32, 48}: `python -m mobilebert_jax.train.sweep` runs such a search.
"""
import ml_collections

from mobilebert_jax.parallel import DEFAULT_RULES

DEFAULT_TASK = "mrpc"


def get_config(task: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.trainer = "finetune_glue"
    config.task = task or DEFAULT_TASK  # checked by the trainer: an unknown task is an error
    config.init_checkpoint = ""  # a project checkpoint directory (teacher, student, converted)
    config.tokenizer = ""  # vocab.txt / *.model; empty: the one stored in init_checkpoint
    config.lower_case = True
    config.data_dir = ""  # required: the GLUE root, a task folder, or "tfds"
    config.learning_rate = 5e-5
    config.num_epochs = 3
    config.batch_size = 32
    config.grad_accum_steps = 1  # micro-batches per step (batch_size is split among them)
    config.eval_batch_size = 64
    config.max_seq_length = 128
    config.seed = 0
    config.warmup_proportion = 0.1
    config.decay_after_warmup = False  # False: the official BERT schedule
    config.weight_decay = 0.01
    config.adam_eps = 1e-6
    config.bias_correction = False  # the official AdamW has none
    config.clip_norm = 1.0
    config.classifier_dropout = 0.1
    # int8 fake quantization of the dense layers (models/qat.py), for an int8 TFLite export
    config.qat = False
    config.best_metric = ""  # empty: the task's first metric (accuracy_matched for MNLI)
    config.keep_checkpoints = 1  # the best N evaluated checkpoints are kept
    config.train_subset = 0  # first N training examples only (0: all)
    config.eval_subset = 0  # first N dev examples only (0: all)
    config.predict_test = True  # write submission files for the test TSVs found
    config.log_every = 50
    config.checkpoint_every = 500  # resumable train state; also saved after every epoch
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), rules=DEFAULT_RULES))
    return config
