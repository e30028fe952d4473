"""Where a source's files live: a local folder or any fsspec URL (`s3://BUCKET/DIR`,
`hf://datasets/OWNER/NAME[@REVISION][/DIR]`, `memory://...`), read without a download pass.

Listing returns names and sizes only, so a source decides which files it wants (LAION:
by tar name) before a byte of them is fetched. A remote file is read as one sequential
stream of ranged reads (`STREAM_BLOCK` at a time) and never written to disk. A read that
fails (a dropped connection, a throttled request) is retried on a fresh handle at the same
offset; when the retries are spent, `SourceReadError` says which file and where, and the
source stops the run: its finished units are kept, so re-running the command resumes.
A hub URL is pinned to the commit its revision names when the run starts, so every rank
and every resumed run reads the same files, and that commit is recorded in the plan.
"""

from __future__ import annotations

import os
import time

from lake import storage
from lake.errors import LakeError

STREAM_BLOCK = 8 * 2**20  # bytes per ranged read of a remote stream
RETRIES = 3
RETRY_WAIT_S = 1.0  # doubled after each failed try


class SourceReadError(Exception):
    """Reading a remote file failed after its retries (not a damaged file: the bytes never came)."""


def hub_message(what: str, e: BaseException) -> str:
    """One line for a hub failure: gated, private or missing, unknown revision, offline."""
    from huggingface_hub.errors import (GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    cause = e
    while cause is not None and not isinstance(cause, (GatedRepoError, RepositoryNotFoundError,
                                                       RevisionNotFoundError, OfflineModeIsEnabled)):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, GatedRepoError):
        return (f"{what}: gated dataset: accept its terms on its hub page, then log in with `hf auth login` "
                "(or set HF_TOKEN)")
    if isinstance(cause, RevisionNotFoundError):
        return f"{what}: no such revision on the hub (a branch, tag or commit sha)"
    if isinstance(cause, RepositoryNotFoundError):
        return (f"{what}: not found on the hub, or private: check the name, or log in with `hf auth login` "
                "(or set HF_TOKEN) as a user who can read it")
    if isinstance(cause, OfflineModeIsEnabled):
        return f"{what}: the hub is needed but HF_HUB_OFFLINE is set"
    return f"{what}: cannot reach the hub ({type(e).__name__}: {str(e)[:160]})"


def pin_hub_url(url: str) -> tuple[str, str | None]:
    """(`url` pinned to a commit, that commit's sha) for an `hf://` URL; (`url`, None) for any other."""
    if not url.startswith("hf://"):
        return url, None
    from huggingface_hub import HfApi, HfFileSystem
    from huggingface_hub.utils import HfHubHTTPError

    try:
        resolved = HfFileSystem().resolve_path(url)
        sha = HfApi().repo_info(resolved.repo_id, repo_type=resolved.repo_type, revision=resolved.revision).sha
    except (FileNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise LakeError(hub_message(url, e)) from None
    except NotImplementedError:
        raise LakeError(f"{url}: name a dataset, as hf://datasets/OWNER/NAME[@REVISION][/FOLDER]") from None
    prefix = {"dataset": "datasets/", "space": "spaces/"}.get(resolved.repo_type, "")
    return f"hf://{prefix}{resolved.repo_id}@{sha}/{resolved.path_in_repo}".rstrip("/"), sha


def list_files(root: str, suffixes: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path relative to `root`, size in bytes) of every file under `root` whose name ends in one of
    `suffixes`, sorted by path. Reads directory listings only, never file contents."""
    if not storage.is_url(root):
        root = storage.local_path(root)
        found = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(suffixes)]
        return sorted((os.path.relpath(p, root), os.path.getsize(p)) for p in found)
    try:
        fs, path = storage.filesystem(root)  # with the request limits (timeouts, tries) of lake.storage
        if not fs.isdir(path):
            raise LakeError(f"{root}: no such folder")
        found = fs.find(path, detail=True)
    except LakeError:
        raise
    except Exception as e:  # noqa: BLE001 - any store's own errors: one line, not a traceback
        raise LakeError(hub_message(root, e) if root.startswith("hf://") else
                        f"{root}: cannot list ({type(e).__name__}: {str(e)[:160]})") from None
    base = path.strip("/") + "/"
    out = []
    for name, info in found.items():
        name = name.lstrip("/")
        if info.get("type", "file") == "file" and name.endswith(suffixes) and name.startswith(base):
            out.append((name[len(base):], int(info.get("size") or 0)))
    return sorted(out)


class RemoteStream:
    """A remote file read front to back (what tarfile's stream mode needs: `read(n)` only),
    through ranged reads that resume at the same offset after a failure."""

    def __init__(self, url: str):
        self.url, self.pos, self._f = url, 0, None

    def _open(self):
        fs, path = storage.filesystem(self.url)
        f = fs.open(path, "rb", block_size=STREAM_BLOCK, cache_type="readahead")
        if self.pos:
            f.seek(self.pos)
        return f

    def read(self, n: int = -1) -> bytes:
        wait = RETRY_WAIT_S
        for attempt in range(1, RETRIES + 1):
            try:
                if self._f is None:
                    self._f = self._open()
                data = self._f.read(n)
                self.pos += len(data)
                return data
            except FileNotFoundError:
                self._close()
                raise
            except Exception as e:  # noqa: BLE001 - every store raises its own types
                self._close()
                if attempt == RETRIES:
                    raise SourceReadError(f"{self.url}: reading failed at byte {self.pos} after {RETRIES} tries "
                                          f"({type(e).__name__}: {str(e)[:160]})") from None
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")

    def _close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except Exception:  # noqa: BLE001 - a broken handle is dropped either way
                pass
            self._f = None

    def close(self) -> None:
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close()


def read_remote(url: str) -> bytes:
    """A whole remote file, with the same retries as a stream (for one clip of a manifest)."""
    with RemoteStream(url) as s:
        return s.read()
