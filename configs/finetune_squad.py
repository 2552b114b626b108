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

from mobilebert_jax.parallel import DEFAULT_RULES


def get_config(version: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.trainer = "finetune_squad"
    config.version = version or "1.1"  # "1.1" or "2.0", checked by the trainer
    config.init_checkpoint = ""
    config.tokenizer = ""  # empty: the vocabulary stored in init_checkpoint
    config.lower_case = True
    config.data_dir = ""  # holds train-v<V>.json / dev-v<V>.json (or set the files)
    config.train_file = ""  # empty: data_dir/train-v<V>.json
    config.eval_file = ""  # empty: data_dir/dev-v<V>.json
    config.predict_file = ""  # optional: also write predictions.json for this file
    config.train_articles = 0  # > 0: split train_file by article (see the docstring)
    config.eval_articles = 0
    config.learning_rate = 4e-5
    config.num_epochs = 5
    config.batch_size = 32
    config.grad_accum_steps = 1  # micro-batches per step (batch_size is split among them)
    config.eval_batch_size = 64
    config.max_seq_length = 384
    config.doc_stride = 128
    config.max_query_length = 64
    config.n_best_size = 20
    config.max_answer_length = 30
    config.null_score_diff_threshold = 0.0  # v2.0: answer "" when null - best > threshold
    config.seed = 0
    config.warmup_proportion = 0.1
    config.decay_after_warmup = False
    config.weight_decay = 0.01
    config.adam_eps = 1e-6
    config.bias_correction = False
    config.clip_norm = 1.0
    # int8 fake quantization of the dense layers (models/qat.py), for an int8 TFLite export
    config.qat = False
    config.best_metric = ""  # empty: f1
    config.keep_checkpoints = 1
    config.train_subset = 0  # N training windows drawn at random with the seed (0: all)
    config.log_every = 50
    config.checkpoint_every = 500  # resumable train state; also saved after every epoch
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), rules=DEFAULT_RULES))
    return config
