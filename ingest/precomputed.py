"""Import rows that arrive already encoded (the reference's parquet) into a shard set.

    source.read_rows(file) --(RowBatch: fp16 vectors, keys, labels)--> BlockPacker (per split)
        --> the write path (ingest.write.commit.RankCommit) --> merge_set

The same commit protocol and the same bookkeeping (ingest.write.ledger) as a normal ingest:
units are files, cut into segments of about `checkpoint_mb`; at a segment's end every open
shard is closed and its files are journalled done. A killed import re-run with the same command
skips finished files and the keys already in committed shards; the finished set has the same
rows either way. Several ranks (torchrun) share the files.
"""

from __future__ import annotations

from contextlib import contextmanager

from lake.blocks import row_meta
from ingest.sources.base import Unit
from ingest.write.ledger import Ledger
from ingest.write.packer import BlockPacker


class PrecomputedWorker:
    """One rank of an import: no decoding, no encoders: each segment's rows are packed as they arrive.
    `preempted` (lake.signals): when set, reading stops at a batch boundary."""

    def __init__(self, source, ledger: Ledger, preempted=None):
        self.source, self.ledger, self.preempted = source, ledger, preempted

    @contextmanager
    def processor(self):
        def process(seg: list[Unit], packer: BlockPacker) -> None:
            for unit in seg:
                self._import(unit, packer)

        yield process

    def _import(self, unit: Unit, packer: BlockPacker) -> None:
        """Pack one file's rows, counting them as read from it (what --limit counts)."""
        ledger = self.ledger
        if ledger.full:
            return  # excluded by --limit: journalled as done with 0 rows
        for batch in self.source.read_rows(unit):
            if self.preempted:
                return
            for skip in batch.skips:
                ledger.skipped(skip.key, skip.reason, skip.source_uri, self.source.split_policy.split_of(skip))
            for i, key in enumerate(batch.keys):
                if ledger.full:
                    return
                split = batch.splits[i] or self.source.split_policy.split_of_key(key)
                if not ledger.take(unit.id, key, batch.source_uris[i], split):
                    continue
                meta = row_meta(key, 0.0, batch.transcripts[i], batch.source_uris[i],  # the parquet has no durations
                                extra={"file": unit.id, "row": batch.rows[i]})
                # copies: a view would keep the whole batch alive until the rarer splits fill a block
                packer.add(split, batch.audio[i].copy(), batch.text[i].copy(), None, int(batch.labels[i]), meta)
                ledger.packed()
