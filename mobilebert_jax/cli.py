"""The error boundary of every command-line entry point (`main`, `data.prepare`, `convert`,
`export`, `metrics`, `train.sweep` and the benchmarks).

An expected failure (bad input found by a check, a file that is missing, unreadable or not what
it should be, a run that diverged) becomes one line on stderr, `error: <field or path>:
<problem>`, and exit code 1; a bug still shows its traceback. Flag parsing (absl with
ml_collections config files, whose own errors arrive wrapped in tracebacks) goes through
`parse_flags`, which reduces them to the same one line.
"""
from __future__ import annotations

import functools
import re
import sys
from typing import Callable


class CommandError(Exception):
    """An expected failure that is neither bad input (ValueError) nor an OS error, such as a
    loss that stopped being finite."""


EXPECTED = (ValueError, OSError, CommandError)


def one_line(error: BaseException) -> str:
    """One line that names the problem, from an error whose message may hold a traceback or a
    multi-line report (absl and ml_collections wrap the config file's own errors)."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    text = str(error)
    suggestion = re.search(r"'(\w+)'.*Did you mean \"(\w+)\"", text.replace("\\", ""), re.S)
    if suggestion:
        return (f"the config has no field {suggestion[1]!r}; did you mean "
                f"{suggestion[2]!r}?")
    missing = re.fullmatch(r"""["']*(\w+)["']*""", text)
    if isinstance(error, (AttributeError, KeyError)) and missing:  # a config field, no near name
        return f"the config has no field {missing[1]!r}"
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


def fail(error: BaseException) -> int:
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 1


def guarded(main: Callable[..., int | None]) -> Callable[..., int]:
    """`main` with the error boundary: an expected failure is reported in one line and
    returns 1; otherwise `main`'s own return code (0 when it returns None)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except EXPECTED as e:
            return fail(e)
    return wrapper


def parse_flags(argv, config_flag: str | None = "config"):
    """absl flag parsing (a config file, its variant and every --config.x=y override, which
    ml_collections loads lazily: forced here) with a one-line error instead of a traceback."""
    from absl import flags

    try:
        args = flags.FLAGS(argv)
        if config_flag and flags.FLAGS[config_flag].value is not None:
            flags.FLAGS[config_flag].value.get("trainer")
        return args
    except Exception as e:  # the config file is user code: anything may come out of it
        sys.exit(fail(e))
