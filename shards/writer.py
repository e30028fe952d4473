"""Writing a whole shard set: rotating per-split shard writers, the index, the manifest.

`RotatingWriter` keeps one open shard per split, starts a new one after
`rows_per_shard` rows, and hands each finished shard's manifest entry and index
rows to `on_complete` (ingest journals them; `SetWriter` keeps them in memory).
`finalize_set` writes index.parquet, quarantine.jsonl and, last, manifest.json,
each atomically: a set is complete exactly when its manifest lists its shards.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Callable, Iterable

from lake import storage
from lake.blocks import DURATIONS, KEYS, META_MEMBER, SOURCE_URIS, TRANSCRIPTS, shard_relpath
from lake.schema import (INDEX_COLUMNS, INDEX_NAME, MANIFEST_NAME, QUARANTINE_NAME, Manifest, ShardEntry, index_schema,
                         split_summary)
from shards.format import Block, ShardWriter

OnComplete = Callable[[ShardEntry, list[dict]], None]


def index_rows(shard: str, split: str, block_index: int, block: Block, taxonomy: list[str]) -> list[dict]:
    """The index.parquet rows of one block (`shard` is the shard's path in the set)."""
    meta = block[META_MEMBER]
    return [
        {
            "key": meta[KEYS][i],
            "split": split,
            "label_id": int(label),
            "label": taxonomy[int(label)] if 0 <= int(label) < len(taxonomy) else "",
            "duration_s": float(meta[DURATIONS][i]),
            "transcript": meta[TRANSCRIPTS][i],
            "source_uri": meta[SOURCE_URIS][i],
            "shard": shard,
            "block": block_index,
            "row": i,
        }
        for i, label in enumerate(block["label"].tolist())
    ]


class RotatingWriter:
    """One open shard per split; a new shard after `rows_per_shard` rows (block-granular). `build`: the
    build id its shard names carry (lake.blocks.new_build_id; "" for none)."""

    def __init__(self, root: str, taxonomy: list[str], on_complete: OnComplete, worker: int = 0,
                 rows_per_shard: int = 16384, next_seq: dict[str, int] | None = None, build: str = ""):
        self.root, self.taxonomy, self.on_complete = root, taxonomy, on_complete
        self.worker, self.rows_per_shard, self.build = worker, rows_per_shard, build
        self.next_seq = dict(next_seq or {})
        self._open: dict[str, tuple[ShardWriter, list[dict]]] = {}

    def add_block(self, split: str, block: Block) -> str:
        """Write a block to the split's open shard; returns that shard's path in the set."""
        if split not in self._open:
            seq = self.next_seq.get(split, 0)
            self.next_seq[split] = seq + 1
            self._open[split] = (ShardWriter(self.root, shard_relpath(split, self.worker, seq, self.build), split), [])
        writer, rows = self._open[split]
        b = writer.add_block(block)
        rows.extend(index_rows(writer.relpath, split, b, block, self.taxonomy))
        if writer.rows >= self.rows_per_shard:
            self.close_split(split)
        return writer.relpath

    def close_split(self, split: str) -> None:
        writer, rows = self._open.pop(split)
        self.on_complete(writer.close(), rows)

    def close(self) -> None:
        for split in list(self._open):
            self.close_split(split)

    def abort(self) -> None:
        for writer, _ in self._open.values():
            writer.abort()
        self._open.clear()


def index_table(rows):
    """Index rows (dicts, or a pyarrow Table) as the index schema, sorted by (shard, block, row)."""
    import pyarrow as pa

    if isinstance(rows, pa.Table):
        table = rows.select(list(INDEX_COLUMNS)).cast(index_schema())
    else:
        rows = list(rows)
        table = pa.Table.from_pydict({c: [r[c] for r in rows] for c in INDEX_COLUMNS}, schema=index_schema())
    return table.sort_by([("shard", "ascending"), ("block", "ascending"), ("row", "ascending")])


def index_bytes(rows) -> bytes:
    """index.parquet (or a journal's rows sidecar) as bytes: zstd parquet of `index_table(rows)`."""
    return _parquet_bytes(index_table(rows))


def _parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_index(root: str, rows: Iterable[dict]) -> int:
    """The set's index.parquet (atomically, local or behind a URL); returns the row count."""
    table = index_table(rows)
    storage.write_bytes_atomic(storage.join(root, INDEX_NAME), _parquet_bytes(table))
    return table.num_rows


def write_quarantine(root: str, records: Iterable[dict]) -> int:
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records]
    storage.write_bytes_atomic(storage.join(root, QUARANTINE_NAME),
                               ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    return len(lines)


def finalize_set(root: str, manifest: Manifest, index: Iterable[dict], quarantine: Iterable[dict] = ()) -> Manifest:
    """Write index, quarantine, then the manifest (the commit point of a set)."""
    manifest.shards = sorted(manifest.shards, key=lambda s: s.path)
    manifest.splits = split_summary(manifest.shards)
    if not manifest.created_at:
        manifest.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_index(root, index)
    write_quarantine(root, quarantine)
    storage.write_bytes_atomic(storage.join(root, MANIFEST_NAME), manifest.to_json().encode("utf-8"))
    return manifest


class SetWriter:
    """A whole shard set from one process: blocks in, a finished set out (tests, benchmarks, tools).

    Ingest uses `RotatingWriter` directly, with a journal, so that a killed run resumes.
    """

    def __init__(self, root: str, manifest: Manifest, rows_per_shard: int = 16384, worker: int = 0, build: str = ""):
        self.root, self.manifest = root, manifest
        self._index: list[dict] = []
        self._rot = RotatingWriter(root, manifest.taxonomy, self._done, worker, rows_per_shard, build=build)

    def _done(self, entry: ShardEntry, rows: list[dict]) -> None:
        self.manifest.shards.append(entry)
        self._index.extend(rows)

    def add_block(self, split: str, block: Block) -> None:
        self._rot.add_block(split, block)

    def close(self) -> Manifest:
        self._rot.close()
        return finalize_set(self.root, self.manifest, self._index)
