"""The ingest journal: what a killed run had finished, so the same command resumes.

Each rank writes its own records under ROOT/_work (a local file appended and fsync'd line
by line, `journal-<rank>.jsonl`; behind a URL one object per record,
`journal-<rank>/<seq>.json`, since an object cannot be appended to and a PUT is atomic):
  {"type": "shard", "entry": {...}}       a committed shard (renamed or uploaded and checked),
                                          its index rows in `_work/rows/<name>.parquet`
  {"type": "quarantine", "records": [...]} clips skipped in a finished segment
  {"type": "units_done", "units": {id: n}} units all of whose rows are in committed shards, with the
                                          number of clips read from each (so --limit resumes exactly)

A record is the commit point: a shard without its record is a leftover of a killed run and is
deleted; a unit not marked done is read again, skipping the keys its committed shards already
hold. The journals of all ranks are read on start, so a resume may use another number of ranks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from lake import storage
from lake.blocks import parse_shard_name
from lake.errors import LakeError, about
from lake.schema import ShardEntry
from ingest.write.output import WORK_DIR, SetOutput
from shards.writer import index_bytes

ROWS_DIR = "rows"


def rows_relpath(shard_path: str) -> str:
    """Where a committed shard's index rows are kept until the merge, relative to the set's root."""
    return f"{WORK_DIR}/{ROWS_DIR}/{shard_path.rsplit('/', 1)[-1]}.parquet"


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
    """Append-only, one per rank (`rank`: its number, or a name such as "repair")."""

    def __init__(self, out: SetOutput, rank: int | str):
        self.out = out
        self.rank = rank
        self._f = None
        name = f"journal-{rank:04d}" if isinstance(rank, int) else f"journal-{rank}"
        if self.out.remote:
            self._dir = name
            self._seq = len(self.out.listdir(WORK_DIR, self._dir))
            return
        os.makedirs(self.out.work(ROWS_DIR), exist_ok=True)
        self.path = self.out.work(f"{name}.jsonl")
        if os.path.exists(self.path):
            # drop a torn last line, or everything appended after it would be unreadable
            with open(self.path, "r+b") as f:
                end = _complete_prefix(f.read())
                f.truncate(end)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        if self._f is None:
            self.out.write_atomic(f"{WORK_DIR}/{self._dir}/{self._seq:08d}.json", line.encode("utf-8"))
            self._seq += 1
            return
        with about(self.path):
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())

    def shard(self, entry: ShardEntry, rows: list[dict]) -> None:
        """Rows sidecar first, then the shard into place, then the record: the record commits all three."""
        self.out.write_atomic(rows_relpath(entry.path), index_bytes(rows))
        self.out.commit_shard(entry)
        self.append({"type": "shard", "entry": entry.to_dict()})

    def adopt(self, entry: ShardEntry, rows: list[dict]) -> None:
        """Journal a shard that is already in place (a repair keeps the intact shards of a damaged set)."""
        self.out.write_atomic(rows_relpath(entry.path), index_bytes(rows))
        self.append({"type": "shard", "entry": entry.to_dict()})

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


@dataclass
class JournalState:
    """Everything all journals of a set say has been committed."""

    shards: dict[str, ShardEntry] = field(default_factory=dict)  # path -> entry
    units_done: dict[str, int] = field(default_factory=dict)  # unit id -> clips read from it
    quarantine: list[dict] = field(default_factory=list)

    def committed_keys(self, out: SetOutput) -> set[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys: set[str] = set()
        for path in self.shards:
            data = storage.read_bytes(out.path(rows_relpath(path)))
            keys.update(pq.read_table(pa.BufferReader(data), columns=["key"]).column("key").to_pylist())
        return keys

    def next_seq(self, worker: int) -> dict[str, int]:
        """Per split, the next free shard sequence number for this worker id."""
        out: dict[str, int] = {}
        for entry in self.shards.values():
            name = parse_shard_name(entry.path)
            if name is not None and name.worker == worker:
                out[name.split] = max(out.get(name.split, 0), name.seq + 1)
        return out


def _records(out: SetOutput) -> list[tuple[str, list[bytes]]]:
    """(journal name, its complete record lines) for every rank's journal."""
    found = []
    for name in out.listdir(WORK_DIR):
        if name.startswith("journal-") and name.endswith(".jsonl"):
            data = storage.read_bytes(out.work(name))
            found.append((name, data[:_complete_prefix(data)].splitlines()))
        elif name.startswith("journal-"):  # one object per record
            lines = [storage.read_bytes(out.work(name, obj)) for obj in out.listdir(WORK_DIR, name)]
            found.append((name, [line.strip() for line in lines if line.strip()]))
    return sorted(found)


def read_journals(out: SetOutput) -> JournalState:
    state = JournalState()
    shard_names = set(out.shard_names())
    rows = set(out.listdir(WORK_DIR, ROWS_DIR))
    for name, lines in _records(out):
        for line in lines:
            rec = json.loads(line)
            if rec["type"] == "shard":
                entry = ShardEntry.from_dict(rec["entry"])
                missing = [p for p, there in ((out.path(entry.path), entry.name in shard_names),
                                              (out.path(rows_relpath(entry.path)), f"{entry.name}.parquet" in rows))
                           if not there]
                if missing:
                    raise LakeError(f"{storage.join(out.work(), name)}: journals {entry.path} as committed, but "
                                    f"{missing[0]} is gone; the unfinished set cannot be resumed safely: re-run with "
                                    "--overwrite")
                state.shards[entry.path] = entry
            elif rec["type"] == "units_done":
                state.units_done.update(rec["units"])
            elif rec["type"] == "quarantine":
                state.quarantine.extend(rec["records"])
    return state
