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

from ingest.journal import Journal
from ingest.packer import BlockPacker
from ingest.pipeline import RankWorker, segments
from ingest.sources.base import Unit
from ingest.writer_thread import BackgroundWriter
from shards.writer import RotatingWriter


class PrecomputedWorker(RankWorker):
    """One rank of an import: RankWorker's journal, leftovers and quarantine; no decoding, no encoders."""

    def __init__(self, cfg, source, taxonomy: list[str], rank: int, world_size: int, state, progress=None):
        super().__init__(cfg, source, taxonomy, None, None, rank, world_size, state, progress)

    def run(self, units: list[Unit]) -> None:
        cfg = self.cfg
        todo = [u for u in units if u.id not in self.state.units_done]
        self.clips_read = sum(self.state.units_done.get(u.id, 0) for u in units)
        committed = self.state.committed_keys(cfg.out) if todo and self.state.shards else set()
        journal = Journal(cfg.out, self.rank)
        rotating = RotatingWriter(cfg.out, self.taxonomy, journal.shard, worker=self.rank,
                                  rows_per_shard=cfg.rows_per_shard, next_seq=self.state.next_seq(self.rank))
        writer = BackgroundWriter(rotating)
        packer = BlockPacker(cfg.block_rows, writer.submit, with_caption=False)
        try:
            for seg in segments(todo, cfg.checkpoint_mb * 1e6):
                read = {u.id: self._import(u, committed, packer) for u in seg}
                packer.flush()
                writer.sync()  # every shard of this segment closed and journalled
                if self.quarantine:
                    journal.append({"type": "quarantine", "records": self.quarantine})
                    self.quarantine = []
                journal.append({"type": "units_done", "units": read})
            writer.stop()
        except BaseException:
            writer.abort()
            raise
        finally:
            journal.close()

    def _import(self, unit: Unit, committed: set[str], packer: BlockPacker) -> int:
        """Pack one file's rows; returns the rows read from it (what --limit counts)."""
        read = 0
        if self.limit and self.clips_read >= self.limit:
            return 0  # excluded by --limit: journalled as done with 0 rows
        for batch in self.source.read_rows(unit):
            for skip in batch.skips:
                if skip.key not in committed:
                    self._quarantine(skip.key, "read", skip.reason, skip.source_uri, self.split_of(skip))
            for i, key in enumerate(batch.keys):
                if self.limit and self.clips_read >= self.limit:
                    return read
                self.clips_read += 1
                read += 1
                if key in committed:
                    continue
                split = batch.splits[i] or self.source.split_policy.split_of_key(key)
                meta = {"keys": key, "durations": 0.0, "transcripts": batch.transcripts[i],
                        "source_uris": batch.source_uris[i], "extra": {"file": unit.id, "row": batch.rows[i]}}
                # copies: a view would keep the whole batch alive until the rarer splits fill a block
                packer.add(split, batch.audio[i].copy(), batch.text[i].copy(), None, int(batch.labels[i]), meta)
                if self.progress is not None:
                    self.progress.update(1)
        return read
