"""Entry point of every job:

    python -m mobilebert_jax.main --config=configs/teacher.py[:VARIANT] --workdir=DIR [--config.a.b=v]

The config's `trainer` field picks the job (pretrain, distill, finetune_glue, finetune_squad).
Multi-process runs (`--num_processes>1`, or a cluster that JAX detects with several processes: a
multi-host Cloud TPU VM slice, GKE, SLURM) call `jax.distributed.initialize` first; a single
process never does.
"""
import os
import re
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


def cluster_process_count() -> int:
    """How many processes the cluster this process runs in has (1 outside any), by JAX's own
    cluster detection, the one `jax.distributed.initialize()` uses: Cloud TPU VMs (GCE
    metadata), GKE, SLURM, Open MPI."""
    from jax._src import clusters  # JAX's detection; no public API exposes the count first

    env = next((e for e in clusters.ClusterEnv._cluster_types
                if not e.opt_in_only_method and e.is_env_present()), None)
    return env.get_process_count() if env is not None else 1


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


def one_line(error: BaseException) -> str:
    """One line that names the problem, from an error whose message may hold a traceback or a
    multi-line report (absl and ml_collections wrap the config file's own errors)."""
    text = str(error)
    suggestion = re.search(r"'(\w+)'.*Did you mean \"(\w+)\"", text.replace("\\", ""), re.S)
    if suggestion:
        return (f"the config has no field {suggestion[1]!r}; did you mean "
                f"{suggestion[2]!r}?")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    if "Traceback (most recent call last)" in text:  # the wrapped error is the last line
        head = lines[0].split("Error whilst")[0].rstrip(": ")
        cause = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1])
        return f"{head}: {cause}"
    errno = [ln for ln in lines if ln.startswith("[Errno")]
    if errno:  # ml_collections' "Failed loading config file" report
        return errno[-1]
    return lines[0]


def parse_flags(argv):
    """absl flag parsing (the config file, its variant and every --config.x=y override, which
    ml_collections loads lazily: forced here) with a one-line error instead of a traceback."""
    try:
        args = FLAGS(argv)
        if FLAGS.config is not None:
            FLAGS.config.get("trainer")
        return args
    except Exception as e:  # the config file is user code: anything may come out of it
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)


def main(argv):
    del argv
    import importlib

    from absl import logging

    # Library INFO chatter (tfds, gensim, orbax) off; the trainers print their own progress.
    logging.set_verbosity(logging.WARNING)
    from mobilebert_jax import config_checks
    from mobilebert_jax.train.loop import NonFiniteLoss

    config = FLAGS.config
    trainer = config.get("trainer")
    try:
        if trainer not in TRAINERS:
            raise ValueError(f"unknown trainer {trainer!r} in config; expected one of "
                             f"{', '.join(TRAINERS)}")
        config_checks.check_config(config)
        initialize_distributed()
        workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
        os.makedirs(workdir, exist_ok=True)
        module = importlib.import_module(TRAINERS[trainer])
        module.train_and_evaluate(config, workdir)
    except (ValueError, OSError, NonFiniteLoss) as e:
        where = f"{e.filename}: " if isinstance(e, OSError) and e.filename else ""
        message = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
        print(f"error: {where}{message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=parse_flags))
