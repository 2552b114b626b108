"""The config files load by path, as `--config=PATH[:VARIANT]` loads them, from any working
directory: they import only from the installed package and leave sys.path alone."""
import ast
import os
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from mobilebert_jax import config_checks
from tests.helpers import CONFIGS, REPO, run_module

VARIANTS = [("teacher.py", v) for v in ("", "smoke", "phase2", "v4_64", "v6e_64", "v5e_256",
                                        "gpu8")] + \
    [("distill.py", v) for v in ("", "smoke", "tiny,smoke,jkt", "akt", "v4_64", "v6e_64",
                                 "v5e_256", "gpu8")] + \
    [("finetune_glue.py", v) for v in ("", "sst2")] + \
    [("finetune_squad.py", v) for v in ("", "2.0")]


def test_config_files_import_only_the_package():
    for path in sorted(CONFIGS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                tops = {node.module.split(".")[0]}
            else:
                continue
            assert tops <= {"ml_collections", "mobilebert_jax"}, (path.name, tops)


@pytest.mark.parametrize("name, variant", VARIANTS)
def test_a_config_file_loads_by_absolute_path_from_another_directory(name, variant, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True)
    before = list(sys.path)
    values(["prog", f"--config={CONFIGS / name}" + (f":{variant}" if variant else "")])
    assert sys.path == before
    config = values.config
    assert config.trainer in ("pretrain", "distill", "finetune_glue", "finetune_squad")
    config_checks.check_config(config)


def test_main_reads_a_config_file_from_another_directory(tmp_path):
    # A field of the config named wrongly: the error comes after the file was loaded.
    # (the package under test first on the path, wherever the working directory is)
    env_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    r = run_module("mobilebert_jax.main", f"--config={CONFIGS / 'teacher.py'}:smoke",
                   "--config.totl_steps=3", f"--workdir={tmp_path / 'w'}", cwd=tmp_path,
                   env={"PYTHONPATH": env_path})
    assert r.returncode == 1, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "no field 'totl_steps'; did you mean 'total_steps'?" in last, last
    assert not (tmp_path / "w").exists()
