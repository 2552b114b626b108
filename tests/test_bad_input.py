"""Bad input to the entry points: one `error:` line naming the problem, exit code 1, no
traceback, and nothing written (malformed files: test_bad_files.py); and the range check of
every numeric config field."""
import pytest

from mobilebert_jax import config_checks
from tests.helpers import apply_overrides, config_module, run_module

distill_config = config_module("distill")
finetune_glue = config_module("finetune_glue")
finetune_squad = config_module("finetune_squad")
teacher = config_module("teacher")

SMOKE = "--config=configs/teacher.py:smoke"


def run_cli(*args):
    return run_module("mobilebert_jax.main", *args)


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/nope.py"], "No such file or directory: 'configs/nope.py'"),
    (["--config=configs/teacher.py:smok"], "unknown teacher config variant 'smok'"),
    (["--config=configs/distill.py:smoke,foo"], "unknown distill config variant 'foo'"),
    ([SMOKE, "--config.totl_steps=3"], "no field 'totl_steps'; did you mean 'total_steps'?"),
    ([SMOKE, "--config.total_steps=abc"], "--config.total_steps=abc: invalid literal"),
    ([SMOKE, "--config.log_every=0"], "config.log_every=0: must be an integer >= 1"),
    ([SMOKE, "--config.keep_checkpoints=0"], "config.keep_checkpoints=0: must be an integer"),
    ([SMOKE, "--config.optimizer.learning_rate=-1"], "config.optimizer.learning_rate=-1"),
    ([SMOKE, "--config.data.masked_lm_prob=1.5"], "config.data.masked_lm_prob=1.5"),
    ([SMOKE, "--config.grad_accum_steps=5"], "not divisible by config.grad_accum_steps=5"),
    (["--config=configs/finetune_glue.py:mrpc", "--config.num_epochs=0"],
     "config.num_epochs=0"),
    ([], "Flag --config must have a value"),
])
def test_config_mistakes_are_one_line(tmp_path, args, expected):
    workdir = tmp_path / "w"
    r = run_cli(*args, f"--workdir={workdir}")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out, out
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, last
    assert not workdir.exists()  # nothing is written for a config that cannot run


