"""Entry point of every job:

    python -m mobilebert_jax.main --config=configs/teacher.py[:VARIANT] --workdir=DIR \
        [--config.a.b=v]

The config's `trainer` field picks the job (pretrain, distill, finetune_glue, finetune_squad,
finetune_text).
Multi-process runs (`--num_processes>1`, or a cluster that JAX detects with several processes: a
multi-host Cloud TPU VM slice, GKE, SLURM) call `jax.distributed.initialize` first; a single
process never does. JAX's persistent compilation cache is on for every job (`compile_cache`).
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from mobilebert_jax import cli, files

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-process).")
flags.mark_flags_as_required(["config", "workdir"])

TRAINERS = {
    "pretrain": "mobilebert_jax.train.pretrain",
    "distill": "mobilebert_jax.train.distill",
    "finetune_glue": "mobilebert_jax.train.finetune",
    "finetune_squad": "mobilebert_jax.train.finetune",
    "finetune_text": "mobilebert_jax.train.finetune",
}


def cluster_process_count() -> int:
    """How many processes the cluster this process runs in has (1 outside any), by JAX's own
    cluster detection, the one `jax.distributed.initialize()` uses: Cloud TPU VMs (GCE
    metadata), GKE, SLURM, Open MPI."""
    from jax._src import clusters  # JAX's detection; no public API exposes the count first

    env = next((e for e in clusters.ClusterEnv._cluster_types
                if not e.opt_in_only_method and e.is_env_present()), None)
    return env.get_process_count() if env is not None else 1


def vocab_size_from_tokenizer(config) -> None:
    """The `vocab_size` of a pretrained model (teacher pretraining, or the student of
    distillation) from its tokenizer (`data.tokenizer`), unless given on the command line
    (`--config.model.vocab_size`): then the two must agree."""
    if config.trainer not in ("pretrain", "distill") or not config.data.get("tokenizer"):
        return
    from mobilebert_jax.data import tokenizers

    tokenizer = tokenizers.load_tokenizer(config.data.tokenizer)
    if "model.vocab_size" in config_flags.get_override_values(FLAGS["config"]):
        if config.model.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"--config.model.vocab_size={config.model.vocab_size} but the "
                             f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} entries "
                             "(leave model.vocab_size out to take the tokenizer's)")
    elif config.model.vocab_size != tokenizer.vocab_size:
        from mobilebert_jax.console import log

        log(f"model.vocab_size={tokenizer.vocab_size}, the size of the tokenizer {tokenizer.path}")
        config.model.vocab_size = tokenizer.vocab_size


def initialize_distributed() -> None:
    """`jax.distributed.initialize` for a multi-process run: the explicit flags, or the
    cluster's own settings; a single process never initializes."""
    import jax

    if FLAGS.num_processes is not None:
        if FLAGS.num_processes <= 1:
            return
        kwargs = dict(coordinator_address=FLAGS.coordinator_address,
                      num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    elif cluster_process_count() > 1:
        kwargs = {}
    else:
        return
    if "cpu" in os.environ.get("JAX_PLATFORMS", ""):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


@cli.guarded
def main(argv):
    del argv
    import importlib

    from mobilebert_jax import host_memory

    host_memory.keep_freed_memory()  # before JAX starts its threads

    from absl import logging

    # Library INFO chatter (tfds, gensim, orbax) off; the trainers print their own progress.
    logging.set_verbosity(logging.WARNING)
    from mobilebert_jax import config_checks

    config = FLAGS.config
    trainer = config.get("trainer")
    if trainer not in TRAINERS:
        raise ValueError(f"unknown trainer {trainer!r} in config; expected one of "
                         f"{', '.join(TRAINERS)}")
    config_checks.check_config(config)
    initialize_distributed()
    vocab_size_from_tokenizer(config)
    workdir = files.resolve(FLAGS.workdir)
    files.makedirs(workdir)
    from mobilebert_jax import compile_cache
    compile_cache.enable(config.get("compilation_cache_dir", "")
                         or files.join(workdir, compile_cache.CACHE_SUBDIR))
    module = importlib.import_module(TRAINERS[trainer])
    module.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=cli.parse_flags))
