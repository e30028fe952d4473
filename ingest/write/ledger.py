"""One rank's account of the clips it has read and may pack, so that a resumed run takes exactly
the clips an uninterrupted one would, and never commits a key twice.

    --limit        counts clips read, committed ones included, earlier runs' too (`units_done` in
                   the journal records how many each finished unit gave)
    committed key  a clip a committed shard already holds: counted, not packed again
    duplicate key  a second clip of this run with a key it already took: refused, with why
    quarantine     clips that cannot be used, journalled at the end of each segment

Every producer of rows (ingest.pipeline decoding audio, ingest.precomputed importing vectors)
asks the same ledger, in the order it reads its units.
"""

from __future__ import annotations

from ingest.sources.base import Unit
from ingest.write.journal import JournalState
from ingest.write.output import SetOutput


def per_rank_limit(limit: int, world_size: int) -> int:
    """--limit is a total; each rank takes its share (0: no limit)."""
    return -(-limit // world_size) if limit else 0


class Ledger:
    def __init__(self, units: list[Unit], state: JournalState, out: SetOutput, limit: int, progress=None):
        """`units`: this rank's; `state`: what every journal of the set says is committed; `limit`: this
        rank's share of --limit (0: none); `progress` counts every clip packed or quarantined."""
        self.todo = [u for u in units if u.id not in state.units_done]
        # clips read by earlier runs count towards --limit, so a resumed run takes the same clips
        self.clips_read = sum(state.units_done.get(u.id, 0) for u in units)
        self.committed = state.committed_keys(out) if self.todo and state.shards else set()
        self.limit, self.progress = limit, progress
        self._unit_clips: dict[str, int] = {}
        self._keys: set[str] = set()  # keys taken by this run
        self._quarantine: list[dict] = []

    @property
    def full(self) -> bool:
        """--limit reached: read no further (the units left are journalled done with what they gave)."""
        return bool(self.limit) and self.clips_read >= self.limit

    def take(self, unit_id: str, key: str, source_uri: str, split: str | None) -> bool:
        """Count one clip read from `unit_id`; True when it is to be packed (no committed shard holds its
        key, and no other clip of this run had it: such a second clip is quarantined)."""
        self.clips_read += 1
        self._unit_clips[unit_id] = self._unit_clips.get(unit_id, 0) + 1
        if key in self.committed:
            return False
        if key in self._keys:
            self.quarantine(key, "read", f"duplicate key: another clip of this run has key {key!r}", source_uri, split)
            return False
        self._keys.add(key)
        return True

    def skipped(self, key: str, reason: str, source_uri: str, split: str | None) -> None:
        """A clip the source could not give (a skip record): quarantined, unless a committed shard holds it."""
        if key not in self.committed:
            self.quarantine(key, "read", reason, source_uri, split)

    def quarantine(self, key: str, stage: str, reason: str, source_uri: str, split: str | None) -> None:
        self._quarantine.append({"key": key, "stage": stage, "reason": reason, "source_uri": source_uri,
                                 "split": split})
        if self.progress is not None:
            self.progress.update(1)

    def packed(self) -> None:
        """One row handed to the packer."""
        if self.progress is not None:
            self.progress.update(1)

    def take_quarantine(self) -> list[dict]:
        """The quarantine records since the last call (journalled once their segment is committed)."""
        records, self._quarantine = self._quarantine, []
        return records

    def clips_of(self, units: list[Unit]) -> dict[str, int]:
        """Clips read from each of `units` (what their `units_done` record says)."""
        return {u.id: self._unit_clips.get(u.id, 0) for u in units}
