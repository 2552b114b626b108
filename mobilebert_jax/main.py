"""Entry point of every job:

    python -m mobilebert_jax.main --config=configs/teacher.py[:VARIANT] --workdir=DIR [--config.a.b=v]

The config's `trainer` field picks the job (pretrain, distill, finetune_glue, finetune_squad).
Multi-process runs (`--num_processes>1`, a multi-worker Cloud TPU, or a SLURM job with several
tasks) call `jax.distributed.initialize` first; a single process never does.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

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
}


def multi_process_requested() -> bool:
    if FLAGS.num_processes is not None:
        return FLAGS.num_processes > 1
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_distributed() -> None:
    import jax

    if not multi_process_requested():
        return
    if "cpu" in os.environ.get("JAX_PLATFORMS", ""):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if FLAGS.coordinator_address:
        kwargs = dict(coordinator_address=FLAGS.coordinator_address,
                      num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    jax.distributed.initialize(**kwargs)


def main(argv):
    del argv
    import importlib

    from absl import logging

    # Library INFO chatter (tfds, gensim, orbax) off; the trainers print their own progress.
    logging.set_verbosity(logging.WARNING)
    from mobilebert_jax.train.state import NonFiniteLoss

    config = FLAGS.config
    trainer = config.get("trainer")
    if trainer not in TRAINERS:
        print(f"error: unknown trainer {trainer!r} in config; expected one of "
              f"{', '.join(TRAINERS)}", file=sys.stderr)
        return 1
    initialize_distributed()
    workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
    os.makedirs(workdir, exist_ok=True)
    module = importlib.import_module(TRAINERS[trainer])
    try:
        module.train_and_evaluate(config, workdir)
    except (ValueError, FileNotFoundError, FileExistsError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
