"""What is inside a shard set's shards/ folder (format v1): shard names, block members, meta keys.

The one owner of the block format; every writer and reader asks this module. A format v2
changes this module and the code that reads its names, nothing that merely passes them on.

    shards/<split>-<worker>-<seq>-<build>.tar  `shard_relpath` makes the name, `parse_shard_name` reads it
                                               (sets made before build ids: shards/<split>-<worker>-<seq>.tar)
    <block>.audio.npy    float16 [n, L, Da]   pooled audio embedding per stored layer
    <block>.text.npy     float16 [n, Dt]      transcript embedding
    <block>.caption.npy  float16 [n, Dt]      caption embedding (sources with captions only)
    <block>.label.npy    int16   [n]          class id in the manifest's taxonomy
    <block>.meta.json    per-row lists: keys, durations, transcripts, source_uris (always);
                         encoded_s, captions, extra (soft labels, language, ...) when the writer has them

A block's Python form (what `make_block` returns, shards.format writes and its readers return)
is a dict of those member names: numpy arrays for the arrays, a dict of lists for "meta".
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import xxhash

SHARDS_DIR = "shards"
SHARD_SUFFIX = ".tar"


# -- shard names -------------------------------------------------------------------------------------

class ShardName(NamedTuple):
    split: str
    worker: int  # the ingest rank (or SetWriter's worker id) that wrote it
    seq: int  # per split and worker, in writing order
    build: str = ""  # the build that wrote it ("": a set made before build ids)


SHARD_NAME_FORMAT = f"{SHARDS_DIR}/<split>-<worker>-<seq>[-<build>]{SHARD_SUFFIX}"
"""A shard's name as messages describe it."""
_BUILD = "[a-z][a-z0-9]*"  # a letter first, so that a build id never reads as a sequence number
_SHARD_NAME = re.compile(r"^(?P<split>.+)-(?P<worker>\d+)-(?P<seq>\d+)(?:-(?P<build>" + _BUILD + "))?"
                         + re.escape(SHARD_SUFFIX) + "$")


