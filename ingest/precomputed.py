"""Import rows that arrive already encoded (the reference's parquet) into a shard set.

    source.read_rows(file) --(RowBatch: fp16 vectors, keys, labels)--> BlockPacker (per split)
        --> BackgroundWriter --> shards + journal --> merge_set

The same commit protocol as a normal ingest (ingest.pipeline.RankWorker, whose setup and
bookkeeping this reuses): units are files, cut into segments of about `checkpoint_mb`; at a
segment's end every open shard is closed and its files are journalled done. A killed import
re-run with the same command skips finished files and the keys already in committed shards;
the finished set has the same rows either way. Several ranks (torchrun) share the files.
"""

from __future__ import annotations

from contextlib import contextmanager

from ingest.packer import BlockPacker
from ingest.pipeline import RankWorker
from ingest.sources.base import Unit


class PrecomputedWorker(RankWorker):
    """One rank of an import: RankWorker's commit protocol (journal, leftovers, quarantine, segments);
    no decoding, no encoders: each segment's rows are packed as they arrive."""

    def __init__(self, cfg, source, taxonomy: list[str], rank: int, world_size: int, state, progress=None,
                 out=None, preempted=None):
        super().__init__(cfg, source, taxonomy, None, None, rank, world_size, state, progress, out, preempted)

    @contextmanager
    def _processor(self):
        def process(seg: list[Unit], committed: set[str], packer: BlockPacker) -> None:
            for unit in seg:
                self._import(unit, committed, packer)

        yield process

    def _import(self, unit: Unit, committed: set[str], packer: BlockPacker) -> None:
        """Pack one file's rows, counting them as read from it (what --limit counts)."""
        if self.limit and self.clips_read >= self.limit:
            return  # excluded by --limit: journalled as done with 0 rows
        for batch in self.source.read_rows(unit):
            if self._stopping():
                return
            for skip in batch.skips:
                if skip.key not in committed:
                    self._quarantine(skip.key, "read", skip.reason, skip.source_uri, self.split_of(skip))
            for i, key in enumerate(batch.keys):
                if self.limit and self.clips_read >= self.limit:
                    return
                self.clips_read += 1
                self._unit_clips[unit.id] = self._unit_clips.get(unit.id, 0) + 1
                if key in committed:
                    continue
                split = batch.splits[i] or self.source.split_policy.split_of_key(key)
                meta = {"keys": key, "durations": 0.0, "transcripts": batch.transcripts[i],
                        "source_uris": batch.source_uris[i], "extra": {"file": unit.id, "row": batch.rows[i]}}
                # copies: a view would keep the whole batch alive until the rarer splits fill a block
                packer.add(split, batch.audio[i].copy(), batch.text[i].copy(), None, int(batch.labels[i]), meta)
                if self.progress is not None:
                    self.progress.update(1)
