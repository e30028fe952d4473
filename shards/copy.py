"""`python -m shards cp SRC DST`: move a shard set between a local path, s3:// (any fsspec URL) and hf://.

- Resumable: a shard already at the destination with the manifest's size and sha256 is
  skipped, so a re-run after an interruption moves only what is missing.
- Verified: every shard is hashed on its way through and compared with the manifest; a local
  copy is renamed into place only after that, an upload whose bytes differ is discarded, and
  the destination's size is checked afterwards (for hf://, the sha256 the Hub recorded).
- Complete or absent: the index and the quarantine list go next, the manifest last, so the
  destination is a shard set only once everything it lists is there; and it goes only over shards
  checked against it: each one this run copied (hashed in transit) or skipped (hashed when skipped)
  is still, right before the manifest is written, the file that was checked (its size and the
  store's change token: inode and mtime, an ETag), or the manifest is not written.
- One writer: the destination's set lock (lake.setlock, the ingest's) is held throughout, so a second
  `shards cp` or an ingest into the same destination is refused, naming the first (host, pid, since);
  behind a URL the lock is a lease, checked before every shard and before the manifest.
- Safe: a destination holding another set (another fingerprint) is refused unless --overwrite,
  which removes the old manifest first, then the old set's shards that the new one lacks.

Pushing to `hf://datasets/OWNER/NAME` goes through `HfApi.upload_large_folder` (resumable,
several commits) from a staging folder of links next to the shard cache, then one commit of
the manifest on top of the very commit its shards were checked at (the Hub has no lock; its
`parent_commit` refuses the manifest if another push committed in between); pulling reads through
`HfFileSystem` at `--revision`.

The dataset card (`shards.card`: README.md and preview/*.parquet) is not part of the set; it is
regenerated at the destination, never copied, since it names where the set is published: a push
to the Hub always carries one (the Hub shows nothing without it), a copy elsewhere gets one when
the source has one (with the source card's settings: its licence travels), and a pull from the
Hub leaves the Hub's card behind.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote

from lake import storage
from lake.catalog import ShardSet, default_cache_dir, open_shard_set
from lake.errors import LakeError
from lake.schema import INDEX_NAME, MANIFEST_NAME, QUARANTINE_NAME, Manifest, ShardEntry
from lake.setlock import SetLock
from shards.card import PREVIEW_DIR, CardSettings, card_files, card_settings, remove_card, write_card
from shards.format import TMP_SUFFIX, copy_stream

CHUNK = 8 << 20  # bytes per read while moving a shard (each one ranged GET from an object store)
EXTRA_FILES = (INDEX_NAME, QUARANTINE_NAME)
"""The set's other files: no hash in the manifest, small, copied whole every time (before the manifest)."""


@dataclass
class CopySummary:
    src: str
    dst: str
    name: str
    fingerprint: str
    shards: int
    copied: int
    skipped: int
    bytes_copied: int
    seconds: float
    card: bool = False  # a dataset card (README.md, preview/) was written at the destination


def with_revision(url: str, revision: str | None) -> str:
    """hf://datasets/O/N at `revision` (HfFileSystem's `@rev` form); other URLs are returned as they are."""
    if not revision or storage.scheme(url) != "hf":
        return url
    if "@" in url:
        raise LakeError(f"{url}: the URL already names a revision; drop --revision or the @ part")
    repo_id, rest = _hub_repo(url, allow_path=True)
    return f"hf://datasets/{repo_id}@{quote(revision, safe='')}" + (f"/{rest}" if rest else "")


def _hub_repo(url: str, allow_path: bool = False) -> tuple[str, str]:
    """('OWNER/NAME', path inside the repo) of hf://datasets/OWNER/NAME[/path]."""
    parts = url.split("://", 1)[1].strip("/").split("/")
    if len(parts) < 3 or parts[0] != "datasets" or (len(parts) > 3 and not allow_path):
        raise LakeError(f"{url}: a shard set on the Hub is a dataset repository: give hf://datasets/OWNER/NAME")
    return f"{parts[1]}/{parts[2].split('@', 1)[0]}", "/".join(parts[3:])


