"""Random access to a shard's blocks through the offsets recorded in the manifest.

Local shards are memory-mapped and each `.npy` payload is viewed in place
(`np.frombuffer` at the offset after its header): no copy until the loader
gathers rows into a batch. A shard behind a URL is mapped the same way from the
local shard cache (`shards.cache`) once it is there; until then (or without a
cache) its blocks are read with ranged reads of exactly the recorded byte ranges.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import threading

import numpy as np

from lake import storage
from lake.blocks import MEMBER_SUFFIX, META_MEMBER, checksum
from lake.errors import LakeError
from lake.schema import MANIFEST_NAME, BlockEntry, Manifest, ShardEntry

# The header dict numpy writes: {'descr': '<f2', 'fortran_order': False, 'shape': (3, 1, 8), }
_HEADER = re.compile(r"^\{'descr': '([<>|=][a-zA-Z]\d*)', 'fortran_order': (True|False), "
                     r"'shape': \(((?:\d+, ?)*\d*)\), \}\s*$")
_NUMPY_PARSER = threading.Lock()


def parse_npy_header(text: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of an .npy header, without numpy's parser.

    numpy reads headers with `ast.literal_eval`, and Python 3.11's AST builder is not safe to run
    in two threads at once (cpython gh-106905: "SystemError: AST constructor recursion depth
    mismatch"), which the loader's prefetch threads and verify's workers would do. Headers this
    project writes match the regex; any other is handed to numpy under a lock.
    """
    m = _HEADER.match(text)
    if m:
        shape = tuple(int(x) for x in m.group(3).replace(" ", "").split(",") if x)
        return shape, m.group(2) == "True", np.dtype(m.group(1))
    import ast

    with _NUMPY_PARSER:
        d = ast.literal_eval(text)
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"not an .npy header: {text[:80]!r}")
    return tuple(d["shape"]), bool(d["fortran_order"]), np.lib.format.descr_to_dtype(d["descr"])


def npy_view(buf, offset: int, size: int, where: str = "") -> np.ndarray:
    """The array of the .npy file stored at buf[offset:offset+size], as a view into buf."""
    mv = memoryview(buf)
    prefix = bytes(mv[offset:offset + 12])
    # the magic string, then the header length: 2 bytes (v1) or 4 bytes (v2), little-endian
    if len(prefix) < 10 or prefix[:6] != b"\x93NUMPY" or (prefix[6], prefix[7]) not in ((1, 0), (2, 0)):
        raise LakeError(f"{where}: not an .npy member at offset {offset}")
    start = 10 if prefix[6] == 1 else 12
    header_len = start + int.from_bytes(prefix[8:start], "little")
    try:
        shape, fortran, dtype = parse_npy_header(bytes(mv[offset + start:offset + header_len]).decode("latin1"))
    except (ValueError, SyntaxError, TypeError) as e:
        raise LakeError(f"{where}: unreadable .npy header ({e})") from None
    if fortran:
        raise LakeError(f"{where}: Fortran-ordered array (not written by this project)")
    count = int(np.prod(shape, dtype=np.int64))
    if header_len + count * dtype.itemsize != size:
        raise LakeError(f"{where}: .npy header says {dtype}{shape}, which does not fill its {size} bytes")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset + header_len).reshape(shape)


def shard_gone(path: str, entry: ShardEntry) -> LakeError:
    """The one line for a shard a reader's manifest lists that is not there (any more).

    Every build of a set names its shards anew and deletes the old ones only once the new set is in place
    (ingest --overwrite, a repair), so a reader holding an older manifest finds its shards gone, never
    other bytes under their names: the set was replaced since it was opened. Or the set is damaged,
    when the manifest there now still lists the shard."""
    root = path[: -len(entry.path)].rstrip("/") if path.endswith(entry.path) else os.path.dirname(path)
    try:
        now = Manifest.from_json(storage.read_bytes(storage.join(root, MANIFEST_NAME)).decode("utf-8"))
        listed = any(e.path == entry.path and e.sha256 == entry.sha256 for e in now.shards)
    except (OSError, LakeError, UnicodeDecodeError):  # no manifest there now: being replaced
        listed = False
    if listed:
        return LakeError(f"{path}: missing, though the set's manifest lists it: the set is damaged; run `python -m "
                         "shards verify`, and re-run the ingest command that made it to repair it")
    return LakeError(f"{path}: gone: the shard set at {root} was replaced since this reader opened it; open it "
                     "again (restart the run) to read the new set")


