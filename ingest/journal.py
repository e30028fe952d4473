"""The ingest journal: what a killed run had finished, so the same command resumes.

Each rank appends to its own `_work/journal-<rank>.jsonl` (fsync'd line by line):
  {"type": "shard", "entry": {...}}       a shard renamed into place, rows in `_work/rows/<name>.parquet`
  {"type": "quarantine", "records": [...]} clips skipped in a finished segment
  {"type": "units_done", "units": {id: n}} units all of whose rows are in committed shards, with the
                                          number of clips read from each (so --limit resumes exactly)

A journal line is the commit point: a shard on disk without its line is a leftover
of a killed run and is deleted; a unit not marked done is read again, skipping the
keys its committed shards already hold. Journals of all ranks are read on start, so
a resume may use another number of ranks.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field

from lake.schema import ShardEntry

WORK_DIR = "_work"
ROWS_DIR = "rows"


def work_dir(root: str) -> str:
    return os.path.join(root, WORK_DIR)


def rows_path(root: str, shard_path: str) -> str:
    return os.path.join(work_dir(root), ROWS_DIR, os.path.basename(shard_path) + ".parquet")


def _complete_prefix(data: bytes) -> int:
    """Length of the leading complete, parseable lines (a kill or a full disk can cut the last one)."""
    end = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            json.loads(line)
        except ValueError:
            break
        end += len(line)
    return end


class Journal:
    """Append-only, one file per rank."""

    def __init__(self, root: str, rank: int):
        os.makedirs(os.path.join(work_dir(root), ROWS_DIR), exist_ok=True)
        self.root = root
        self.path = os.path.join(work_dir(root), f"journal-{rank:04d}.jsonl")
        if os.path.exists(self.path):
            # drop a torn last line, or everything appended after it would be unreadable
            with open(self.path, "r+b") as f:
                end = _complete_prefix(f.read())
                f.truncate(end)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def shard(self, entry: ShardEntry, rows: list[dict]) -> None:
        """Rows sidecar first, then the line: the line commits both."""
        from shards.writer import write_index_file

        write_index_file(rows_path(self.root, entry.path), rows, fsync=True)
        self.append({"type": "shard", "entry": entry.to_dict()})

    def close(self) -> None:
        self._f.close()


@dataclass
class JournalState:
    """Everything all journals of a set say has been committed."""

    shards: dict[str, ShardEntry] = field(default_factory=dict)  # path -> entry
    units_done: dict[str, int] = field(default_factory=dict)  # unit id -> clips read from it
    quarantine: list[dict] = field(default_factory=list)

    def committed_keys(self, root: str) -> set[str]:
        import pyarrow.parquet as pq

        keys: set[str] = set()
        for path in self.shards:
            keys.update(pq.read_table(rows_path(root, path), columns=["key"]).column("key").to_pylist())
        return keys

    def next_seq(self, worker: int) -> dict[str, int]:
        """Per split, the next free shard sequence number for this worker id."""
        out: dict[str, int] = {}
        for entry in self.shards.values():
            split, w, seq = os.path.basename(entry.path)[: -len(".tar")].rsplit("-", 2)
            if int(w) == worker:
                out[split] = max(out.get(split, 0), int(seq) + 1)
        return out


def read_journals(root: str) -> JournalState:
    from lake.errors import LakeError

    state = JournalState()
    for path in sorted(glob.glob(os.path.join(work_dir(root), "journal-*.jsonl"))):
        with open(path, "rb") as f:
            data = f.read()
        for line in data[:_complete_prefix(data)].splitlines():
            rec = json.loads(line)
            if rec["type"] == "shard":
                entry = ShardEntry.from_dict(rec["entry"])
                missing = [p for p in (os.path.join(root, entry.path), rows_path(root, entry.path)) if not os.path.exists(p)]
                if missing:
                    raise LakeError(f"{path}: journals {entry.path} as committed, but {missing[0]} is gone; the "
                                    "unfinished set cannot be resumed safely: re-run with --overwrite")
                state.shards[entry.path] = entry
            elif rec["type"] == "units_done":
                state.units_done.update(rec["units"])
            elif rec["type"] == "quarantine":
                state.quarantine.extend(rec["records"])
    return state
