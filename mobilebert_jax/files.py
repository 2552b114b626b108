"""Paths and files: the one place the project touches storage by path.

A path is a local path or a cloud-storage URI (`gs://bucket/dir`, or any scheme `etils.epath`
serves); every function takes either. Through `etils.epath` (the path layer orbax and TFDS use
too) a `gs://` path goes to Cloud Storage by `gcsfs` (`EPATH_USE_TF=false`, set in the package's
`__init__`), arrays by tensorstore (orbax), ArrayRecord reads by array_record's own client.

Writes are atomic from a reader's point of view: a local file is written beside its target and
renamed over it; an object is uploaded whole (Cloud Storage never shows a partial object). A
directory tree is installed file by file with its marker files last (`copy_tree`), so that a
half-finished upload is never taken for a complete one.

Reading small text files (configs, results, predictions) gives errors that name the file: a
missing file, invalid JSON (with its line and column) or bytes that are not UTF-8 each become one
FileNotFoundError / ValueError that says which file.
"""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from typing import Any, Callable, Iterable

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def resolve(path: str | os.PathLike) -> str:
    """A URI as given (without a trailing '/'); a local path made absolute, `~` expanded."""
    path = str(path)
    if is_remote(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(base: str | os.PathLike, *parts: str) -> str:
    base = str(base)
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def basename(path: str | os.PathLike) -> str:
    return posixpath.basename(str(path).rstrip("/"))


def epath_of(path: str | os.PathLike) -> epath.Path:
    return epath.Path(resolve(path))


def exists(path) -> bool:
    return epath_of(path).exists()


def isdir(path) -> bool:
    return epath_of(path).is_dir()


def isfile(path) -> bool:
    p = epath_of(path)
    return p.exists() and not p.is_dir()


def glob_files(pattern: str) -> list[str]:
    """The files a glob matches, sorted (locally any component may hold `*?[`; in a URI, the
    last component only, as object stores list one prefix)."""
    pattern = resolve(pattern)
    if not is_remote(pattern):
        return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
    parent, name = pattern.rsplit("/", 1)
    if glob.has_magic(parent):
        raise ValueError(f"{pattern}: a gs:// pattern may hold wildcards in its last component "
                         "only")
    return sorted(str(p) for p in epath_of(parent).glob(name) if p.is_file())


def size(path) -> int:
    """The size of a file in bytes."""
    return epath_of(path).stat().length


def stat_key(path) -> str:
    """Size and modification time of a file: it changes when the file does."""
    path = resolve(path)
    if not is_remote(path):
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    st = epath_of(path).stat()
    return f"{st.length}:{st.mtime}"


def open_binary(path):
    """A binary file object for reading, seekable, local or remote."""
    path = resolve(path)
    return open(path, "rb") if not is_remote(path) else epath_of(path).open("rb")


def listdir(path) -> list[str]:
    """Names in a directory ([] when it does not exist)."""
    p = epath_of(path)
    return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def makedirs(path) -> None:
    """Creates a directory and its parents (nothing to create on object storage, where a
    directory is a name prefix: the bucket is checked instead)."""
    if is_remote(path):
        check_can_create(path)
        return
    os.makedirs(resolve(path), exist_ok=True)


def check_can_create(path: str) -> None:
    """Fails before a command starts its work when `path` cannot be written: a local file
    stands where one of its parent directories would be (NotADirectoryError), or the bucket of
    a URI does not exist or cannot be listed (FileNotFoundError / PermissionError naming it)."""
    if is_remote(path):
        scheme, rest = str(path).split("://", 1)
        bucket = f"{scheme}://{rest.split('/', 1)[0]}"
        try:
            found = epath.Path(bucket).exists()
        except PermissionError as e:
            raise PermissionError(errno.EACCES, f"no access to {bucket} ({e})", path) from None
        if not found:
            raise FileNotFoundError(errno.ENOENT, f"bucket {bucket} does not exist", path)
        return
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent != os.path.abspath(path) and not os.path.isdir(parent):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)


def _replace_local(path: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` fills a temporary file beside the local `path`, renamed over it after."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> None:
    """Writes a whole file atomically (see the module docstring)."""
    path = resolve(path)
    if is_remote(path):
        epath.Path(path).write_bytes(data)
        return
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _replace_local(path, write)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_bytes(path) -> bytes:
    return epath_of(path).read_bytes()


def remove_tree(path) -> None:
    p = epath_of(path)
    if p.is_dir():
        p.rmtree()
    elif p.exists():
        p.unlink()


def copy_file(src, dst) -> None:
    """Copies one file (local or remote either side) atomically at the destination."""
    if not is_remote(src) and not is_remote(dst):
        _replace_local(resolve(dst), lambda tmp: shutil.copyfile(resolve(src), tmp))
        return
    epath_of(src).copy(epath_of(dst), overwrite=True)


def copy_tree(src_dir: str, dst_dir: str, last: Iterable[str] = ()) -> None:
    """Copies every file under the local directory `src_dir` to `dst_dir` (local or remote),
    the files named in `last` (relative paths) after all the others, so that their presence
    means the rest is complete."""
    src_dir = resolve(src_dir)
    last = list(last)
    names = []
    for root, _, filenames in os.walk(src_dir):
        for name in filenames:
            rel = os.path.relpath(os.path.join(root, name), src_dir)
            if rel not in last:
                names.append(rel)
    for rel in sorted(names) + [r for r in last if os.path.isfile(os.path.join(src_dir, r))]:
        target = join(dst_dir, *rel.split(os.sep))
        if not is_remote(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
        copy_file(os.path.join(src_dir, rel), target)


def local_copy(path: str) -> str:
    """A local path for `path`, for the libraries that open files only locally (`tokenizers`,
    SentencePiece): the path itself when local, else a copy downloaded once into
    `~/.cache/mobilebert_jax/` (keyed by the URI and the object's size)."""
    path = resolve(path)
    if not is_remote(path):
        return path
    if not isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    size = epath_of(path).stat().length  # the object's metadata: no download when cached
    key = hashlib.sha256(f"{path}:{size}".encode()).hexdigest()[:16]
    local = os.path.join(os.path.expanduser("~/.cache/mobilebert_jax"), key, basename(path))
    if not os.path.isfile(local):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        write_bytes(local, read_bytes(path))
    return local


def read_text(path: str, what: str = "file") -> str:
    if not isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    data = read_bytes(path)
    try:
        return data.decode("utf-8").replace("\r\n", "\n")
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


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