def _check_destination(shards: ShardSet, dst: str, overwrite: bool) -> list[ShardEntry] | None:
    """Refuse another set at `dst` unless `overwrite`.

    None: nothing to replace (no set there, or this very set: a resumed or repeated copy);
    otherwise the shards of the set being replaced.
    """
    path = storage.join(dst, MANIFEST_NAME)
    try:
        text = storage.read_bytes(path)
    except FileNotFoundError:
        return None
    try:
        old = Manifest.from_json(text.decode("utf-8"), where=path)
        what = f"another shard set ({old.name!r}, fingerprint {old.fingerprint()})"
    except (LakeError, UnicodeDecodeError) as e:
        old, what = None, f"an unreadable manifest ({e})"
    if old is not None and old.fingerprint() == shards.fingerprint:  # this set; or another build of its bytes,
        mine = {s.path for s in shards.manifest.shards}                 # whose shards have other names
        return [s for s in old.shards if s.path not in mine] or None
    if not overwrite:
        raise LakeError(f"{dst}: holds {what}; {shards.root} is {shards.name!r}, fingerprint "
                        f"{shards.fingerprint}; pass --overwrite to replace it")
    return old.shards if old is not None else []


def _sha256_at(path: str) -> str:
    """The sha256 of a stored file: the Hub records it for LFS files; anything else is read and hashed."""
    lfs = storage.info(path).get("lfs") if storage.scheme(path) == "hf" else None
    if lfs:
        return lfs["sha256"] if isinstance(lfs, dict) else lfs.sha256
    with storage.open_file(path, "rb") as f:
        return copy_stream(f).sha.hexdigest()


def checked_version(path: str, entry: ShardEntry) -> tuple | None:
    """The version (lake.storage.version) of the file at `path` when it holds exactly this shard (size, then
    sha256; the version is taken first, so a change while it is hashed shows later); None when it does not."""
    try:
        seen = storage.version(path)
    except FileNotFoundError:
        return None
    if seen[0] != entry.bytes:
        return None
    return seen if _sha256_at(path) == entry.sha256 else None


def already_there(path: str, entry: ShardEntry) -> bool:
    """True when `path` holds exactly this shard (size, then sha256)."""
    return checked_version(path, entry) is not None


def _damaged(src: str, got, entry: ShardEntry) -> LakeError | None:
    if got.bytes == entry.bytes and got.sha.hexdigest() == entry.sha256:
        return None
    return LakeError(f"{src}: {got.bytes} bytes read with another sha256 than the manifest's ({entry.bytes} "
                     "bytes): the source shard is damaged; run `python -m shards verify` on the source")


def transfer(src: str, dst: str, entry: ShardEntry, progress=None) -> None:
    """Copy one shard, hashing it on the way; the destination never holds a partial or unverified copy.

    A local copy is written to `<dst>.<pid>-<thread>.tmp` and renamed into place after the check; an upload
    whose bytes do not check out is discarded instead of committed. `progress`: a tqdm-like bar.
    """
    on_bytes = progress.update if progress is not None else None
    if not storage.is_url(dst):
        final = storage.local_path(dst)
        os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
        tmp = f"{final}.{os.getpid()}-{threading.get_ident()}{TMP_SUFFIX}"
        try:
            with storage.open_file(src, "rb", block_size=CHUNK) as s, open(tmp, "wb") as d:
                got = copy_stream(s, d, CHUNK, on_bytes)
                d.flush()
                os.fsync(d.fileno())
            bad = _damaged(src, got, entry)
            if bad is not None:
                raise bad
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    out = storage.open_file(dst, "wb")
    try:
        with storage.open_file(src, "rb", block_size=CHUNK) as s:
            got = copy_stream(s, out, CHUNK, on_bytes)
        bad = _damaged(src, got, entry)
    except BaseException:
        out.discard()  # an object store commits on close: never commit a partial upload
        raise
    if bad is not None:
        out.discard()
        raise bad
    out.close()
    if storage.size(dst) != entry.bytes:
        raise LakeError(f"{dst}: {storage.size(dst)} bytes after the upload, the manifest says {entry.bytes}; re-run")


def _remove_stale(old: list[ShardEntry], shards: ShardSet, dst: str) -> None:
    """--overwrite: the old manifest first (the destination stops being a set), then the old set's shards the new lacks."""
    storage.remove(storage.join(dst, MANIFEST_NAME))
    remove_card(dst)
    keep = {s.path for s in shards.manifest.shards}
    for s in old:
        if s.path not in keep:
            storage.remove(storage.join(dst, s.path))


