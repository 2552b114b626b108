"""What several test modules share, besides the fixtures (those are in conftest.py): the config
files loaded by path, the tiny models and data settings of the trainer tests, config overrides,
and the entry point run in this process or in several processes.

    from tests import helpers
    from tests.helpers import TINY_TEACHER, apply_overrides
"""
import functools
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import types

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FIXTURES = REPO / "tests" / "fixtures"


# -- the config files ------------------------------------------------------------------------
@functools.cache
def config_module(name: str) -> types.ModuleType:
    """configs/NAME.py as a module, loaded from its path as `--config=configs/NAME.py` loads it
    (no sys.path entry; the file imports only from the installed package)."""
    path = CONFIGS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_overrides(config, overrides: dict):
    """Sets dotted-path fields ("optimizer.learning_rate") of an ml-collections config."""
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def dotted_overrides(overrides: dict, prefix: str = "") -> dict:
    """A nested dict of config overrides as {"a.b": v} (what `apply_overrides` takes)."""
    flat = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update(dotted_overrides(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def flatten_overrides(overrides: dict) -> list[str]:
    """`--config.a.b=v` flags for a nested dict of config overrides."""
    return [f"--config.{key}={value}" for key, value in dotted_overrides(overrides).items()]


# -- the tiny models and data ---------------------------------------------------------------
# The tiny model of the model-level tests (vocab 64, up to 16 positions): the fields set on a
# preset ("mobilebert", "mobilebert_tiny" or "ibbert_large").
TINY_MODEL = dict(vocab_size=64, hidden_size=32, embedding_size=16, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=24, intra_bottleneck_size=16,
                  max_position_embeddings=16)
# An IB-BERT-shaped teacher (the smoke teacher's architecture, smaller): the fields set on
# configs/teacher.py:smoke's model, or on the "ibbert_large" preset.
TINY_TEACHER = dict(num_hidden_layers=2, hidden_size=32, embedding_size=16,
                    intra_bottleneck_size=64, intermediate_size=64, num_attention_heads=4,
                    max_position_embeddings=64)
# A MobileBERT-shaped student of that teacher: the fields set on configs/distill.py:smoke's model.
TINY_STUDENT = dict(num_hidden_layers=2, hidden_size=32, embedding_size=16,
                    intra_bottleneck_size=16, intermediate_size=32, num_attention_heads=4,
                    max_position_embeddings=64, num_feedforward_networks=2, dtype="float32")
SPL = 10  # steps per layer (per transfer stage) of the distillation runs


def tiny_teacher_config():
    """TINY_TEACHER as a model config (the "ibbert_large" preset with its fields)."""
    from mobilebert_jax.models.config import get_config

    return get_config("ibbert_large", **TINY_TEACHER)


def save_tiny_teacher(out: str, seed: int = 7):
    """A randomly initialised TINY_TEACHER saved as a project checkpoint directory (local or
    gs://); returns its model config."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from mobilebert_jax import checkpoint
    from mobilebert_jax.models.heads import MobileBertForPreTraining

    config = tiny_teacher_config()
    params = MobileBertForPreTraining(config).init(jax.random.PRNGKey(seed),
                                                   jnp.zeros((1, 64), jnp.int32))["params"]
    checkpoint.save_pretrained(str(out), config, nn.meta.unbox(params))
    return config


def small_data(data_dir) -> dict:
    """The data section for conftest's `small_pretraining_data` (prepared already: no corpus)."""
    return dict(dataset_dir=str(data_dir), corpus="", seq_len=64, max_predictions_per_seq=10)


def teacher_overrides(data_dir, **extra) -> dict:
    """Overrides of configs/teacher.py:smoke for TINY_TEACHER on the small data, batch 8; a dict
    in `extra` updates the section of that name."""
    base = dict(model=TINY_TEACHER, data=small_data(data_dir), batch_size=8, log_every=1,
                eval_every=1000, optimizer=dict(warmup_steps=2))
    for key, value in extra.items():
        base[key] = dict(base.get(key, {}), **value) if isinstance(value, dict) else value
    return base


def in_process_config(data_dir, **extra):
    """The same settings as `teacher_overrides`, as a config for an in-process run."""
    return apply_overrides(config_module("teacher").get_config("smoke"),
                           dotted_overrides(teacher_overrides(data_dir, **extra)))


def glue_overrides(ckpt, data) -> dict:
    """Overrides of configs/finetune_glue.py:mrpc for conftest's `tiny_checkpoint` and
    `glue_dir`: two epochs of three steps."""
    return dict(init_checkpoint=str(ckpt), data_dir=str(data), batch_size=8,
                eval_batch_size=8, num_epochs=2, max_seq_length=16, learning_rate=1e-3,
                log_every=1, checkpoint_every=2)


def metrics_rows(workdir) -> list[dict]:
    """The rows of a workdir's metrics.jsonl."""
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def losses(workdir) -> dict:
    """{step: training loss} of a workdir's metrics.jsonl."""
    return {r["step"]: r["loss"] for r in metrics_rows(workdir) if "loss" in r}


# -- the tiny fine-tuning checkpoint (conftest's `tiny_checkpoint`) --------------------------
WORDS = ("the cat dog sat ran on a mat big small red blue house tree is was "
         "where did go when who park home yesterday today").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_model_config(vocab_size: int):
    """A two-layer plain BERT (no bottleneck, LayerNorm, tanh pooler)."""
    from mobilebert_jax.models.config import MobileBertConfig

    return MobileBertConfig(
        vocab_size=vocab_size, hidden_size=32, embedding_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, hidden_act="gelu_exact",
        hidden_dropout_prob=0.1, max_position_embeddings=64, trigram_input=False,
        use_bottleneck=False, intra_bottleneck_size=32, key_query_shared_bottleneck=False,
        num_feedforward_networks=1, normalization_type="layer_norm",
        classifier_activation=True)


# -- the entry point, in this process ----------------------------------------------------------
def run_main(argv, capsys, stdout: bool = False):
    """main.py in this process (its absl flags parsed from `argv`); returns (rc, stderr), or
    (rc, stdout + stderr) with `stdout`."""
    from absl import flags

    from mobilebert_jax import main as main_mod

    argv = ["main"] + [str(a) for a in argv]
    saved = sys.argv
    sys.argv = argv  # config_flags finds the --config.* overrides in sys.argv
    try:
        flags.FLAGS.unparse_flags()
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)  # the previous call's overrides
        flags.FLAGS(argv)
        rc = main_mod.main([])
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return rc, (captured.out + captured.err) if stdout else captured.err


def glue_args(ckpt, data, workdir, *extra) -> list[str]:
    """main.py's arguments for a short MRPC fine-tuning of `ckpt` on `data`."""
    return [f"--config={CONFIGS / 'finetune_glue.py'}:mrpc", f"--workdir={workdir}",
            f"--config.init_checkpoint={ckpt}", f"--config.data_dir={data}",
            "--config.batch_size=8", "--config.eval_batch_size=8", "--config.num_epochs=2",
            "--config.max_seq_length=16", "--config.learning_rate=1e-3", "--config.log_every=1",
            *extra]


# -- the entry point, in several processes ---------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_main(config: str, workdir, overrides: dict, num_processes: int = 1,
               devices: int = 8) -> list:
    """Starts `python -m mobilebert_jax.main` as `num_processes` processes of `devices` CPU
    devices each (gloo collectives); returns the Popen objects (stdout+stderr piped)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", "mobilebert_jax.main", f"--config={CONFIGS / config}",
           f"--workdir={workdir}", *flatten_overrides(overrides)]
    if num_processes == 1:
        return [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)]
    port = free_port()
    return [subprocess.Popen(cmd + [f"--coordinator_address=127.0.0.1:{port}",
                                    f"--num_processes={num_processes}", f"--process_id={i}"],
                             env=env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for i in range(num_processes)]


def run_main_processes(config: str, workdir, overrides: dict, num_processes: int = 1,
                       timeout: float = 600) -> list[str]:
    """Runs the entry point to the end in `num_processes` processes (8 devices in all);
    asserts every process exits 0; returns their outputs."""
    procs = start_main(config, workdir, overrides, num_processes, 8 // num_processes)
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(outs)[-6000:]
    return outs


def run_module(module, *args, cwd=REPO, env=None, timeout=300):
    """`python -m MODULE ARGS` from the repository root (or `cwd`), on the CPU, with `env` added
    to the environment."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})),
                          capture_output=True, text=True, timeout=timeout)
