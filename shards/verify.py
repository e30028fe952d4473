"""Check a shard set against its manifest: hashes, row counts, block shapes, the index.

`verify_set` returns every problem it finds (one line each, naming the file),
not just the first: a user fixing a damaged set wants the whole list at once.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lake import storage
from lake.blocks import (ARRAY_MEMBERS, KEYS, MEMBER_SUFFIX, META_LISTS, META_MEMBER, SHARD_SUFFIX, SHARDS_DIR, checksum,
                         member_of)
from lake.catalog import ShardSet, open_shard_set, repair_hint
from lake.errors import LakeError
from lake.schema import INDEX_COLUMNS, INDEX_NAME, ShardEntry
from shards.format import TMP_SUFFIX, HashingFile, decode_member, iter_tar_blocks

META_FILE = MEMBER_SUFFIX[META_MEMBER]


@dataclass
class ShardReport:
    """What one pass over one shard found."""

    path: str
    problems: list[str] = field(default_factory=list)
    keys: dict[tuple[int, int], str] = field(default_factory=dict)  # (block, row) -> key


def check_shard(shards: ShardSet, entry: ShardEntry) -> ShardReport:
    """One sequential pass over one shard: its bytes against the manifest entry, then every block."""
    path = shards.shard_path(entry)
    rep = ShardReport(path=path)
    if not storage.exists(path):
        rep.problems.append(f"{path}: missing (listed in the manifest with {entry.rows} rows)")
        return rep
    size = storage.size(path)
    if size != entry.bytes:
        rep.problems.append(f"{path}: {size} bytes, the manifest says {entry.bytes} (truncated or replaced)")
    blocks = _read_tar(path, entry, rep.problems.append)
    rows = sum(_check_block(shards.manifest, entry, b, name, members, rep) for b, (name, members) in enumerate(blocks))
    _check_row_count(path, rows, entry, rep)
    return rep


def _read_tar(path: str, entry: ShardEntry, bad) -> list[tuple[str, dict]]:
    """Read and hash the whole tar: (block name, its members) in tar order, each block once."""
    blocks: dict[str, dict] = {}
    with storage.open_file(path, "rb") as raw:
        reader = HashingFile(raw)
        try:
            for name, members in iter_tar_blocks(reader, path):
                if name in blocks:
                    bad(f"{path}: block {name} appears twice")
                    continue
                blocks[name] = members
        except LakeError as e:
            bad(str(e))
        reader.drain()
    if reader.hexdigest() != entry.sha256:
        bad(f"{path}: sha256 differs from the manifest (altered or truncated)")
    if len(blocks) != len(entry.blocks):
        bad(f"{path}: {len(blocks)} blocks in the tar, the manifest lists {len(entry.blocks)}")
    return list(blocks.items())


def _check_block(m, entry: ShardEntry, b: int, name: str, members: dict, rep: ShardReport) -> int:
    """Check the `b`-th block of the shard; returns its rows (0 when no array member could be read)."""
    where = f"{rep.path} block {name}"
    bad = rep.problems.append
    wanted = {MEMBER_SUFFIX[f] for f in m.fields} | {META_FILE}
    if set(members) != wanted:
        missing, extra = sorted(wanted - set(members)), sorted(set(members) - wanted)
        bad(f"{where}: members differ from the manifest's fields"
            + (f"; missing {', '.join(missing)}" if missing else "") + (f"; unexpected {', '.join(extra)}" if extra else ""))
    block_entry = entry.blocks[b] if b < len(entry.blocks) else None
    lens: dict[str, int] = {}
    for suffix, (offset, data) in sorted(members.items()):
        n = _check_member(m, where, suffix, offset, data, block_entry, bad)
        if n is not None:
            lens[suffix] = n
    if not lens:
        return 0
    n = lens.get(MEMBER_SUFFIX["label"], max(lens.values()))
    if len(set(lens.values())) > 1:
        bad(f"{where}: members disagree on the row count ({lens})")
    if block_entry is not None and block_entry.rows != n:
        bad(f"{where}: {n} rows, the manifest says {block_entry.rows}")
    _check_meta_lists(where, members.get(META_FILE), n, b, rep)
    return n


def _check_member(m, where: str, suffix: str, offset: int, data: bytes, block_entry, bad) -> int | None:
    """Check one tar member (decodes, sits where the manifest says, dtype and shape); the rows of an
    array member, None for the meta or an unreadable member."""
    member = member_of(suffix)
    try:
        _, value = decode_member(suffix, data)
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        bad(f"{where}: {suffix} cannot be decoded ({e})")
        return None
    if block_entry is not None and member in block_entry.members:
        if block_entry.members[member] != [offset, len(data)]:
            bad(f"{where}: {suffix} at [{offset}, {len(data)}], the manifest says {block_entry.members[member]}")
        if member in block_entry.checksums and checksum(data) != block_entry.checksums[member]:
            bad(f"{where}: {suffix}: its bytes differ from the checksum the manifest records")
    if member == META_MEMBER:
        if not isinstance(value, dict):
            bad(f"{where}: {META_FILE} is not a JSON object")
            return None
        for k in META_LISTS:
            if not isinstance(value.get(k), list):
                bad(f"{where}: {META_FILE} lacks the list {k!r}")
        return None
    if member not in ARRAY_MEMBERS:
        return None
    dtype = ARRAY_MEMBERS[member].dtype
    rows = len(value) if value.ndim else 0
    expected = m.expected_shape(member, rows)
    if value.dtype != np.dtype(dtype) or value.shape != expected:
        bad(f"{where}: {suffix} is {value.dtype}{list(value.shape)}, the manifest implies {dtype}{list(expected)}")
    if member == "label" and value.size and (value.min() < 0 or value.max() >= m.num_classes):
        bad(f"{where}: label ids outside 0..{m.num_classes - 1} (the taxonomy's range)")
    return rows


def _check_meta_lists(where: str, meta_pair, n: int, b: int, rep: ShardReport) -> None:
    """Every per-row meta list holds `n` entries; the block's keys are kept for the index check."""
    if meta_pair is None:
        return
    try:
        meta = json.loads(meta_pair[1].decode("utf-8"))
        for k in META_LISTS:
            if isinstance(meta.get(k), list) and len(meta[k]) != n:
                rep.problems.append(f"{where}: {META_FILE} {k!r} has {len(meta[k])} entries for {n} rows")
        for r, key in enumerate(meta.get(KEYS, [])[:n]):
            rep.keys[(b, r)] = key
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        pass  # reported by _check_member


