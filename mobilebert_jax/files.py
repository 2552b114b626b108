"""Reading the project's small text files (configs, results, predictions) with errors that name
the file: a missing file, invalid JSON (with its line and column) or bytes that are not UTF-8
each become one FileNotFoundError / ValueError that says which file; and the check that an
output path can be created before a command starts its work."""
from __future__ import annotations

import errno
import json
import os
from typing import Any


def check_can_create(path: str) -> None:
    """Raises NotADirectoryError naming `path` when a file stands where one of its parent
    directories would be (so that a command fails before its work, not when it writes)."""
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent != os.path.abspath(path) and not os.path.isdir(parent):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)


def read_text(path: str, what: str = "file") -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: "
                         f"{e.object[e.start:e.start + 1]!r})") from None


def read_json(path: str, what: str = "file") -> Any:
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column "
                         f"{e.colno})") from None
