"""Re-running the ingest command on a finished set checks it, and repairs what it finds damaged.

The check is cheap by default (the manifest parses, every listed shard is there with its
recorded size, no unlisted shard, index.parquet is readable and agrees with the manifest's row
counts); `--check` also reads every shard in full (sha256, blocks, shapes: `python -m shards
verify`). What the repair does:

    index.parquet missing or wrong   rebuilt from the shards' meta.json and label.npy
    manifest.json unreadable         rebuilt by reading the shards present (offsets, sizes, sha256)
                                     under the plan of the command being re-run
    a shard missing, cut or altered  deleted; its clips are ingested again (the source is read
                                     again, skipping every clip the intact shards hold)
    a shard nobody lists             deleted

It works by turning the set back into an unfinished one whose committed work is the intact
part (a journal that lists the intact shards), so the normal resume and merge finish it: one
path for "killed mid-run" and "damaged later".
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lake import storage
from lake.blocks import (META_MEMBER, MEMBER_SUFFIX, SHARD_NAME_FORMAT, SHARD_SUFFIX, SHARDS_DIR, checksum, member_of,
                         parse_shard_name)
from lake.catalog import ShardSet
from lake.errors import LakeError
from lake.schema import MANIFEST_NAME, QUARANTINE_NAME, BlockEntry, Manifest, ShardEntry
from ingest.write.journal import Journal
from ingest.write.output import WORK_DIR, SetOutput
from ingest.write.plan import write_plan
from shards.format import TMP_SUFFIX, HashingFile, decode_member, iter_tar_blocks
from shards.verify import check_index, check_shard
from shards.writer import index_rows


@dataclass
class Findings:
    manifest: Manifest | None
    problems: list[str] = field(default_factory=list)  # one line each, for the user
    damaged: dict[str, str] = field(default_factory=dict)  # shard path -> why
    unlisted: list[str] = field(default_factory=list)
    index_ok: bool = True

    @property
    def sound(self) -> bool:
        return self.manifest is not None and not self.damaged and not self.unlisted and self.index_ok


def inspect_set(out: SetOutput, deep: bool = False) -> Findings:
    """What is wrong with the finished set at `out` (cheap checks; `deep`: every shard read and hashed)."""
    try:
        manifest = Manifest.from_json(out.read_text(MANIFEST_NAME), where=out.path(MANIFEST_NAME))
    except (LakeError, UnicodeDecodeError) as e:
        return Findings(manifest=None, problems=[str(e)], index_ok=False)
    found = Findings(manifest=manifest)
    shards = ShardSet(root=out.root, manifest=manifest)
    present = set(out.shard_names())
    for entry in manifest.shards:
        if entry.name not in present:
            found.damaged[entry.path] = "missing"
        elif storage.size(shards.shard_path(entry)) != entry.bytes:
            found.damaged[entry.path] = f"{storage.size(shards.shard_path(entry))} bytes, the manifest says {entry.bytes}"
    if deep:
        todo = [e for e in manifest.shards if e.path not in found.damaged]
        with ThreadPoolExecutor(4) as pool:
            for entry, rep in zip(todo, pool.map(lambda e: check_shard(shards, e), todo)):
                if rep.problems:
                    found.damaged[entry.path] = rep.problems[0].split(": ", 1)[-1]
    listed = {e.name for e in manifest.shards}
    found.unlisted = [f"{SHARDS_DIR}/{n}" for n in sorted(present - listed) if n.endswith((SHARD_SUFFIX, TMP_SUFFIX))]
    found.problems += [f"{out.path(p)}: {why}" for p, why in sorted(found.damaged.items())]
    found.problems += [f"{out.path(p)}: not listed in the manifest" for p in found.unlisted]
    index_problems = check_index(shards, {})
    found.index_ok = not index_problems
    found.problems += index_problems
    return found


def scan_shard(out: SetOutput, relpath: str, taxonomy: list[str]) -> tuple[ShardEntry, list[dict]]:
    """A shard's manifest entry and index rows, from the tar itself (one sequential read)."""
    path = out.path(relpath)
    name = parse_shard_name(relpath)
    if name is None:
        raise LakeError(f"{path}: not a shard name of this format ({SHARD_NAME_FORMAT})")
    meta_file, label_file = MEMBER_SUFFIX[META_MEMBER], MEMBER_SUFFIX["label"]
    blocks, rows = [], []
    with storage.open_file(path, "rb") as raw:
        reader = HashingFile(raw)
        for b, (_, members) in enumerate(iter_tar_blocks(reader, path)):
            try:
                meta = json.loads(members[meta_file][1].decode("utf-8"))
                labels = decode_member(label_file, members[label_file][1])[1]
            except (KeyError, ValueError, UnicodeDecodeError) as e:
                raise LakeError(f"{path}: block {b} cannot be read ({type(e).__name__}: {e})") from None
            blocks.append(BlockEntry(rows=len(labels), members={member_of(s): [off, len(data)]
                                                                for s, (off, data) in members.items()},
                                     checksums={member_of(s): checksum(data) for s, (_, data) in members.items()}))
            rows += index_rows(relpath, name.split, b, {"label": labels, META_MEMBER: meta}, taxonomy)
        reader.drain()
    entry = ShardEntry(path=relpath, split=name.split, rows=len(rows), bytes=reader.bytes, sha256=reader.hexdigest(),
                       blocks=blocks)
    return entry, rows


