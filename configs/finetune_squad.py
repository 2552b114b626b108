"""SQuAD v1.1 / v2.0 fine-tuning from any project checkpoint directory.

    python -m mobilebert_jax.main --config=configs/finetune_squad.py:1.1 --workdir=DIR \
        --config.init_checkpoint=CKPT_DIR --config.data_dir=SQUAD_DIR

`data_dir` holds train-v<V>.json and dev-v<V>.json (or set `train_file` / `eval_file`). With
`train_articles` > 0 the train file is split by article: its first `train_articles` articles
train and the next `eval_articles` (0: the rest) evaluate — the demo on SQuAD dev alone.
Recipe (reference §5): lr 4e-5, batch 32, 5 epochs, seq 384, doc_stride 128, max_query 64,
n_best 20, max_answer 30; AdamW without bias correction, 10% warm-up, clipping 1.0.
"""
import ml_collections

from mobilebert_jax.config_defaults import finetune_fields


def get_config(version: str = "") -> ml_collections.ConfigDict:
    config = finetune_fields(ml_collections.ConfigDict())
    config.trainer = "finetune_squad"
    config.version = version or "1.1"  # "1.1" or "2.0", checked by the trainer
    config.data_dir = ""  # holds train-v<V>.json / dev-v<V>.json (or set the files)
    config.train_file = ""  # empty: data_dir/train-v<V>.json
    config.eval_file = ""  # empty: data_dir/dev-v<V>.json
    config.predict_file = ""  # optional: also write predictions.json for this file
    config.train_articles = 0  # > 0: split train_file by article (see the docstring)
    config.eval_articles = 0
    config.learning_rate = 4e-5
    config.num_epochs = 5
    config.max_seq_length = 384
    config.doc_stride = 128
    config.max_query_length = 64
    config.n_best_size = 20
    config.max_answer_length = 30
    config.null_score_diff_threshold = 0.0  # v2.0: answer "" when null - best > threshold
    return config
