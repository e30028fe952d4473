"""One rank's write-and-commit protocol, the same for every kind of ingest.

    units of this rank (assign_units) --> segments of about `checkpoint_mb` of input
        per segment: process(segment, packer) --> BlockPacker --> BackgroundWriter
                     --> RotatingWriter (shards) --> Journal.shard (rows sidecar, shard in place, record)
        then: every open shard closed and journalled, the segment's quarantine, its units done

A killed run loses at most one segment per rank; a resumed one skips the units journalled
done and the keys committed shards hold (ingest.write.ledger). `preempted` (lake.signals): when
set, the producer stops at a clip boundary, the segment's shards are committed, and the run
stops (Preempted) without marking the segment's units done.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Iterator

from lake.errors import Preempted
from ingest.sources.base import Unit
from ingest.write.background import BackgroundWriter
from ingest.write.journal import Journal, JournalState
from ingest.write.ledger import Ledger
from ingest.write.output import SetOutput
from ingest.write.packer import BlockPacker
from ingest.write.plan import build_of
from shards.writer import RotatingWriter

Process = Callable[[list[Unit], BlockPacker], None]
"""A producer's work on one segment: read its units and pack their rows."""


def assign_units(units: list[Unit], world_size: int) -> list[list[Unit]]:
    """Largest first to the least-loaded rank (deterministic for a given world size)."""
    loads = [0] * world_size
    out: list[list[Unit]] = [[] for _ in range(world_size)]
    for u in sorted(units, key=lambda u: (-u.size, u.id)):
        r = min(range(world_size), key=lambda i: (loads[i], i))
        out[r].append(u)
        loads[r] += max(u.size, 1)
    return [sorted(us, key=lambda u: u.id) for us in out]


def segments(units: list[Unit], checkpoint_bytes: float) -> Iterator[list[Unit]]:
    seg, size = [], 0
    for u in units:
        seg.append(u)
        size += u.size
        if size >= checkpoint_bytes:
            yield seg
            seg, size = [], 0
    if seg:
        yield seg


class RankCommit:
    """Where and how one rank commits: `out` (a SetOutput, the build's), its worker id (the rank),
    the journals' state, the ledger its producer keeps."""

    def __init__(self, cfg, out: SetOutput, rank: int, state: JournalState, taxonomy: list[str], with_caption: bool,
                 ledger: Ledger, preempted=None):
        self.cfg, self.out, self.rank, self.state = cfg, out, rank, state
        self.taxonomy, self.with_caption, self.ledger, self.preempted = taxonomy, with_caption, ledger, preempted

    def clean_leftovers(self) -> None:
        """Delete this worker id's shards that no journal line committed (a killed run's leftovers)."""
        self.out.clean_leftovers(self.rank, set(self.state.shards))

    def run(self, processor: AbstractContextManager[Process]) -> None:
        """Every unit the ledger has left to do, segment by segment. `processor`: entered once for the
        run (a decode pool, say), it gives the per-segment `process`."""
        cfg = self.cfg
        journal = Journal(self.out, self.rank)
        rotating = RotatingWriter(self.out.build_root, self.taxonomy, journal.shard, worker=self.rank,
                                  rows_per_shard=cfg.rows_per_shard, next_seq=self.state.next_seq(self.rank),
                                  build=build_of(self.out))
        writer = BackgroundWriter(rotating)
        packer = BlockPacker(cfg.block_rows, writer.submit, with_caption=self.with_caption)
        try:
            with processor as process:
                for seg in segments(self.ledger.todo, cfg.checkpoint_mb * 1e6):
                    process(seg, packer)
                    packer.flush()
                    writer.sync()  # every shard of this segment closed and journalled
                    self._end_segment(journal, seg)
            writer.stop()
        except BaseException:
            writer.abort()
            raise
        finally:
            journal.close()

    def _end_segment(self, journal: Journal, seg: list[Unit]) -> None:
        quarantine = self.ledger.take_quarantine()
        if quarantine:
            journal.append({"type": "quarantine", "records": quarantine})
        if self.preempted:  # the segment's units are not all read: they stay undone
            raise Preempted(f"{self.preempted.name} received: rank {self.rank} committed its finished "
                            f"shards; re-run the same command to continue from there")
        journal.append({"type": "units_done", "units": self.ledger.clips_of(seg)})