def copy_set(src: str, dst: str, overwrite: bool = False, revision: str | None = None, progress=None,
             cache_dir: str | None = None) -> CopySummary:
    """Copy the set at `src` to `dst` (see the module docstring). `progress`: a tqdm-like bar of bytes."""
    t0 = time.perf_counter()
    if storage.scheme(dst) == "hf" and storage.scheme(src) == "hf":
        raise LakeError(f"{src} -> {dst}: copy from the Hub to the Hub through a local copy (two `shards cp`)")
    if revision and "hf" not in (storage.scheme(src), storage.scheme(dst)):
        raise LakeError(f"--revision {revision}: applies to an hf:// source or destination only")
    src, dst = with_revision(src, revision), str(dst).rstrip("/")
    shards = open_shard_set(src, cache_limit_gb=0)
    local_pair = not storage.is_url(src) and not storage.is_url(dst) and os.path.exists(storage.local_path(dst))
    if local_pair and os.path.samefile(storage.local_path(src), storage.local_path(dst)):
        raise LakeError(f"{dst}: the source and the destination are the same directory")
    if storage.scheme(dst) == "hf":
        return _push_to_hub(shards, dst, overwrite, revision, progress, cache_dir or default_cache_dir(), t0)
    if not storage.is_url(dst) and os.path.isfile(storage.local_path(dst)):
        raise LakeError(f"{dst}: is a file; the destination of a set is a directory or a URL prefix")
    with SetLock(dst, "shards cp") as lock:
        copied, skipped, moved = _copy_into(shards, dst, overwrite, progress, lock)
        settings = card_settings(shards.root) if storage.scheme(src) != "hf" else None  # a pull leaves the Hub's card
        if settings is not None:
            write_card(open_shard_set(dst, cache_limit_gb=0), dst, settings)
    return CopySummary(src=src, dst=dst, name=shards.name, fingerprint=shards.fingerprint,
                       shards=len(shards.manifest.shards), copied=copied, skipped=skipped, bytes_copied=moved,
                       seconds=time.perf_counter() - t0, card=settings is not None)


def _copy_into(shards: ShardSet, dst: str, overwrite: bool, progress, lock: SetLock) -> tuple[int, int, int]:
    """Under the destination's lock: the shards `dst` lacks, the extra files, then the manifest, over shards
    checked against it and unchanged since. Returns (shards copied, shards skipped, bytes copied)."""
    old = _check_destination(shards, dst, overwrite)
    if old is not None:
        _remove_stale(old, shards, dst)
    if not storage.is_url(dst):
        os.makedirs(storage.local_path(dst), exist_ok=True)
    if progress is not None:
        progress.total = sum(s.bytes for s in shards.manifest.shards)
    checked: dict[str, tuple] = {}  # shard path -> its version at dst when it was checked
    copied = skipped = moved = 0
    for entry in shards.manifest.shards:
        lock.check()
        target = storage.join(dst, entry.path)
        checked[entry.path] = checked_version(target, entry)
        if checked[entry.path] is not None:
            skipped += 1
            if progress is not None:
                progress.update(entry.bytes)
            continue
        transfer(shards.shard_path(entry), target, entry, progress)
        checked[entry.path] = storage.version(target)
        copied, moved = copied + 1, moved + entry.bytes
    lock.check()
    for name in EXTRA_FILES:
        if storage.exists(shards.path(name)):
            storage.write_bytes_atomic(storage.join(dst, name), storage.read_bytes(shards.path(name)))
    _unchanged_since_checked(dst, checked)
    lock.check()
    storage.write_bytes_atomic(storage.join(dst, MANIFEST_NAME), storage.read_bytes(shards.path(MANIFEST_NAME)))
    return copied, skipped, moved


def _unchanged_since_checked(dst: str, checked: dict[str, tuple]) -> None:
    """Right before the manifest goes: every shard it lists is still the file that was checked (one listing
    per folder). Under the lock nothing else writes there; this catches what does not take it."""
    folders: dict[str, dict[str, tuple]] = {}
    for path, seen in checked.items():
        folder, name = posixpath.split(path)
        if folder not in folders:
            folders[folder] = storage.versions(storage.join(dst, folder))
        if folders[folder].get(name) != seen:
            raise LakeError(f"{storage.join(dst, path)}: changed since this copy checked it (something that does "
                            f"not take the set's lock wrote there); the manifest was not written, so {dst} is not "
                            "a set; re-run the same command once nothing else writes there")


# -- the Hub -------------------------------------------------------------------------------------------------

def upload_plan(shards: ShardSet, dst_root: str, card: dict[str, bytes] | None = None
                ) -> tuple[list[ShardEntry], list[str]]:
    """(shards the Hub lacks, every path to upload: those shards, the extra files and the card's files;
    never the manifest)."""
    todo = [e for e in shards.manifest.shards if not already_there(storage.join(dst_root, e.path), e)]
    extras = [name for name in EXTRA_FILES if storage.exists(shards.path(name))]
    return todo, [e.path for e in todo] + extras + sorted(card or {})


