"""Config sections shared by the trainer configs (configs/teacher.py, configs/distill.py): run
control, data, mesh. Here, in the package, so that a config file loaded by path (ml_collections'
`--config=PATH[:VARIANT]`) imports them from any working directory."""
import ml_collections

from mobilebert_jax.parallel import DEFAULT_RULES


def trainer_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the fields every trainer config has (values are the full-scale defaults)."""
    config.seed = 0
    config.total_steps = 500_000
    config.batch_size = 4096  # global, over all processes
    config.grad_accum_steps = 1  # micro-batches per step (batch_size is split among them)
    config.log_every = 100
    config.eval_every = 10_000
    config.eval_steps = 50
    config.checkpoint_every = 5_000
    config.keep_checkpoints = 3
    config.async_checkpointing = True
    config.init_checkpoint = ""  # a project checkpoint dir whose params start the run
    # JAX's persistent compilation cache (local or gs://); empty: <workdir>/compilation_cache
    config.compilation_cache_dir = ""
    config.mesh = ml_collections.ConfigDict(dict(
        shape=(-1, 1, 1),  # (data, fsdp, tensor); -1 = the devices left
        # slices (multislice TPU) each axis spans; -1 = the slices left: data parallelism
        # across slices; (1, 1, 1) on one slice
        dcn_shape=(-1, 1, 1),
        rules=DEFAULT_RULES,
    ))
    return config


def pretraining_data(corpus: str, tokenizer: str, seq_len: int = 128) -> ml_collections.ConfigDict:
    """The MLM + NSP data section: a corpus prepared into `dataset_dir` (reused when present)."""
    return ml_collections.ConfigDict(dict(
        corpus=corpus,  # gensim_wiki | text:PATHS | wiki_articles:PATH | tfds:NAME[:SPLIT]
        # vocab.txt (WordPiece) or *.model (SentencePiece); "bert-base-uncased"
        tokenizer=tokenizer,
        dataset_dir="",  # prepared dataset; empty: <workdir>/data
        seq_len=seq_len,
        max_predictions_per_seq=20 if seq_len <= 128 else 80,
        dupe_factor=5,
        short_seq_prob=0.1,
        masked_lm_prob=0.15,
        whole_word_masking=False,
        static_masking=False,
        eval_fraction=0.01,
        seed=0,  # the dataset's cuts, pairs and split (the training seed is `seed`)
        num_workers=1,  # local worker processes preparing the dataset on first use
    ))


def finetune_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the fields every fine-tuning config has (configs/finetune_*.py): the starting
    checkpoint, the official recipe (reference §5: AdamW without bias correction, 10% warm-up
    then linear decay, clipping 1.0, dropout 0.1 on [CLS]) and run control."""
    config.init_checkpoint = ""  # a project checkpoint directory (teacher, student, converted)
    config.tokenizer = ""  # vocab.txt / *.model; empty: the one stored in init_checkpoint
    config.lower_case = True
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
    config.best_metric = ""  # empty: the task's first metric
    config.keep_checkpoints = 1  # the best N evaluated checkpoints are kept
    config.train_subset = 0  # first N training examples only (0: all)
    config.log_every = 50
    config.checkpoint_every = 500  # resumable train state; also saved after every epoch
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), rules=DEFAULT_RULES))
    return config
