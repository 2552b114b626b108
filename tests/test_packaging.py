"""Packaging: every module of the package imports, and every third-party package it imports is
declared in setup.py, so an undeclared dependency fails here in seconds (and not deep inside
a trainer on a user's fresh machine). The benchmarks (`benchmarks/`, run from a checkout) are
not installed, the package never imports them, and their own dependencies are in the `bench`
extra."""
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
BENCHMARKS_DIR = ROOT / "benchmarks"


def all_modules(directory: pathlib.Path = PACKAGE_DIR) -> list[str]:
    names = [directory.name]
    for info in pkgutil.walk_packages([str(directory)], prefix=f"{directory.name}."):
        names.append(info.name)
    return sorted(names)


def setup_arguments() -> dict:
    """The keyword arguments setup.py passes to `setuptools.setup` (run with it captured)."""
    captured = {}
    with mock.patch("setuptools.setup", lambda **kw: captured.update(kw)):
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return captured


def declared_requirements(extras=None) -> set[str]:
    """Normalised distribution names in setup.py's install_requires and its extras (every extra
    when `extras` is None)."""
    captured = setup_arguments()
    reqs = list(captured["install_requires"])
    for name, extra in captured["extras_require"].items():
        if extras is None or name in extras:
            reqs.extend(extra)
    return {normalise(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]) for r in reqs}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_names(directory: pathlib.Path = PACKAGE_DIR) -> dict[str, str]:
    """Top-level names of every absolute import under `directory` -> one file importing it."""
    names: dict[str, str] = {}
    for path in sorted(directory.rglob("*.py")):
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


@pytest.mark.parametrize("name", all_modules() + all_modules(BENCHMARKS_DIR))
def test_every_module_imports(name):
    # Entry points define absl flags at import; several share names (--steps, --batch), so the
    # flags a module defines are removed again after it imported. The benchmarks import from
    # the repository root, as `python -m benchmarks.NAME` runs them.
    before = set(flags.FLAGS)
    try:
        importlib.import_module(name)
    finally:
        for flag in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, flag)


def undeclared_imports(declared: set[str], directory: pathlib.Path = PACKAGE_DIR) -> list[str]:
    """Third-party top-level imports under `directory` whose distribution is not in
    `declared`."""
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for top, where in imported_top_level_names(directory).items():
        if (top in ("mobilebert_jax", "benchmarks", "__future__")
                or top in sys.stdlib_module_names):
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


# -- the layer order (docs/architecture.md): imports point down only -------------------------------
LAYERS = (
    ("cli", "files", "console", "host_memory", "compile_cache"),
    ("parallel", "models"),
    ("metrics", "checkpoint", "config_checks", "config_defaults"),
    ("data",),
    ("train",),
    ("plan", "export", "convert", "predict", "main"),
)
ENTRY_POINT = len(LAYERS) - 1  # `__main__` modules and the package root sit on the top layer


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[-1] == "__main__":
        return ENTRY_POINT
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> list[tuple[str, str]]:
    """(importer, imported) for every import of a package module by a package module, at any
    depth (function-level imports included)."""
    modules = set(all_modules())
    edges = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        importer = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                           else node.module for a in node.names]
            else:
                continue
            edges += [(importer, t) for t in targets if t.split(".")[0] == "mobilebert_jax"]
    return edges


def layer_violations(edges) -> list[str]:
    """Imports of a higher layer, or of a sibling package of the same layer."""
    bad = []
    for importer, imported in edges:
        a, b = layer_of(importer), layer_of(imported)
        same_room = importer.split(".")[:2] == imported.split(".")[:2]
        if b > a or (b == a and not same_room and a != ENTRY_POINT):
            bad.append(f"{importer} -> {imported}")
    return sorted(set(bad))


def import_cycles(edges) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        if a != b:
            graph.setdefault(a, set()).add(b)
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_imports_follow_the_layer_order():
    assert not layer_violations(package_imports()), layer_violations(package_imports())


def test_no_import_cycles():
    assert not import_cycles(package_imports())


def test_an_upward_import_and_a_cycle_are_caught():
    edges = package_imports()
    upward = ("mobilebert_jax.parallel", "mobilebert_jax.train.optim")
    assert layer_violations(edges + [upward]) == ["mobilebert_jax.parallel -> "
                                                  "mobilebert_jax.train.optim"]
    sibling = ("mobilebert_jax.checkpoint", "mobilebert_jax.metrics.glue")
    assert layer_violations(edges + [sibling]) == [" -> ".join(sibling)]
    back = ("mobilebert_jax.data.dataset_layout", "mobilebert_jax.data.prepare")
    assert import_cycles(edges + [back])


def test_benchmarks_are_not_installed_nor_imported_by_the_package():
    packages = setup_arguments()["packages"]
    assert "mobilebert_jax.plan" in packages
    assert all(p == "mobilebert_jax" or p.startswith("mobilebert_jax.") for p in packages), packages
    assert (BENCHMARKS_DIR / "__init__.py").is_file()
    assert not any((PACKAGE_DIR / "bench").glob("*.py"))  # the benchmarks left the package
    assert "benchmarks" not in imported_top_level_names(PACKAGE_DIR)


def test_every_third_party_import_of_the_benchmarks_is_in_the_bench_extra():
    undeclared = undeclared_imports(declared_requirements(extras=("bench",)), BENCHMARKS_DIR)
    assert not undeclared, "benchmarks import, not in install_requires or the bench extra: " \
        + "; ".join(undeclared)
    # psutil is for the data benchmark only: an extra, not an install requirement.
    assert "psutil" not in declared_requirements(extras=())
    assert "psutil" in declared_requirements(extras=("bench",))
