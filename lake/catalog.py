"""Open a shard set by local path or fsspec URL and check that it is one we can read.

How a set is opened also says where its shards are cached: a set behind a URL
is streamed through a local shard cache (`shards.cache`), in `cache_dir` and at
most `cache_limit_gb` large. Both default from the environment
(`EMOLAKE_CACHE_DIR`, `EMOLAKE_CACHE_LIMIT_GB`), then to
`$XDG_CACHE_HOME/emolake/shards` (or `~/.cache/emolake/shards`) and 50 GB, so
every reader that opens a set gets the cache without passing anything.
A limit of 0 turns the cache off (ranged reads of the recorded byte ranges).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property

from lake import storage
from lake.cliargs import arg, at_least
from lake.errors import LakeError
from lake.schema import INDEX_NAME, MANIFEST_NAME, QUARANTINE_NAME, Manifest, ShardEntry

CACHE_DIR_ENV = "EMOLAKE_CACHE_DIR"
CACHE_LIMIT_ENV = "EMOLAKE_CACHE_LIMIT_GB"
DEFAULT_CACHE_LIMIT_GB = 50.0


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(base, "emolake", "shards")


def default_cache_limit_gb() -> float:
    text = os.environ.get(CACHE_LIMIT_ENV)
    if not text:
        return DEFAULT_CACHE_LIMIT_GB
    try:
        return float(text)
    except ValueError:
        raise LakeError(f"{CACHE_LIMIT_ENV}={text!r}: not a number of GB") from None


STORAGE_OPTIONS_HELP = ("JSON of fsspec options for the URLs of sets (e.g. '{\"anon\": true}', '{\"endpoint_url\": "
                        "\"http://127.0.0.1:9000\"}'); credentials and endpoints otherwise come from the usual AWS/Hub "
                        "configuration. " + storage.LIMITS_HELP)


@dataclass(kw_only=True)
class SetReading:
    """How a set behind a URL is read: the flags of every command that reads sets (trainers, evaluation), once."""

    cache_dir: str = arg("", "a set behind a URL: the local shard cache (shared safely by processes; empty: "
                         f"${CACHE_DIR_ENV}, else ~/.cache/emolake/shards)")
    cache_limit: float = arg(default_cache_limit_gb(), "a set behind a URL: GB the shard cache may hold (least "
                             "recently used shards evicted; 0 or too small for the split: ranged reads of each block)",
                             range=at_least(0))
    storage_options: str = arg("", STORAGE_OPTIONS_HELP)


@dataclass
class ShardSet:
    """A shard set on disk or in an object store: its root, manifest and (lazily) index."""

    root: str
    manifest: Manifest
    cache_dir: str | None = None  # local shard cache for a set behind a URL (None: read in place)
    cache_limit_gb: float = 0.0  # 1 GB = 1e9 bytes; 0: no cache, ranged reads

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint()

    @property
    def taxonomy(self) -> list[str]:
        return self.manifest.taxonomy

    def path(self, relative: str) -> str:
        return storage.join(self.root, relative)

    def shard_path(self, shard: ShardEntry) -> str:
        return storage.join(self.root, shard.path)

    @cached_property
    def index(self):
        """index.parquet as a pyarrow Table."""
        import pyarrow.parquet as pq

        path = self.path(INDEX_NAME)
        if not storage.exists(path):
            raise LakeError(f"{path}: missing (the set's per-clip index); re-run the ingest command that made the set: "
                            "it checks the set and rebuilds the index from the shards")
        try:
            # by path (local) or from bytes (URL): never through a Python file object, whose buffers
            # arrow's readahead threads would release during interpreter shutdown (std::terminate)
            if storage.is_url(path):
                import pyarrow as pa

                return pq.read_table(pa.BufferReader(storage.read_bytes(path)))
            return pq.read_table(storage.local_path(path))
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise LakeError(f"{path}: cannot read the index ({type(e).__name__}: {e})") from None

    def quarantine(self) -> list[dict]:
        path = self.path(QUARANTINE_NAME)
        if not storage.exists(path):
            return []
        rows = []
        for n, line in enumerate(storage.read_bytes(path).decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise LakeError(f"{path}: line {n} is not JSON") from None
        return rows


def repair_hint(manifest: Manifest | None = None, root: str | None = None) -> str:
    """What repairs a damaged set: the ingest command that made it, run again, writing to where the set is now
    (a copied set's manifest records the command of its first place)."""
    argv = list(manifest.ingest.get("settings", {}).get("argv") or []) if manifest is not None else []
    if argv and root is not None:
        for i, a in enumerate(argv):
            if a == "--out" and i + 1 < len(argv):
                argv[i + 1] = root
            elif a.startswith("--out="):
                argv[i] = f"--out={root}"
    command = ("`python -m ingest " + " ".join(argv) + "`") if argv else "the ingest command that made it"
    return (f"to repair: re-run {command}: it checks the set, rebuilds the index and the manifest from the shards and "
            "ingests again the clips of damaged shards (add --check to hash every shard first)")


def open_shard_set(root: str, cache_dir: str | None = None, cache_limit_gb: float | None = None,
                   storage_options: str | dict | None = None) -> ShardSet:
    """Read `root/manifest.json`; every problem becomes one LakeError naming the file.

    `cache_dir` / `cache_limit_gb` (GB) matter only for a set behind a URL; None (or "") means the default.
    `storage_options`: fsspec options for the URL's filesystem (JSON text or a dict; `--storage-options`).
    """
    root = str(root).rstrip("/") or "/"
    storage.set_storage_options([root], storage_options)
    if cache_limit_gb is not None and cache_limit_gb < 0:
        raise LakeError(f"--cache-limit {cache_limit_gb}: must be 0 (no cache) or more GB")
    manifest_path = storage.join(root, MANIFEST_NAME)
    try:
        # read first, ask later: some filesystems answer "does not exist" when the server cannot be reached
        text = storage.read_bytes(manifest_path).decode("utf-8")
    except FileNotFoundError:
        if not storage.exists(root):
            raise LakeError(f"{root}: no such shard set (the path does not exist)") from None
        raise LakeError(f"{root}: not a shard set (no {MANIFEST_NAME}); make one with `python -m ingest`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LakeError(f"{manifest_path}: cannot read ({e})") from None
    shards = ShardSet(root=root, manifest=Manifest.from_json(text, where=manifest_path))
    if storage.is_url(root):
        shards.cache_dir = cache_dir or default_cache_dir()  # "" from a command line: the default
        shards.cache_limit_gb = default_cache_limit_gb() if cache_limit_gb is None else float(cache_limit_gb)
    return shards
