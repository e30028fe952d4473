"""Write and read one shard of format v1.

A shard is a plain tar of blocks; a block holds up to ~1024 clips as a handful of
members (`<block>.audio.npy`, `.text.npy`, `.caption.npy`, `.label.npy`,
`.meta.json`: lake.blocks owns the names, dtypes and meta keys), so a tar header and an
npy header are paid per block, not per clip. `.npy` keeps each member readable with numpy alone.

The writer records every member's [offset, size] inside the tar. Two readers, for two
purposes: `shards.mapped` views the arrays in place at those offsets (random access: the
loader); `iter_tar_blocks` here reads a tar front to back with no manifest at all (verify
checks the offsets and hashes in the same pass; a damaged set's index and manifest are
rebuilt from it). A shard is written to `<name>.tmp` and renamed when complete, so a
reader never sees a partial shard.

Python form of a block (what the writer takes and the readers return):
    {"audio": float16 [n, L, Da], "text": float16 [n, Dt], "caption": float16 [n, Dt]
     (optional), "label": int16 [n], "meta": {"keys": [...], "durations": [...], ...}}
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from typing import Any, Iterator

import numpy as np

from lake import storage
from lake.blocks import (ARRAY_MEMBERS, MEMBER_SUFFIX, META_LISTS, META_MEMBER, block_name, checksum, member_file,
                         member_of, split_member_file)
from lake.errors import LakeError, about
from lake.schema import BlockEntry, ShardEntry
from shards.mapped import npy_view  # numpy's own .npy header parser is not thread-safe on Python 3.11

Block = dict[str, Any]

TMP_SUFFIX = ".tmp"


def block_rows(block: Block) -> int:
    return int(len(block["label"]))


def check_block(block: Block) -> int:
    """Rows of a block, after checking that its members agree with each other."""
    n = block_rows(block)
    for name, member in ARRAY_MEMBERS.items():
        if name not in block:
            if member.optional:
                continue
            raise ValueError(f"block lacks member {name!r}")
        arr, dtype, ndim = block[name], member.dtype, member.ndim
        if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(dtype) or arr.ndim != ndim or len(arr) != n:
            got = f"{getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}"
            raise ValueError(f"block member {name!r}: expected {dtype} with {ndim} dims and {n} rows, got {got}")
    meta = block.get(META_MEMBER)
    if not isinstance(meta, dict):
        raise ValueError("block lacks its meta dict")
    for k in META_LISTS:
        if len(meta.get(k, ())) != n:
            raise ValueError(f"block meta {k!r}: expected {n} entries, got {len(meta.get(k, ()))}")
    return n


def encode_member(name: str, value: Any) -> bytes:
    if name == META_MEMBER:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
    return buf.getvalue()


def decode_member(suffix: str, data: bytes) -> tuple[str, Any]:
    """('audio', array) for 'audio.npy', ('meta', dict) for 'meta.json'."""
    name = member_of(suffix)
    if suffix == MEMBER_SUFFIX[META_MEMBER]:
        return name, json.loads(data.decode("utf-8"))
    return name, npy_view(data, 0, len(data), where=suffix)


class HashingFile:
    """A file wrapper that sha256-hashes and counts every byte written or read through it (one pass both
    writes or parses a shard and checksums it); f=None: hash only."""

    def __init__(self, f=None):
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.f.write(data) if self.f is not None else len(data)

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        return data

    def tell(self) -> int:
        return self.bytes

    def drain(self) -> None:
        """Read (and hash) whatever is left."""
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def copy_stream(src, dst=None, chunk: int = 8 << 20, on_bytes=None) -> HashingFile:
    """Copy the readable `src` into `dst` (None: nowhere), hashing on the way; returns the hasher.

    One pass both moves a shard and checks it against the manifest's sha256
    (`shards.cache` downloads, `shards.copy` transfers).
    """
    out = HashingFile(dst)
    while True:
        data = src.read(chunk)
        if not data:
            return out
        out.write(data)
        if on_bytes is not None:
            on_bytes(len(data))


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # fixed owner, mode and mtime: the same rows give byte-identical shards
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Append blocks to one shard; `close()` renames it into place and returns its entry.

    `root` is the shard set's directory (local), `relpath` like `shards/train-0000-000001.tar`.
    """

    def __init__(self, root: str, relpath: str, split: str):
        if storage.is_url(root):  # ingest builds each shard in a local staging folder and uploads it itself
            raise LakeError(f"{root}: shards are written to a local or mounted directory; write the set there, "
                            "then `python -m shards cp` it to the object store")
        self.relpath, self.split = relpath, split
        self.final = os.path.join(storage.local_path(root), relpath)
        self.tmp = self.final + TMP_SUFFIX
        os.makedirs(os.path.dirname(self.final), exist_ok=True)
        self._file = open(self.tmp, "wb")
        self._hash = HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hash, mode="w", format=tarfile.USTAR_FORMAT)
        self.blocks: list[BlockEntry] = []
        self.rows = 0

    def add_block(self, block: Block) -> int:
        """Write one block; returns its index within the shard."""
        with about(self.tmp):
            return self._add_block(block)

    def _add_block(self, block: Block) -> int:
        n = check_block(block)
        index = len(self.blocks)
        members: dict[str, list[int]] = {}
        sums: dict[str, int] = {}
        for name in MEMBER_SUFFIX:
            if name not in block:
                continue
            data = encode_member(name, block[name])
            self._tar.addfile(_tarinfo(member_file(block_name(index), name), len(data)), io.BytesIO(data))
            # after addfile the tar offset sits past the data padded to 512 bytes
            padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            members[name] = [self._tar.offset - padded, len(data)]
            sums[name] = checksum(data)
        self.blocks.append(BlockEntry(rows=n, members=members, checksums=sums))
        self.rows += n
        return index

    def close(self) -> ShardEntry:
        """Finish the tar, fsync, rename into place. The shard is visible only from here on."""
        with about(self.tmp):
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp, self.final)
        return ShardEntry(path=self.relpath, split=self.split, rows=self.rows, bytes=self._hash.bytes,
                          sha256=self._hash.sha.hexdigest(), blocks=self.blocks)

    def abort(self) -> None:
        """Drop the partial shard (the temporary file); nothing visible changes. Never raises: it runs
        after a failure (a full disk fails the close's flush too), which must stay the error reported."""
        for step in (self._file.close, lambda: os.path.exists(self.tmp) and os.remove(self.tmp)):
            try:
                step()
            except OSError:
                pass