def stage_for_upload(shards: ShardSet, paths: list[str], stage: str, card: dict[str, bytes] | None = None) -> None:
    """Lay out `paths` under `stage` as upload_large_folder reads them: links to a local set's files
    (nothing is written into the set itself), verified copies of a set behind a URL, and the
    generated card's files (`card`: {path: bytes}) written there."""
    by_path = {e.path: e for e in shards.manifest.shards}
    card = card or {}
    for rel in paths:
        target = os.path.join(stage, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if rel in card:
            storage.write_bytes_atomic(target, card[rel])
        elif not storage.is_url(shards.root):
            if os.path.lexists(target):
                os.remove(target)
            os.symlink(os.path.abspath(storage.local_path(shards.path(rel))), target)
        elif rel in by_path:
            if not already_there(target, by_path[rel]):  # staged by an interrupted push: kept
                transfer(shards.path(rel), target, by_path[rel])
        else:
            storage.write_bytes_atomic(target, storage.read_bytes(shards.path(rel)))


def _push_to_hub(shards: ShardSet, dst: str, overwrite: bool, revision: str | None, progress, cache_dir: str,
                 t0: float) -> CopySummary:
    from huggingface_hub import CommitOperationDelete, HfApi

    repo_id, _ = _hub_repo(dst)
    root = with_revision(f"hf://datasets/{repo_id}", revision)
    api = HfApi()
    old = _check_destination(shards, root, overwrite)
    card = card_files(shards, root, card_settings(shards.root) or CardSettings())
    todo, paths = upload_plan(shards, root, card)
    stage = os.path.join(cache_dir, "hf-upload", f"{repo_id.replace('/', '--')}@{quote(revision or 'main', safe='')}")
    with storage.errors(dst):
        if old is not None:
            keep = {s.path for s in shards.manifest.shards} | set(card)
            gone = [MANIFEST_NAME] + [s.path for s in old if s.path not in keep] + [
                p for p in _hub_previews(root) if p not in keep]
            api.create_commit(repo_id, [CommitOperationDelete(p) for p in gone], repo_type="dataset",
                              revision=revision, commit_message=f"Remove the shard set replaced by {shards.name!r}")
        stage_for_upload(shards, paths, stage, card)
        if progress is not None:
            progress.total = sum(e.bytes for e in todo)
        api.upload_large_folder(repo_id, stage, repo_type="dataset", revision=revision, allow_patterns=paths,
                                print_report=False)
        if progress is not None:
            progress.update(sum(e.bytes for e in todo))
        _commit_manifest(api, shards, root, repo_id, revision)
    shutil.rmtree(stage, ignore_errors=True)  # links or copies, and upload_large_folder's resume records
    return CopySummary(src=shards.root, dst=root, name=shards.name, fingerprint=shards.fingerprint,
                       shards=len(shards.manifest.shards), copied=len(todo),
                       skipped=len(shards.manifest.shards) - len(todo), bytes_copied=sum(e.bytes for e in todo),
                       seconds=time.perf_counter() - t0, card=True)


def _commit_manifest(api, shards: ShardSet, root: str, repo_id: str, revision: str | None) -> None:
    """The manifest, committed on top of exactly the commit its shards were checked at.

    The Hub has no lock, and a push is several commits, so two pushes into one repository can interleave
    as two `shards cp` into one folder could. Its compare-and-swap stands in: every shard the manifest
    lists is checked as the Hub holds it (what it recorded, not what we meant to send; the shards this
    push skipped too), and the manifest's commit names the commit seen before the check as its parent
    (`parent_commit`), which the Hub refuses if anything was committed since."""
    from huggingface_hub.errors import HfHubHTTPError  # huggingface_hub only for a push to the Hub

    head = api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
    for entry in shards.manifest.shards:
        if not already_there(storage.join(root, entry.path), entry):
            raise LakeError(f"{root}/{entry.path}: the Hub holds other bytes than the manifest's after the upload "
                            "(another push into the repository?); the manifest was not committed; re-run")
    try:
        api.upload_file(path_or_fileobj=storage.read_bytes(shards.path(MANIFEST_NAME)), path_in_repo=MANIFEST_NAME,
                        repo_id=repo_id, repo_type="dataset", revision=revision, parent_commit=head,
                        commit_message=f"Shard set {shards.name!r}, fingerprint {shards.fingerprint}")
    except HfHubHTTPError as e:
        if getattr(e.response, "status_code", None) not in (409, 412):
            raise
        raise LakeError(f"{root}: something was committed to the repository while this push checked its shards "
                        "(another push?); the manifest was not committed, so no mixed set is published; re-run "
                        "once the other push has finished") from None


def _hub_previews(root: str) -> list[str]:
    """The preview files in the repository now (a replaced set's splits may differ from the new one's)."""
    try:
        return [f"{PREVIEW_DIR}/{n}" for n in storage.listdir(storage.join(root, PREVIEW_DIR))]
    except FileNotFoundError:
        return []
