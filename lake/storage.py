"""Local paths and fsspec URLs (s3://, hf://, memory://, ...) behind one small API.

Local paths stay on the fast path (plain `open`, `os.replace`, mmap); anything
with a scheme goes through fsspec, imported only when needed.
"""

from __future__ import annotations

import os
import re
from typing import IO

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str) -> bool:
    """True for `scheme://...` other than `file://`."""
    return bool(_SCHEME.match(str(path))) and not str(path).startswith("file://")


def local_path(path: str) -> str:
    """Strip a `file://` prefix; leave everything else alone."""
    path = str(path)
    return path[len("file://"):] if path.startswith("file://") else path


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(local_path(base), *parts)


def _fs(url: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def open_file(path: str, mode: str = "rb") -> IO:
    if is_url(path):
        fs, p = _fs(path)
        return fs.open(p, mode)
    return open(local_path(path), mode)


def exists(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.exists(p)
    return os.path.exists(local_path(path))


def size(path: str) -> int:
    if is_url(path):
        fs, p = _fs(path)
        return int(fs.size(p))
    return os.path.getsize(local_path(path))


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_range(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file: one ranged GET on an object store."""
    if is_url(path):
        fs, p = _fs(path)
        return fs.cat_file(p, start=start, end=end)
    with open(local_path(path), "rb") as f:
        f.seek(start)
        return f.read(end - start)


def listdir(path: str) -> list[str]:
    """Base names of the entries of a directory (sorted)."""
    if is_url(path):
        fs, p = _fs(path)
        return sorted(os.path.basename(x.rstrip("/")) for x in fs.ls(p, detail=False))
    return sorted(os.listdir(local_path(path)))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write a whole file so that a reader sees the old content or the new, never a part.

    Local: temp file in the same directory, fsync, os.replace. Object stores: a
    single PUT is already atomic.
    """
    if is_url(path):
        fs, p = _fs(path)
        fs.pipe_file(p, data)
        return
    path = local_path(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