def _map_file(path: str, local: str, entry: ShardEntry) -> mmap.mmap:
    """mmap a local copy of a shard after checking its size against the manifest (`path` names it in errors)."""
    try:
        size = os.path.getsize(local)
    except FileNotFoundError:
        raise shard_gone(path, entry) from None
    except OSError as e:
        raise LakeError(f"{path}: cannot open shard ({e.strerror})") from None
    if size != entry.bytes:
        raise LakeError(f"{path}: {size} bytes on disk, the manifest says {entry.bytes} "
                        "(truncated or replaced); run `python -m shards verify`")
    with open(local, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class ShardMap:
    """Blocks of one shard as dicts of arrays; views into a mmap (local or cached) or fetched bytes (URL)."""

    def __init__(self, path: str, entry: ShardEntry, members: tuple[str, ...] | None = None, cache=None,
                 repair: str = ""):
        """`repair`: what repairs the set, said when a member's bytes fail their checksum (lake.catalog.repair_hint)."""
        self.path, self.entry, self.repair = path, entry, repair
        self.members = members  # which members to load (None = all, meta included)
        self._mm = None
        self._cache = cache if storage.is_url(path) else None  # a shards.cache.ShardCache, or None
        self._views: dict[int, dict] = {}  # blocks of the mmap, parsed once: views cost nothing to keep
        if not storage.is_url(path):
            self._mm = _map_file(path, storage.local_path(path), entry)
        else:
            self._from_cache()

    def _from_cache(self) -> None:
        """Switch to the cached copy once the prefetcher has put it there (a stat per call until then)."""
        hit = self._cache.lookup(self.entry) if self._cache is not None else None
        if hit is not None:
            with contextlib.suppress(LakeError):  # evicted in between: keep reading ranges
                self._mm = _map_file(self.path, hit, self.entry)

    def _wanted(self, block: BlockEntry) -> list[str]:
        if self.members is None:
            return list(block.members)
        return [n for n in block.members if n in self.members]

    def block(self, index: int) -> dict:
        if self._mm is None and self._cache is not None:
            self._from_cache()
        if self._mm is None:
            try:
                return self._read(index)
            except FileNotFoundError:  # a ranged read of an object deleted since the set was opened
                raise shard_gone(self.path, self.entry) from None
        hit = self._views.get(index)
        if hit is None:  # parsing the .npy headers costs ~0.1 ms a block, more than the views are worth
            hit = self._views[index] = self._read(index)
        return hit

    def _check(self, entry: BlockEntry, name: str, data: memoryview, where: str) -> None:
        """A member's bytes against the checksum the manifest records (sets written before checksums: none).
        Once per member and process for a mapped shard (its views are kept), at every ranged read otherwise."""
        expected = entry.checksums.get(name)
        if expected is not None and checksum(data) != expected:
            raise LakeError(f"{where} {MEMBER_SUFFIX[name]}: its bytes differ from the checksum the manifest records "
                            f"(the shard is damaged); `python -m shards verify` lists all the damage"
                            + (f"; {self.repair}" if self.repair else ""))

    def _read(self, index: int) -> dict:
        entry = self.entry.blocks[index]
        where = f"{self.path} block {index}"
        out = {}
        for name in self._wanted(entry):
            offset, size = entry.members[name]
            if self._mm is not None:
                buf, off = self._mm, offset
            else:
                buf, off = storage.read_range(self.path, offset, offset + size), 0
            self._check(entry, name, memoryview(buf)[off:off + size], where)
            if name == META_MEMBER:
                try:
                    out[name] = json.loads(bytes(memoryview(buf)[off:off + size]).decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as e:
                    raise LakeError(f"{where} {MEMBER_SUFFIX[name]}: not readable JSON ({e}); run `python -m shards verify`") from None
            else:
                out[name] = npy_view(buf, off, size, where=f"{where} {MEMBER_SUFFIX[name]}")
        return out