def new_build_id() -> str:
    """A short random id for one build of a set (a new set, a rebuild by --overwrite, a repair).

    Every shard a build writes carries it, so no build ever writes a path an earlier build of the same
    set used: a reader that opened the earlier set never finds other bytes under a name it holds."""
    return secrets.choice(string.ascii_lowercase) + "".join(
        secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


def shard_relpath(split: str, worker: int, seq: int, build: str = "") -> str:
    """A shard's path in its set, e.g. shards/train-0000-000003-k3x9qa.tar (build "": shards/train-0000-000003.tar)."""
    if build and not re.fullmatch(_BUILD, build):
        raise ValueError(f"build id {build!r}: lowercase letters and digits, a letter first")
    return f"{SHARDS_DIR}/{split}-{worker:04d}-{seq:06d}{'-' + build if build else ''}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> ShardName | None:
    """(split, worker, seq, build) of a shard's base name or path in its set; None for any other file name.

    The split is everything before the numeric fields, so a split name may hold a '-'."""
    found = _SHARD_NAME.match(name.rsplit("/", 1)[-1])
    if found is None:
        return None
    return ShardName(found["split"], int(found["worker"]), int(found["seq"]), found["build"] or "")


def path_without_build(path: str) -> str:
    """A shard's path without its build id: what the same shard is called in every build of a set, so that
    two builds with the same bytes are the same data (lake.schema.Manifest.fingerprint). Other names as given."""
    name = parse_shard_name(path)
    return path if name is None else shard_relpath(name.split, name.worker, name.seq)


# -- block members ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One array member: its stored dtype and the names of its axes (rows first)."""

    dtype: str
    dims: tuple[str, ...]  # "rows", "layers" (stored audio layers), "audio_dim", "text_dim"
    optional: bool = False  # only in the blocks of sets whose fields list it

    @property
    def ndim(self) -> int:
        return len(self.dims)


ARRAY_MEMBERS = {
    "audio": Member("float16", ("rows", "layers", "audio_dim")),
    "text": Member("float16", ("rows", "text_dim")),
    "caption": Member("float16", ("rows", "text_dim"), optional=True),
    "label": Member("int16", ("rows",)),
}
META_MEMBER = "meta"
MEMBER_SUFFIX = {name: f"{name}.npy" for name in ARRAY_MEMBERS} | {META_MEMBER: "meta.json"}
"""Member name -> the suffix of its tar member (`<block>.<suffix>`), in writing order."""


def member_shape(member: str, rows: int, size_of: Callable[[str], int]) -> tuple[int, ...]:
    """The shape an array member of `rows` rows has; `size_of(axis)`: the size of each other axis in
    a given set (lake.schema.Manifest.axis_size)."""
    return tuple(rows if axis == "rows" else size_of(axis) for axis in ARRAY_MEMBERS[member].dims)


CHECKSUM = "xxh3"
"""The manifest's key for each block member's checksum: xxh3-64 of the member's bytes (6 GB/s here, 3x zlib's
crc32), recorded when the shard is written and checked the first time a process reads the member (shards.mapped):
a flipped byte or a NaN written into a shard is found before a batch carries it. Sets written before it have none
(only their sizes, and `shards verify`'s sha256, check them)."""


def checksum(data) -> int:
    """The checksum of a member's bytes (any buffer: bytes, a memoryview of a mapped shard)."""
    return xxhash.xxh3_64_intdigest(data)


def block_name(index: int) -> str:
    """The name the members of a shard's `index`-th block share: b000000, b000001, ..."""
    return f"b{index:06d}"


def member_file(block: str, member: str) -> str:
    """The tar member name of one member of a block, e.g. b000003.audio.npy."""
    return f"{block}.{MEMBER_SUFFIX[member]}"


def split_member_file(name: str) -> tuple[str, str]:
    """(block name, suffix) of a tar member name: 'b000003.audio.npy' -> ('b000003', 'audio.npy')."""
    block, _, suffix = name.partition(".")
    return block, suffix


def member_of(suffix: str) -> str:
    """The member name of a tar member suffix: 'audio.npy' -> 'audio', 'meta.json' -> 'meta'."""
    return suffix.split(".", 1)[0]


# -- meta.json ------------------------------------------------------------------------------------------

KEYS, DURATIONS, TRANSCRIPTS, SOURCE_URIS = "keys", "durations", "transcripts", "source_uris"
ENCODED_S, CAPTIONS, EXTRA = "encoded_s", "captions", "extra"
SOFT_LABELS = "soft_labels"
"""Inside a row's `extra`: LAION's per-class annotation scores."""

META_LISTS = (KEYS, DURATIONS, TRANSCRIPTS, SOURCE_URIS)
"""Per-row lists every block's meta.json has."""
OPTIONAL_META = (ENCODED_S, CAPTIONS, EXTRA)
"""Per-row lists a block's meta.json has when its writer had them (ingest of audio: all three;
an import of precomputed vectors: extra)."""
ROW_NAME = {KEYS: "key", DURATIONS: "duration_s", TRANSCRIPTS: "transcript", SOURCE_URIS: "source_uri",
            ENCODED_S: "encoded_s", CAPTIONS: "caption", EXTRA: "extra"}
"""Meta list -> the name of one row's value (the index's column, for the lists it holds)."""


def row_meta(key: str, duration_s: float, transcript: str, source_uri: str, *, encoded_s: float | None = None,
             caption: str | None = None, extra: dict | None = None) -> dict:
    """One row's meta: durations in seconds rounded to 0.1 ms; `encoded_s`: the seconds of audio the
    encoder saw (after --max-seconds); None leaves an optional entry out. Every row of a block must
    have the same entries (`make_block` takes the first row's)."""
    meta = {KEYS: key, DURATIONS: round(float(duration_s), 4), TRANSCRIPTS: transcript, SOURCE_URIS: source_uri}
    if encoded_s is not None:
        meta[ENCODED_S] = round(float(encoded_s), 4)
    if caption is not None:
        meta[CAPTIONS] = caption
    if extra is not None:
        meta[EXTRA] = extra
    return meta


def make_block(arrays: dict[str, Sequence], metas: Sequence[dict]) -> dict:
    """A block from its rows: each array member's rows stacked and stored as its dtype (float32
    embeddings become float16), the rows' meta dicts turned into per-key lists."""
    block = {name: np.stack(rows).astype(ARRAY_MEMBERS[name].dtype, copy=False) for name, rows in arrays.items()}
    block[META_MEMBER] = {k: [m[k] for m in metas] for k in metas[0]}
    return block