def _check_row_count(path: str, rows: int, entry: ShardEntry, rep: ShardReport) -> None:
    if rows != entry.rows and not rep.problems:
        rep.problems.append(f"{path}: {rows} rows in the tar, the manifest says {entry.rows}")
    elif rows != entry.rows:
        rep.problems.append(f"{path}: {rows} readable rows, the manifest says {entry.rows}")


def check_index(shards: ShardSet, reports: dict[str, ShardReport]) -> list[str]:
    problems: list[str] = []
    try:
        table = shards.index
    except LakeError as e:
        return [str(e)]
    where = shards.path(INDEX_NAME)
    missing = [c for c in INDEX_COLUMNS if c not in table.column_names]
    if missing:
        return [f"{where}: lacks column(s) {', '.join(missing)}"]
    cols = table.select(["key", "split", "shard", "block", "row"]).to_pydict()
    counts = Counter(cols["key"])
    dups = [k for k, c in counts.items() if c > 1]
    if dups:
        problems.append(f"{where}: {len(dups)} key(s) appear more than once, e.g. {', '.join(dups[:5])}")
    by_path = {s.path: s for s in shards.manifest.shards}
    per_shard = Counter(cols["shard"])
    for path, entry in by_path.items():
        if per_shard.get(path, 0) != entry.rows:
            problems.append(f"{where}: {per_shard.get(path, 0)} rows point into {path}, which holds {entry.rows}")
    unknown = sorted(set(per_shard) - set(by_path))
    if unknown:
        problems.append(f"{where}: rows point into shard(s) not in the manifest: {', '.join(unknown[:5])}")
    wrong_split: Counter = Counter()
    wrong_key: Counter = Counter()
    for key, split, shard, block, row in zip(cols["key"], cols["split"], cols["shard"], cols["block"], cols["row"]):
        entry = by_path.get(shard)
        if entry is None:
            continue
        if split != entry.split:
            wrong_split[shard] += 1
        rep = reports.get(shard)
        if rep is not None and not rep.problems and rep.keys.get((block, row)) != key:
            wrong_key[shard] += 1
    for shard, n in sorted(wrong_split.items()):
        problems.append(f"{where}: {n} row(s) pointing into {shard} name a split other than {by_path[shard].split!r}")
    for shard, n in sorted(wrong_key.items()):
        problems.append(f"{where}: {n} row(s) point into {shard} at a (block, row) holding another key")
    listed = {(s, b, r) for s, b, r in zip(cols["shard"], cols["block"], cols["row"])}
    for shard, rep in reports.items():
        if rep.problems:
            continue  # a damaged shard is reported once, by its own checks
        absent = [k for (b, r), k in rep.keys.items() if (shard, b, r) not in listed]
        if absent:
            problems.append(f"{where}: {len(absent)} clip(s) of {shard} are not in the index, e.g. {', '.join(absent[:3])}")
    return problems


def verify_set(root: str, workers: int = 4, progress: bool = False) -> tuple[list[str], list[str], dict]:
    """(problems, warnings, summary) for the shard set at root. No problems = the set is sound."""
    try:
        shards = open_shard_set(root)
    except LakeError as e:
        return [str(e)], [], {}
    m = shards.manifest
    total_bytes = sum(s.bytes for s in m.shards)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="verify", leave=False)

    def run(entry):
        rep = check_shard(shards, entry)
        if bar is not None:
            bar.update(entry.bytes)
        return rep

    with ThreadPoolExecutor(max(1, workers)) as pool:
        reports = list(pool.map(run, m.shards))
    if bar is not None:
        bar.close()
    problems = [p for r in reports for p in r.problems]
    problems += check_index(shards, {e.path: r for e, r in zip(m.shards, reports)})
    warnings: list[str] = []
    shard_dir = shards.path(SHARDS_DIR)
    listed = {s.name for s in m.shards}
    if storage.exists(shard_dir):
        for name in storage.listdir(shard_dir):
            if name.endswith(TMP_SUFFIX):
                warnings.append(f"{storage.join(shard_dir, name)}: unfinished temporary shard (left by an interrupted ingest)")
            elif name.endswith(SHARD_SUFFIX) and name not in listed:
                problems.append(f"{storage.join(shard_dir, name)}: shard not listed in the manifest")
    summary = {"shards": len(m.shards), "rows": sum(s.rows for s in m.shards), "bytes": total_bytes,
               "bad_shards": len({r.path for r in reports if r.problems}), "repair": repair_hint(m, shards.root)}
    return problems, warnings, summary
