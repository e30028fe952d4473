"""Shard set format v1: the manifest, the per-clip index, and their fingerprint.

A shard set is a directory (or object-store prefix):

    manifest.json     this module's `Manifest`
    index.parquet     one row per clip, `INDEX_SCHEMA`
    quarantine.jsonl  clips that could not be decoded or encoded, with the reason
    shards/<split>-<worker>-<seq>-<build>.tar   blocks of rows: lake.blocks

Each shard entry in the manifest records, per block, the byte range of every tar
member, so that a local reader can map the tar and view each `.npy` payload in
place instead of parsing the tar stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from lake.blocks import CHECKSUM, member_shape, path_without_build
from lake.errors import LakeError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.parquet"
QUARANTINE_NAME = "quarantine.jsonl"

SAMPLE_RATE = 16000
"""Hz: the rate every stored audio embedding is computed at (ingest resamples every clip to it)."""

SPLITS = ("train", "val", "test")
"""Hash-split names; MELD keeps its official `dev` (lake.splits.validation_split finds either)."""
_SPLIT_ORDER = ("train", "val", "dev", "test")


def reason_category(reason: str) -> str:
    """The part of a quarantine reason before ':' (what summaries and cards count), e.g. "decode error"."""
    return reason.split(":", 1)[0].strip()


def split_sort_key(split: str) -> tuple[int, str]:
    """Splits in reading order: train, val, dev, test, then any other name alphabetically."""
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), split)

INDEX_COLUMNS = (
    "key", "split", "label_id", "label", "duration_s", "transcript",
    "source_uri", "shard", "block", "row",
)


def index_schema():
    """The pyarrow schema of index.parquet (imported lazily: pyarrow is heavy)."""
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()),
        ("split", pa.string()),
        ("label_id", pa.int16()),
        ("label", pa.string()),
        ("duration_s", pa.float32()),
        ("transcript", pa.string()),
        ("source_uri", pa.string()),
        ("shard", pa.string()),
        ("block", pa.int32()),
        ("row", pa.int32()),
    ])


@dataclass
class BlockEntry:
    """One block of a shard: its row count, each member's [offset, size] in the tar and, for sets written since
    they exist, each member's checksum (lake.blocks.checksum; checked when a reader first maps the member)."""

    rows: int
    members: dict[str, list[int]]
    checksums: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "members": self.members, **({CHECKSUM: self.checksums} if self.checksums else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "BlockEntry":
        return cls(rows=int(d["rows"]), members={k: [int(v[0]), int(v[1])] for k, v in d["members"].items()},
                   checksums={k: int(v) for k, v in d.get(CHECKSUM, {}).items()})


@dataclass
class ShardEntry:
    """One finished shard: written under a temporary name, renamed, then recorded here."""

    path: str  # relative to the set root, e.g. shards/train-0000-000003.tar
    split: str
    rows: int
    bytes: int
    sha256: str
    blocks: list[BlockEntry] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["blocks"] = [b.to_dict() for b in self.blocks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShardEntry":
        return cls(
            path=d["path"], split=d["split"], rows=int(d["rows"]), bytes=int(d["bytes"]),
            sha256=d["sha256"], blocks=[BlockEntry.from_dict(b) for b in d.get("blocks", [])],
        )

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class Manifest:
    """manifest.json. `encoders` = {"audio": {...}, "text": {...}}, each with at least
    id, revision, dim (and, for audio, `layers`: the names of the stored layers)."""

    name: str
    source: dict[str, Any]
    encoders: dict[str, dict[str, Any]]
    taxonomy: list[str]
    fields: list[str]
    shards: list[ShardEntry] = field(default_factory=list)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    dtype: str = "float16"
    schema_version: int = SCHEMA_VERSION
    # the train split's per-feature mean/std of the embeddings whose encoder record says
    # "standardize" (shards.stats); {} for every other set, and for sets made before it existed
    feature_stats: dict[str, Any] = field(default_factory=dict)

    # -- derived -------------------------------------------------------------
    @property
    def audio_dim(self) -> int:
        return int(self.encoders["audio"]["dim"])

    @property
    def text_dim(self) -> int:
        return int(self.encoders["text"]["dim"])

    @property
    def audio_layers(self) -> list[str]:
        return list(self.encoders["audio"]["layers"])

    @property
    def num_classes(self) -> int:
        return len(self.taxonomy)

    def shards_of(self, split: str) -> list[ShardEntry]:
        return [s for s in self.shards if s.split == split]

    def rows_of(self, split: str) -> int:
        return sum(s.rows for s in self.shards if s.split == split)

    def expected_shape(self, member: str, rows: int) -> tuple[int, ...]:
        """The shape a block member of `rows` rows must have under this manifest (KeyError: not an array
        member)."""
        return member_shape(member, rows, self.axis_size)

    def axis_size(self, axis: str) -> int:
        """The size of a named block axis other than rows (lake.blocks.Member.dims) under this manifest."""
        if axis == "layers":
            return len(self.audio_layers)
        if axis == "audio_dim":
            return self.audio_dim
        if axis == "text_dim":
            return self.text_dim
        raise KeyError(axis)

    def fingerprint(self) -> str:
        """A short hash of what trainers depend on: encoders, taxonomy and shard contents.

        Checkpoints carry it, so that resuming or evaluating on other data is caught. Shard names count
        without their build id: two builds of the same bytes are the same data.
        """
        core = {
            "schema_version": self.schema_version,
            "encoders": self.encoders,
            "taxonomy": self.taxonomy,
            "shards": sorted((path_without_build(s.path), s.sha256) for s in self.shards),
        }
        blob = json.dumps(core, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # -- (de)serialisation ----------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "created_at": self.created_at,
            "source": self.source,
            "encoders": self.encoders,
            "dtype": self.dtype,
            "taxonomy": self.taxonomy,
            "fields": self.fields,
            "splits": self.splits,
            "shards": [s.to_dict() for s in self.shards],
            "ingest": self.ingest,
            **({"feature_stats": self.feature_stats} if self.feature_stats else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest.json") -> "Manifest":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise LakeError(
                f"{where}: schema_version {version!r}, but this code reads version {SCHEMA_VERSION}; "
                "re-ingest the set or use a matching release of this project"
            )
        missing = [k for k in ("name", "source", "encoders", "taxonomy", "fields", "shards") if k not in d]
        if missing:
            raise LakeError(f"{where}: not a shard-set manifest (missing {', '.join(missing)})")
        try:
            return cls(
                schema_version=version,
                name=d["name"],
                created_at=d.get("created_at", ""),
                source=d["source"],
                encoders=d["encoders"],
                dtype=d.get("dtype", "float16"),
                taxonomy=list(d["taxonomy"]),
                fields=list(d["fields"]),
                splits=d.get("splits", {}),
                shards=[ShardEntry.from_dict(s) for s in d["shards"]],
                ingest=d.get("ingest", {}),
                feature_stats=d.get("feature_stats", {}),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise LakeError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None

    @classmethod
    def from_json(cls, text: str, where: str = "manifest.json") -> "Manifest":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise LakeError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise LakeError(f"{where}: not a shard-set manifest (top level is not an object)")
        return cls.from_dict(d, where)


def split_summary(shards: list[ShardEntry]) -> dict[str, dict[str, int]]:
    """{split: {rows, shards}} in canonical split order."""
    out: dict[str, dict[str, int]] = {}
    for s in sorted(shards, key=lambda s: (split_sort_key(s.split), s.path)):
        d = out.setdefault(s.split, {"rows": 0, "shards": 0})
        d["rows"] += s.rows
        d["shards"] += 1
    return out
