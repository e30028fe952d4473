"""Rank 0, after every rank has finished: journals -> manifest, index.parquet, quarantine.jsonl.

The merged set lists exactly the journalled shards; anything else under shards/
(leftovers of killed runs, of ranks that no longer exist) is removed, then the
work directory. The manifest is written last: a set is complete when it exists.
"""

from __future__ import annotations

from collections import Counter

from lake import storage
from lake.blocks import SHARDS_DIR
from lake.catalog import ShardSet
from lake.errors import LakeError
from lake.schema import Manifest
from lake.schema import reason_category
from ingest.write.journal import read_journals, rows_relpath
from ingest.write.output import WORK_DIR, SetOutput
from shards.stats import standardization_stats
from shards.writer import finalize_set


def _repeated(keys: list[str]) -> set[str]:
    return {k for k, n in Counter(keys).items() if n > 1}


def merge_set(out: SetOutput, plan: dict, all_units: list[str], settings: dict) -> Manifest:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = out.root
    state = read_journals(out)
    unfinished = sorted(set(all_units) - set(state.units_done))
    if unfinished:
        raise LakeError(f"{root}: {len(unfinished)} source unit(s) not finished (e.g. {unfinished[0]}): a rank "
                        "stopped early; re-run the same command to resume")
    entries = sorted(state.shards.values(), key=lambda e: e.path)
    tables = [pq.read_table(pa.BufferReader(storage.read_bytes(out.path(rows_relpath(e.path))))) for e in entries]
    index = pa.concat_tables(tables) if tables else None
    keys = index.column("key").to_pylist() if index is not None else []
    committed = set(keys)
    if len(committed) != len(keys):  # each rank never commits a key twice; two ranks sharing one is a source bug
        twice = sorted(_repeated(keys))[:5]
        raise LakeError(f"{root}: the same key was committed by two shards ({', '.join(twice)}); the source gives two "
                        "clips one key. Report it; re-run with --overwrite once the source is fixed")
    if not committed:
        reasons = sorted({reason_category(r["reason"]) for r in state.quarantine})
        raise LakeError(f"{root}: no clip could be used ({len(state.quarantine)} skipped"
                        + (f": {', '.join(reasons[:6])}" if reasons else "") + "); nothing was written as a set. "
                        f"The reasons per clip are in {out.work()}/journal-*; fix the input and re-run")
    # one record per clip: a clip retried after a kill is recorded once; one that later succeeded not at all
    quarantine = {}
    for rec in state.quarantine:
        if rec["key"] not in committed:
            quarantine[(rec["key"], rec["stage"])] = rec
    listed = {e.name for e in entries}
    for name in out.shard_names():
        if name not in listed:
            out.remove(f"{SHARDS_DIR}/{name}")
    manifest = Manifest(
        name=plan["name"], source=plan["source"], encoders=plan["encoders"], taxonomy=plan["taxonomy"],
        fields=plan["fields"], shards=entries, ingest={"plan": plan, "settings": settings},
    )
    manifest.feature_stats = standardization_stats(ShardSet(root, manifest))  # before the manifest is written
    finalize_set(root, manifest, index if index is not None else [], sorted(quarantine.values(), key=lambda r: r["key"]))
    out.remove_tree(WORK_DIR)
    return manifest
