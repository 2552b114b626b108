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