def test_a_workdir_that_is_a_file_is_named(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    r = run_cli(SMOKE, f"--workdir={file}/run")
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: {file}/run: Not a directory"
    assert file.read_text() == "x"


CONFIGS = {"teacher": lambda: teacher.get_config("smoke"),
           "distill": lambda: distill_config.get_config("smoke"),
           "glue": lambda: finetune_glue.get_config("mrpc"),
           "squad": lambda: finetune_squad.get_config("1.1")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_shipped_configs_pass_the_check(name):
    config_checks.check_config(CONFIGS[name]())


@pytest.mark.parametrize("config_name, field, value, message", [
    ("teacher", "total_steps", 0, "integer >= 1"),
    ("teacher", "batch_size", -8, "integer >= 1"),
    ("teacher", "eval_every", 0, "integer >= 1"),
    ("teacher", "eval_steps", 0, "integer >= 1"),
    ("teacher", "checkpoint_every", 0, "integer >= 1"),
    ("teacher", "seed", -1, "integer >= 0"),
    ("teacher", "data.seq_len", 4, "integer >= 8 and <= 4096"),
    ("teacher", "data.max_predictions_per_seq", 0, "integer >= 1"),
    ("teacher", "data.dupe_factor", 0, "integer >= 1"),
    ("teacher", "data.short_seq_prob", 1.5, "number >= 0.0 and <= 1.0"),
    ("teacher", "data.masked_lm_prob", 0.0, "number > 0.0 and < 1.0"),
    ("teacher", "data.eval_fraction", 1.0, "number >= 0.0 and < 1.0"),
    ("teacher", "optimizer.learning_rate", 0.0, "number > 0.0"),
    ("teacher", "optimizer.learning_rate", float("nan"), "number > 0.0"),
    ("teacher", "optimizer.warmup_steps", -1, "integer >= 0"),
    ("teacher", "optimizer.weight_decay", -0.1, "number >= 0.0"),
    ("distill", "steps_per_layer", 0, "integer >= 1"),
    ("distill", "transfer.learning_rate", 0.0, "number > 0.0"),
    ("distill", "distill_ground_truth_ratio", 2.0, "number >= 0.0 and <= 1.0"),
    ("glue", "num_epochs", 0, "integer >= 1"),
    ("glue", "eval_batch_size", 0, "integer >= 1"),
    ("glue", "max_seq_length", 4, "integer >= 8 and <= 4096"),
    ("glue", "warmup_proportion", 1.0, "number >= 0.0 and < 1.0"),
    ("glue", "classifier_dropout", 1.0, "number >= 0.0 and < 1.0"),
    ("glue", "train_subset", -1, "integer >= 0"),
    ("squad", "doc_stride", 0, "integer >= 1"),
    ("squad", "n_best_size", 0, "integer >= 1"),
    ("squad", "max_answer_length", 0, "integer >= 1"),
    ("squad", "learning_rate", -4e-5, "number > 0.0"),
])
def test_out_of_range_fields_are_named(config_name, field, value, message):
    config = apply_overrides(CONFIGS[config_name](), {field: value})
    with pytest.raises(ValueError, match=rf"^config\.{field}=.*: must be an? {message}$"):
        config_checks.check_config(config)


def test_warmup_longer_than_the_schedule_is_refused():
    config = apply_overrides(teacher.get_config("smoke"),
                             {"optimizer.warmup_steps": 50, "optimizer.total_steps": 10})
    with pytest.raises(ValueError, match="warmup_steps=50 exceeds .*total_steps=10"):
        config_checks.check_config(config)


@pytest.fixture(scope="module")
def mismatched_checkpoint(tmp_path_factory):
    """A project checkpoint whose model_config.json claims one layer more than its params."""
    import json

    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from mobilebert_jax import checkpoint
    from mobilebert_jax.models import MobileBertForPreTraining, get_config

    config = get_config("mobilebert_tiny", num_hidden_layers=2)
    params = nn.meta.unbox(MobileBertForPreTraining(config).init(
        jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"])
    out = tmp_path_factory.mktemp("mismatch") / "ckpt"
    checkpoint.save_pretrained(str(out), config, params)
    cfg_path = out / checkpoint.MODEL_CONFIG
    claimed = json.loads(cfg_path.read_text())
    claimed["num_hidden_layers"] = 3
    cfg_path.write_text(json.dumps(claimed))
    return out


def test_a_config_that_does_not_describe_its_params_is_refused_on_load(mismatched_checkpoint):
    from mobilebert_jax import checkpoint

    with pytest.raises(ValueError, match=r"params lack bert/encoder/layer_2/"):
        checkpoint.load_pretrained(str(mismatched_checkpoint))


@pytest.mark.parametrize("module, args", [
    ("mobilebert_jax.convert", ["--to=hf", "--src={ckpt}", "--out={out}"]),
    ("mobilebert_jax.export", ["--checkpoint={ckpt}", "--format=tflite", "--quantize=none",
                               "--seq_len=16", "--out={out}"]),
])
def test_conversion_and_export_refuse_a_mismatched_checkpoint(mismatched_checkpoint, tmp_path,
                                                               module, args):
    out = tmp_path / "out"
    r = run_module(module, *[a.format(ckpt=mismatched_checkpoint, out=out) for a in args])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "params lack bert/encoder/layer_2/" in r.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_a_missing_tokenizer_is_found_before_anything_is_written(tmp_path, minilm_dir):
    out = tmp_path / "out"
    r = run_module("mobilebert_jax.convert", "--from=hf", f"--src={minilm_dir}", f"--out={out}",
                   f"--tokenizer={tmp_path / 'missing.txt'}")
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        f"error: tokenizer file not found: {tmp_path / 'missing.txt'}"
    assert not out.exists()


@pytest.mark.parametrize("content, expected", [
    (b'{"version": "1.1", "data": [}', "not valid JSON (Expecting value at line 1 column 29)"),
    (b'{"version": "1.1",\n "data": [\xe9]}', "not UTF-8 text (byte 29"),
])
def test_unreadable_files_are_named_by_the_metrics_cli(tmp_path, content, expected):
    data = tmp_path / "dev.json"
    data.write_bytes(content)
    preds = tmp_path / "predictions.json"
    preds.write_text("{}")
    r = run_module("mobilebert_jax.metrics", "squad", f"--data={data}", f"--predictions={preds}")
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {data}: ") and expected in last, last


@pytest.mark.parametrize("args, expected", [
    (["--finetune_flags=cola:num_epochs=1"], "--finetune_flags: 'cola:num_epochs=1' is not"),
    (["--finetune_flags=num_epochs"], "--finetune_flags: 'num_epochs' is not [TASK:]KEY=VALUE"),
    (["--tasks=mrpc", "--finetune_flags=mrpc:num_epochs=1,tokenizer=gs://b/vocab.txt"],
     "MRPC/train.tsv, MRPC/dev.tsv"),
])
def test_pipeline_arguments_are_checked_before_any_run(tmp_path, args, expected):
    workdir = tmp_path / "pipeline"
    r = run_module("benchmarks.pipeline", f"--workdir={workdir}",
                   f"--glue_dir={tmp_path}", *args)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, last
    assert not workdir.exists()
