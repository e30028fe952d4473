"""Open a shard set by local path or fsspec URL and check that it is one we can read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from lake import storage
from lake.errors import LakeError
from lake.schema import INDEX_NAME, MANIFEST_NAME, QUARANTINE_NAME, Manifest, ShardEntry


@dataclass
class ShardSet:
    """A shard set on disk or in an object store: its root, manifest and (lazily) index."""

    root: str
    manifest: Manifest

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
            raise LakeError(f"{path}: missing (the set's per-clip index); run `python -m shards verify {self.root}`")
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


def open_shard_set(root: str) -> ShardSet:
    """Read `root/manifest.json`; every problem becomes one LakeError naming the file."""
    root = str(root).rstrip("/") or "/"
    manifest_path = storage.join(root, MANIFEST_NAME)
    if not storage.exists(root):
        raise LakeError(f"{root}: no such shard set (the path does not exist)")
    if not storage.exists(manifest_path):
        raise LakeError(f"{root}: not a shard set (no {MANIFEST_NAME}); make one with `python -m ingest`")
    try:
        text = storage.read_bytes(manifest_path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LakeError(f"{manifest_path}: cannot read ({e})") from None
    return ShardSet(root=root, manifest=Manifest.from_json(text, where=manifest_path))
