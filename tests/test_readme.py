"""The README is a short guide whose commands work, and the docs' links resolve.

* the README has at most 200 lines;
* every `python -m MODULE` command in the README's and docs' code names a module that exists
  (benchmarks are run from the repository root, so it is on the path);
* the README's commands parse: `python -m mobilebert_jax.main --config=FILE:VARIANT ...` loads
  the config file with its variant through ml-collections' config flags (as `main` does) and
  applies every `--config.x.y=v` override and the range checks; every other command of the
  package or the benchmarks is asked for `--help`, which must succeed and list every flag the
  command passes;
* every relative link in the README, CONTRIBUTING.md, CHANGELOG.md and docs/ points to a file
  that exists, and a `#fragment` into a Markdown file to one of its headings.

Each checker is also given a broken input, so a check that stopped detecting anything fails.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200
# The packages whose entry points the docs may run; other modules (venv, pytest) are only
# checked to exist.
OWN_PACKAGES = ("mobilebert_jax", "benchmarks")
MAIN = "mobilebert_jax.main"


# -- reading Markdown ------------------------------------------------------------------------
FENCE = re.compile(r"^[ \t]*```([^\n]*)\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
SHELL_FENCES = {"bash", "sh", "shell", "console"}  # other fences (text, python) hold no commands
INLINE_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def doc_files() -> list[pathlib.Path]:
    return sorted(DOCS.rglob("*.md"))


def linked_files() -> list[pathlib.Path]:
    """Every Markdown file whose links are checked."""
    top = [ROOT / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")]
    return [p for p in top if p.is_file()] + doc_files()


def shell_blocks(text: str) -> list[str]:
    """The contents of the fenced shell code blocks (```bash, ```sh, ...)."""
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1).strip() in SHELL_FENCES]


def code_snippets(text: str) -> list[str]:
    """The contents of the fenced shell blocks, then of the inline code spans outside any
    fence (a span may run over a line break, as in CommonMark)."""
    blocks = shell_blocks(text)
    prose = FENCE.sub("", text)
    spans = [m.group(1).replace("\n", " ") for m in INLINE_CODE.finditer(prose)]
    return blocks + spans


def prose_of(text: str) -> str:
    """The text without fenced blocks and inline code (where links are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


# -- shell commands ------------------------------------------------------------------------------
SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclasses.dataclass(frozen=True)
class PythonCommand:
    module: str
    args: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        """The leading positional words (sub-commands such as `glue` or `drop`)."""
        words = []
        for arg in self.args:
            if arg.startswith("-"):
                break
            words.append(arg)
        return tuple(words)

    @property
    def flag_names(self) -> tuple[str, ...]:
        """`--name` of every long flag, up to a `--` (after which a command may pass options
        through to another program, as data.prepare does to Beam)."""
        names = []
        for arg in self.args:
            if arg == "--":
                break
            if arg.startswith("--"):
                names.append(arg.split("=", 1)[0])
        return tuple(names)

    def __str__(self) -> str:
        return " ".join(["python -m", self.module, *self.args])


def is_python(token: str) -> bool:
    return re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", token) is not None


def shell_lines(snippet: str) -> list[str]:
    """Logical lines of a snippet: backslash continuations joined."""
    return re.sub(r"\\\n", " ", snippet).splitlines()


def python_commands(snippet: str) -> list[PythonCommand]:
    """Every `python -m MODULE ARGS` in a shell snippet: comments dropped, continuation lines
    joined, commands split at `&&`, `;`, `|`; an environment prefix (`XLA_FLAGS=... python`)
    is allowed."""
    commands = []
    for line in shell_lines(snippet):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # unbalanced quotes: prose in a code span, not a command
            continue
        current: list[str] = []
        for token in tokens + [";"]:
            if token in SEPARATORS:
                commands.extend(_python_command(current))
                current = []
            else:
                current.append(token)
    return commands


def _python_command(tokens: list[str]) -> list[PythonCommand]:
    for i in range(len(tokens) - 2):
        if is_python(tokens[i]) and tokens[i + 1] == "-m":
            return [PythonCommand(tokens[i + 2], tuple(tokens[i + 3:]))]
    return []


def commands_in(path: pathlib.Path) -> list[PythonCommand]:
    found = []
    for snippet in code_snippets(path.read_text(encoding="utf-8")):
        for command in python_commands(snippet):
            if command not in found:
                found.append(command)
    return found


def is_placeholder(module: str) -> bool:
    """`benchmarks.NAME` and the like: a pattern in prose, not a module."""
    return module != module.lower()


# -- (b) modules -------------------------------------------------------------------------------
def module_exists(name: str) -> bool:
    """Whether `python -m NAME`, run from the repository root, finds the module."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


# -- (c) the main entry point's config and overrides -------------------------------------------
def config_error(args: tuple[str, ...]) -> str | None:
    """None when `--config=FILE[:VARIANT]` loads with every `--config.x=v` override applied
    and passes the range checks, as in `main`; otherwise main's one-line error."""
    from absl import flags
    from ml_collections import config_flags

    from mobilebert_jax import cli, config_checks

    config_args = [a for a in args if a.startswith(("--config=", "--config."))]
    spec = next((a.split("=", 1)[1] for a in config_args if a.startswith("--config=")), None)
    if spec is None:
        return "no --config=FILE"
    path = spec.split(":", 1)[0]
    if not (ROOT / path).is_file():
        return f"{path}: no such config file"
    argv = ["main", *(f"--config={ROOT / spec}" if a.startswith("--config=") else a
                      for a in config_args)]
    values = flags.FlagValues()
    # As in main: the override flags (--config.x.y) are those of the config file named on the
    # command line (`sys_argv`, main's being sys.argv).
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    try:
        with warnings.catch_warnings():  # ml-collections loads the file with load_module()
            warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
            values(argv)
            config = values["config"].value
            config.get("trainer")  # ml-collections applies the overrides lazily: force them
        config_checks.check_config(config)
    except Exception as e:  # the config file is user code: anything may come out of it
        return cli.one_line(e)
    return None


# -- (c) every other command: --help -----------------------------------------------------------
@functools.cache
def help_text(module: str, words: tuple[str, ...] = ()) -> tuple[int, str]:
    """Exit code and output of `python -m MODULE [WORDS] --help`, run from the repository
    root on the CPU."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", module, *words, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def help_succeeded(returncode: int, output: str) -> bool:
    """argparse exits 0 after --help; absl exits 1 after printing its help (absl.app's
    HelpFlag), which it ends with a pointer to --helpfull."""
    if "Traceback (most recent call last)" in output:
        return False
    return returncode == 0 or (returncode == 1 and "Try --helpfull" in output)


def unknown_flags(flag_names, output: str) -> list[str]:
    """The `--name`s that the help output does not list (absl shows booleans as
    `--[no]name`)."""
    missing = []
    for flag in flag_names:
        name = re.escape(flag[2:])
        if name and not re.search(rf"(?<![\w-])--(\[no\])?{name}(?![\w-])", output):
            missing.append(flag)
    return missing


def own_commands(path: pathlib.Path) -> dict[tuple[str, tuple[str, ...]], list[str]]:
    """(module, sub-command words) -> the flags its commands in `path` pass, for the package's
    and the benchmarks' entry points; `--config.x` overrides are left to `config_error`."""
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for command in commands_in(path):
        if command.module.split(".")[0] not in OWN_PACKAGES or is_placeholder(command.module):
            continue
        flags = groups.setdefault((command.module, command.words), [])
        for name in command.flag_names:
            if not name.startswith("--config.") and name not in flags:
                flags.append(name)
    return groups


# -- (d) links ---------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def anchors(path: pathlib.Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces
    to hyphens, `-1`, `-2`, ... for repeats."""
    seen: dict[str, int] = {}
    result = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(path: pathlib.Path) -> list[str]:
    """Relative links of a Markdown file whose target does not exist, or whose `#fragment`
    names no heading of the target Markdown file."""
    text = prose_of(path.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text) + REFERENCE.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no heading #{fragment})")
    return broken


# == the tests =================================================================================
def readme_commands() -> list[PythonCommand]:
    return commands_in(README)


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}); move detail to docs/")


def test_readme_shows_the_commands_ci_runs():
    """The set-up section installs and tests exactly as CI does (.ci/run)."""
    readme = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    install = re.search(r"pip install (?:--quiet )?(-c \S+ -e \S+)", ci)
    assert install and f"pip install {install.group(1)}" in readme
    tests = re.search(r"^python -m pytest .*$", ci, re.MULTILINE)
    assert tests and tests.group(0) in readme
    first_block = shell_blocks(readme)[0]
    assert "pip install" in first_block, "the first command installs"
    assert MAIN in [c.module for c in python_commands(first_block)], (
        "the first command also runs the main job on its embedded default")


def test_the_command_parser():
    snippet = ("# a comment\n"
               "XLA_FLAGS=--x=8 python -m mobilebert_jax.main --config=configs/a.py \\\n"
               "    --config.mesh.shape=\"(2,2,2)\"  # trailing comment\n"
               "pip install -e . && python3 -m benchmarks.quantization drop --json=out.json\n"
               "python -m mobilebert_jax.data.prepare --out=o -- --runner=DataflowRunner\n")
    commands = python_commands(snippet)
    assert [c.module for c in commands] == [
        "mobilebert_jax.main", "benchmarks.quantization", "mobilebert_jax.data.prepare"]
    assert commands[0].args == ("--config=configs/a.py", "--config.mesh.shape=(2,2,2)")
    assert commands[1].words == ("drop",)
    assert commands[2].flag_names == ("--out",)
    spans = code_snippets("Run `python -m a.b --c=1`, then\n```bash\npython -m d.e\n```\n"
                          "```text\n corpus\n   │  python -m f.g   a picture, not a command\n```\n")
    assert [c.module for s in spans for c in python_commands(s)] == ["d.e", "a.b"]


@pytest.mark.parametrize("module", sorted({c.module for c in readme_commands()}))
def test_readme_module_exists(module):
    assert module_exists(module), f"README.md runs `python -m {module}`, which does not exist"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_modules_exist(path):
    missing = sorted({c.module for c in commands_in(path)
                      if not is_placeholder(c.module) and not module_exists(c.module)})
    assert not missing, f"{path.relative_to(ROOT)} runs modules that do not exist: {missing}"


def test_module_check_catches_a_missing_module():
    assert module_exists("mobilebert_jax.main")
    assert not module_exists("mobilebert_jax.no_such_module")
    assert not module_exists("no_such_package.train")


def test_readme_runs_the_main_entry_point():
    assert len(readme_main_commands()) >= 3  # the set-up job and the quickstart's chain


def readme_main_commands() -> list[PythonCommand]:
    """The README's jobs (`python -m mobilebert_jax.main` named in prose has no --config)."""
    return [c for c in readme_commands()
            if c.module == MAIN and any(a.startswith("--config=") for a in c.args)]


@pytest.mark.parametrize("command", readme_main_commands(), ids=str)
def test_readme_config_and_overrides_load(command):
    spec = next(a for a in command.args if a.startswith("--config="))
    assert spec.split("=", 1)[1].startswith("configs/"), f"{command}: not a config file"
    assert config_error(command.args) is None, f"{command}: {config_error(command.args)}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_configs_and_overrides_load(path):
    errors = []
    for command in commands_in(path):
        spec = next((a for a in command.args if a.startswith("--config=")), "")
        # `--config=FILE[:VARIANT]` in prose is a pattern; a path under configs/ must load
        if command.module == MAIN and spec.startswith("--config=configs/"):
            error = config_error(command.args)
            if error:
                errors.append(f"{command}: {error}")
    assert not errors, "\n".join(errors)


def test_config_check_catches_bad_overrides():
    good = ("--config=configs/teacher.py:smoke", "--workdir=w", "--config.log_every=5")
    assert config_error(good) is None
    misspelled = config_error(good + ("--config.log_evry=5",))
    assert misspelled and "log_evry" in misspelled and "log_every" in misspelled
    nested = config_error(("--config=configs/distill.py:smoke", "--config.transfer.weights.fmtt=1"))
    assert nested and "fmtt" in nested
    assert "smokey" in config_error(("--config=configs/teacher.py:smokey",))
    out_of_range = config_error(good + ("--config.log_every=0",))
    assert out_of_range and "log_every" in out_of_range
    assert "not_a_number" in config_error(good + ("--config.log_every=not_a_number",))
    missing = config_error(("--config=configs/no_such.py",))
    assert missing == "configs/no_such.py: no such config file"


@pytest.mark.parametrize("module, words", sorted(own_commands(README)),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_readme_command_flags_exist(module, words):
    flags = own_commands(README)[(module, words)]
    returncode, output = help_text(module, words)
    assert help_succeeded(returncode, output), (
        f"python -m {module} {' '.join(words)} --help failed ({returncode}):\n{output[-2000:]}")
    assert not unknown_flags(flags, output), (
        f"README.md passes python -m {module} flags its --help does not list: "
        f"{unknown_flags(flags, output)}")


@pytest.mark.slow
@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_command_flags_exist(path):
    problems = []
    for (module, words), flags in own_commands(path).items():
        if not module_exists(module):
            continue  # reported by test_docs_modules_exist
        returncode, output = help_text(module, words)
        if not help_succeeded(returncode, output):
            problems.append(f"python -m {module} {' '.join(words)} --help failed ({returncode})")
        elif unknown_flags(flags, output):
            problems.append(f"python -m {module}: unknown flags {unknown_flags(flags, output)}")
    assert not problems, "\n".join(problems)


def test_help_check_catches_a_misspelled_flag():
    returncode, output = help_text("mobilebert_jax.export")
    assert help_succeeded(returncode, output)
    assert unknown_flags(["--checkpoint", "--quantize", "--out"], output) == []
    assert unknown_flags(["--checkpoint", "--quantise"], output) == ["--quantise"]
    absl_code, absl_output = help_text("mobilebert_jax.convert")  # absl: exit 1 after --help
    assert help_succeeded(absl_code, absl_output)
    assert unknown_flags(["--from", "--src", "--to", "--out"], absl_output) == []
    assert unknown_flags(["--source"], absl_output) == ["--source"]
    assert not help_succeeded(*help_text("mobilebert_jax.no_such_module"))


@pytest.mark.parametrize("path", linked_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = broken_links(path)
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_link_check_catches_broken_links(tmp_path):
    (tmp_path / "guide.md").write_text("# A guide\n\n## Set-up: `pip` (once)\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](guide.md) [ok](guide.md#set-up-pip-once) [web](https://example.com)\n"
                    "[gone](missing.md) [bad anchor](guide.md#nowhere) [here](#top)\n"
                    "# Top\n`[not a link](nowhere.md)`\n\n```\n[code](nowhere.md)\n```\n")
    assert broken_links(page) == ["missing.md (no such file)",
                                  "guide.md#nowhere (no heading #nowhere)"]