def _rows_from_index(out: SetOutput, manifest: Manifest) -> dict[str, list[dict]]:
    table = ShardSet(root=out.root, manifest=manifest).index.to_pylist()
    by_shard: dict[str, list[dict]] = {}
    for r in table:
        by_shard.setdefault(r["shard"], []).append(r)
    return by_shard


def reopen(out: SetOutput, plan: dict, found: Findings) -> tuple[list[str], bool]:
    """Make the damaged finished set an unfinished one holding its intact shards; returns what was done
    (one line each) and whether clips must be ingested again (the source is then read in full)."""
    done, rows_of, entries = [], {}, []
    if found.manifest is not None:
        entries = [e for e in found.manifest.shards if e.path not in found.damaged]
        if found.index_ok:
            rows_of = _rows_from_index(out, found.manifest)
    candidates = [e.path for e in entries] if found.manifest is not None else \
        [f"{SHARDS_DIR}/{n}" for n in out.shard_names() if n.endswith(SHARD_SUFFIX)]
    listed = {e.path: e for e in entries}
    kept = []
    for relpath in candidates:
        if relpath in rows_of:
            kept.append((listed[relpath], rows_of[relpath]))
            continue
        try:
            kept.append(scan_shard(out, relpath, plan["taxonomy"]))
        except LakeError as e:
            found.damaged[relpath] = str(e).split(": ", 1)[-1]
    if found.manifest is None:
        done.append(f"manifest.json: rebuilt from the {len(kept)} readable shard(s)")
    elif not found.index_ok:
        done.append(f"index.parquet: rebuilt from the meta of {len(kept)} shard(s)")
    for relpath in sorted(set(found.damaged) | set(found.unlisted)):
        out.remove(relpath)
    lost = sum(e.rows for e in (found.manifest.shards if found.manifest else []) if e.path in found.damaged)
    if found.damaged:
        done.append(f"{len(found.damaged)} damaged shard(s) deleted ({', '.join(sorted(found.damaged)[:3])}"
                    + (", ..." if len(found.damaged) > 3 else "") + f"): their {lost or 'unknown'} clip(s) are "
                    "ingested again")
    if found.unlisted:
        done.append(f"{len(found.unlisted)} shard(s) no manifest lists deleted")
    quarantine = []
    try:
        text = out.read_text(QUARANTINE_NAME)
        quarantine = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        pass
    out.remove_tree(WORK_DIR)
    write_plan(out, plan)
    journal = Journal(out, "repair")
    for entry, rows in kept:
        journal.adopt(entry, rows)
    if quarantine and not found.damaged:
        journal.append({"type": "quarantine", "records": quarantine})
    journal.close()
    out.remove(MANIFEST_NAME)  # the set is unfinished until the merge writes it again
    return done, bool(found.damaged) or found.manifest is None
