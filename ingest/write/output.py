"""Where an ingest writes: a set's root, local or behind any fsspec URL that can write (s3://).

Shards are always built as local files; what differs is how a finished one is committed:

    local root   shards/<name>.tar.tmp renamed to shards/<name>.tar (same filesystem)
    URL root     built under the staging directory, uploaded to ROOT/shards/<name>.tar through
                 shards.copy.transfer (hashed on the way, size checked after), then deleted locally

Either way the journal line that commits the shard is written only after that (ingest.write.journal),
so a kill at any point leaves at most an uncommitted shard, which the next run deletes or
overwrites (`clean_leftovers`). The journal and the rows sidecars live under ROOT/_work
(files appended locally; one object per record behind a URL, since objects cannot be appended
to), so ranks on several machines can write one set. The manifest is written last.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from lake import storage
from lake.blocks import SHARDS_DIR, parse_shard_name
from lake.errors import LakeError
from lake.schema import INDEX_NAME, MANIFEST_NAME, QUARANTINE_NAME, Manifest, ShardEntry
from lake.setlock import LOCK_OBJECT
from shards.copy import transfer
from shards.format import TMP_SUFFIX

WORK_DIR = "_work"


def default_staging_dir(root: str) -> str:
    """$TMPDIR/emolake-staging/<hash of the root>: one folder per output set."""
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), "emolake-staging", digest)


class SetOutput:
    """The set being written at `root`. `staging`: the local folder shards are built in (URL roots)."""

    def __init__(self, root: str, staging: str = ""):
        self.root = str(root).rstrip("/") if storage.is_url(root) else os.path.abspath(storage.local_path(root))
        self.remote = storage.is_url(self.root)
        self.staging = (staging or default_staging_dir(self.root)) if self.remote else ""

    # -- paths ------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def work(self, *parts: str) -> str:
        return self.path(WORK_DIR, *parts)

    @property
    def build_root(self) -> str:
        """The local directory shard files are written under (ShardWriter's root)."""
        return self.staging if self.remote else self.root

    # -- plain files ------------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return storage.exists(self.path(*parts))

    def read_text(self, *parts: str) -> str:
        return storage.read_bytes(self.path(*parts)).decode("utf-8")

    def write_atomic(self, relpath: str, data: bytes) -> None:
        path = self.path(relpath)
        if not self.remote:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        storage.write_bytes_atomic(path, data)

    def listdir(self, *parts: str) -> list[str]:
        try:
            return storage.listdir(self.path(*parts))
        except FileNotFoundError:
            return []

    def remove(self, relpath: str) -> None:
        storage.remove(self.path(relpath))

    def remove_tree(self, *parts: str) -> None:
        """Delete a file, or a folder (a prefix behind a URL) and everything under it; absent is fine."""
        path = self.path(*parts)
        if not self.remote:
            shutil.rmtree(path, ignore_errors=True)
            return
        fs, p = storage.filesystem(path)
        with storage.errors(path):
            if fs.exists(p):
                fs.rm(p, recursive=True)
            fs.invalidate_cache(p)

    def is_empty(self) -> bool:
        """True when nothing but the set's own lock object is at the root (or the root does not exist yet)."""
        return not [n for n in self.listdir() if n != LOCK_OBJECT]

    # -- shards -----------------------------------------------------------------------------------
    def commit_shard(self, entry: ShardEntry) -> None:
        """Put a finished shard (renamed into place under build_root) at its final place in the set."""
        if not self.remote:
            return  # ShardWriter already renamed it into the set's shards/
        local = os.path.join(self.staging, entry.path)
        transfer(local, self.path(entry.path), entry)  # verified: sha256 on the way, size after
        os.remove(local)

    def shard_names(self) -> list[str]:
        """The files under shards/ (finished, temporary or foreign), by base name."""
        return self.listdir(SHARDS_DIR)

    def clean_leftovers(self, worker: int, committed: set[str]) -> list[str]:
        """Delete this worker id's shards that no journal line committed (a killed run's), here and in
        the staging folder; returns what was deleted."""
        def ours(name: str) -> bool:  # a finished or temporary shard of this worker id
            parsed = parse_shard_name(name.removesuffix(TMP_SUFFIX))
            return parsed is not None and parsed.worker == worker

        gone = []
        for name in self.shard_names():
            rel = f"{SHARDS_DIR}/{name}"
            if ours(name) and (name.endswith(TMP_SUFFIX) or rel not in committed):
                self.remove(rel)
                gone.append(rel)
        if self.remote and os.path.isdir(os.path.join(self.staging, SHARDS_DIR)):
            for name in os.listdir(os.path.join(self.staging, SHARDS_DIR)):
                if ours(name):
                    os.remove(os.path.join(self.staging, SHARDS_DIR, name))
        return gone


# -- --overwrite: the new set is built beside the old one, and swapped in only when complete ---------

SWAP_MARKER = "_swapping"


def overwrite_sibling(out: SetOutput) -> SetOutput:
    """Where `--overwrite` builds the new set: `<parent>/.<name>.overwrite` (same filesystem, so the swap
    is two renames), or `<ROOT>.overwrite` behind a URL."""
    if out.remote:
        return SetOutput(out.root + ".overwrite", out.staging + "-overwrite")
    parent, name = os.path.split(out.root)
    return SetOutput(os.path.join(parent, f".{name}.overwrite"))


def _replaced(out: SetOutput) -> str:
    parent, name = os.path.split(out.root)
    return os.path.join(parent, f".{name}.replaced")


def swap_in(new: SetOutput, out: SetOutput) -> None:
    """Replace the set at `out` by the complete set at `new` (then gone). Interrupted, `finish_swap`
    completes it: locally two renames; behind a URL `_copy_remote`. Either way the old set's shards are
    deleted only once the new set is in place, and since every build names its shards anew
    (lake.blocks), no path a reader of the old set holds is ever rewritten: such a reader reads the old
    bytes, or finds its shard gone and says the set was replaced (shards.mapped.shard_gone)."""
    if not out.remote:
        if os.path.exists(out.root):
            os.replace(out.root, _replaced(out))
        os.replace(new.root, out.root)
        shutil.rmtree(_replaced(out), ignore_errors=True)
        return
    new.write_atomic(SWAP_MARKER, b"")
    _copy_remote(new, out)


def _listed(out: SetOutput) -> dict[str, str]:
    """{shard path: sha256} of the manifest at `out` (empty: none, or unreadable)."""
    try:
        return {e.path: e.sha256 for e in Manifest.from_json(out.read_text(MANIFEST_NAME)).shards}
    except (FileNotFoundError, LakeError, UnicodeDecodeError):
        return {}


def _copy_remote(new: SetOutput, out: SetOutput) -> None:
    """The new shards first (new names, beside the old set, which readers keep reading), then the index
    and quarantine, then the manifest (the switch), and only then the old set's objects. A new shard
    under a name the old manifest lists with other bytes (builds made before build ids) would make the
    old set a mixed one: then the old manifest goes first, and readers see no set for the while."""
    if not new.exists(MANIFEST_NAME):  # only deleting `new` was left to do: everything else was done
        new.remove_tree()
        return
    incoming = _listed(new)
    old = _listed(out)
    if any(old[p] != sha for p, sha in incoming.items() if p in old):
        out.remove(MANIFEST_NAME)
    fs, _ = storage.filesystem(new.root)
    extras = [n for n in (INDEX_NAME, QUARANTINE_NAME) if new.exists(n)]
    for rel in sorted(incoming) + extras + [MANIFEST_NAME]:  # the manifest last: a set exactly when it is whole
        src, dst = new.path(rel), out.path(rel)
        with storage.errors(dst):
            fs.copy(storage.filesystem(src)[1], storage.filesystem(dst)[1])
    for name in out.shard_names():
        if f"{SHARDS_DIR}/{name}" not in incoming:
            out.remove(f"{SHARDS_DIR}/{name}")
    for name in out.listdir():  # the old set's card (README.md, preview/), anything else it held
        if name not in (SHARDS_DIR, MANIFEST_NAME, LOCK_OBJECT, *extras):  # the lock: the ingest doing this swap
            out.remove_tree(name)
    new.remove_tree()


def finish_swap(out: SetOutput) -> str | None:
    """Complete a swap an interrupted `--overwrite` had begun; says what it did (None: nothing to do)."""
    if not out.remote:
        replaced = _replaced(out)
        if not os.path.exists(replaced):
            return None
        new = overwrite_sibling(out)
        if not os.path.exists(out.root) and os.path.exists(new.root):
            os.replace(new.root, out.root)
        shutil.rmtree(replaced, ignore_errors=True)
        return f"completed an interrupted --overwrite: {out.root} now holds the new set"
    new = overwrite_sibling(out)
    if not new.exists(SWAP_MARKER):
        return None
    _copy_remote(new, out)
    return f"completed an interrupted --overwrite: {out.root} now holds the new set"
