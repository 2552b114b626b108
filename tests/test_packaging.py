"""Packaging: every module of the package imports, and every third-party package it imports is
declared in setup.py, so an undeclared dependency fails here in seconds (and not deep inside
a trainer on a user's fresh machine)."""
import ast
import importlib
import importlib.metadata
import pathlib
import pkgutil
import re
import runpy
import sys
from unittest import mock

import pytest
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "mobilebert_jax"


def all_modules() -> list[str]:
    names = ["mobilebert_jax"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="mobilebert_jax."):
        names.append(info.name)
    return sorted(names)


def declared_requirements() -> set[str]:
    """Normalised distribution names in setup.py's install_requires and every extra, read by
    running setup.py with `setuptools.setup` captured."""
    captured = {}
    with mock.patch("setuptools.setup", lambda **kw: captured.update(kw)):
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    reqs = list(captured["install_requires"])
    for extra in captured["extras_require"].values():
        reqs.extend(extra)
    return {normalise(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]) for r in reqs}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_names() -> dict[str, str]:
    """Top-level names of every absolute import in the package -> one file importing it."""
    names: dict[str, str] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                names.setdefault(top, str(path.relative_to(ROOT)))
    return names


@pytest.mark.parametrize("name", all_modules())
def test_every_module_imports(name):
    # Entry points define absl flags at import; several share names (--steps, --batch), so the
    # flags a module defines are removed again after it imported.
    before = set(flags.FLAGS)
    try:
        importlib.import_module(name)
    finally:
        for flag in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, flag)


def undeclared_imports(declared: set[str]) -> list[str]:
    """Third-party top-level imports of the package whose distribution is not in `declared`."""
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for top, where in imported_top_level_names().items():
        if top == "mobilebert_jax" or top in sys.stdlib_module_names or top == "__future__":
            continue
        dists = {normalise(d) for d in distributions.get(top, [])}
        assert dists, f"{where} imports {top!r}, which no installed distribution provides"
        if not dists & declared:
            undeclared.append(f"{top} ({', '.join(sorted(dists))}, imported in {where})")
    return undeclared


def test_every_third_party_import_is_declared():
    undeclared = undeclared_imports(declared_requirements())
    assert not undeclared, "imported but not declared in setup.py: " + "; ".join(undeclared)


def test_a_missing_declaration_is_reported():
    # clu (the metrics writer's dependency) once went undeclared: dropping it must be caught.
    missing = undeclared_imports(declared_requirements() - {"clu"})
    assert [m.split()[0] for m in missing] == ["clu"]
