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

from mobilebert_jax.config_defaults import finetune_fields

DEFAULT_TASK = "mrpc"


def get_config(task: str = "") -> ml_collections.ConfigDict:
    config = finetune_fields(ml_collections.ConfigDict())
    config.trainer = "finetune_glue"
    config.task = task or DEFAULT_TASK  # checked by the trainer: an unknown task is an error
    config.data_dir = ""  # required: the GLUE root, a task folder, or "tfds"
    config.eval_subset = 0  # first N dev examples only (0: all)
    config.predict_test = True  # write submission files for the test TSVs found
    return config