def iter_tar_blocks(f, where: str) -> Iterator[tuple[str, dict[str, tuple[int, bytes]]]]:
    """Sequential read of an open shard file: (block name, {suffix: (data offset, member bytes)}) per block.

    Needs no manifest. A damaged tar raises LakeError naming `where` (the blocks before the damage
    have been yielded).
    """
    current, members = None, {}
    try:
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                prefix, suffix = split_member_file(info.name)
                if prefix != current:
                    if current is not None:
                        yield current, members
                    current, members = prefix, {}
                if suffix in members:
                    raise LakeError(f"{where}: member {info.name} appears twice")
                data = tar.extractfile(info).read() if info.isreg() else b""
                members[suffix] = (info.offset_data, data)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise LakeError(f"{where}: damaged tar ({type(e).__name__}: {e})") from None
    if current is not None:
        yield current, members


def decode_block(members: dict[str, tuple[int, bytes]], where: str = "") -> Block:
    block: Block = {}
    for suffix, (_, data) in members.items():
        try:
            name, value = decode_member(suffix, data)
        except (ValueError, json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise LakeError(f"{where}: member {suffix} cannot be decoded ({e})") from None
        block[name] = value
    return block


def iter_shard(path: str) -> Iterator[Block]:
    """Decoded blocks of one shard (a local path or any URL fsspec opens), in order."""
    with storage.open_file(path, "rb") as f:
        for name, members in iter_tar_blocks(f, path):
            yield decode_block(members, where=f"{path} block {name}")
