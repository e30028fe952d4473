"""The end-of-run report of an ingest: rows and hours per split, what was skipped and why."""

from __future__ import annotations

import os
from collections import Counter, defaultdict

from lake.catalog import open_shard_set
from lake.schema import reason_category, split_sort_key


def summarize(root: str, notes: list[str], elapsed: float | None = None) -> str:
    shards = open_shard_set(root)
    m = shards.manifest
    idx = shards.index.select(["split", "duration_s"]).to_pydict()
    hours: dict[str, float] = defaultdict(float)
    for split, d in zip(idx["split"], idx["duration_s"]):
        hours[split] += d / 3600
    skipped: dict[str, Counter] = defaultdict(Counter)
    quarantine = shards.quarantine()
    for rec in quarantine:
        skipped[rec.get("split") or "-"][reason_category(rec["reason"])] += 1
    lines = [f"{m.name}: {sum(s.rows for s in m.shards)} rows in {len(m.shards)} shards, "
             f"{sum(s.bytes for s in m.shards) / 2**20:.1f} MiB, {m.num_classes} classes"
             + (f", {elapsed:.1f} s" if elapsed is not None else "")]
    splits = sorted(set(m.splits) | set(skipped) - {"-"}, key=split_sort_key)
    for split in splits:
        rows = m.splits.get(split, {}).get("rows", 0)
        why = ", ".join(f"{n} {r}" for r, n in skipped[split].most_common())
        lines.append(f"  {split:>5}: {rows:8d} rows {hours[split]:9.3f} h" + (f"   skipped {sum(skipped[split].values())}: {why}" if why else ""))
    if skipped["-"]:
        lines.append("  other skipped: " + ", ".join(f"{n} {r}" for r, n in skipped["-"].most_common()))
    if quarantine:
        lines.append(f"  quarantined clips are listed in {os.path.join(root, 'quarantine.jsonl')}")
    lines += _label_table(shards, [s for s in splits if s in m.splits])
    lines += [f"note: {n}" for n in notes]
    lines.append(f"check it: python -m shards verify {root}")
    return "\n".join(lines)




def _label_table(shards, splits: list[str]) -> list[str]:
    """Rows per label and split, one line per class of the taxonomy."""
    idx = shards.index.select(["split", "label_id"]).to_pydict()
    counts = Counter(zip(idx["split"], idx["label_id"]))
    width = max(len(c) for c in shards.taxonomy)
    lines = ["  " + "label".ljust(width) + "".join(f"{s:>9}" for s in splits)]
    for i, name in enumerate(shards.taxonomy):
        lines.append("  " + name.ljust(width) + "".join(f"{counts.get((s, i), 0):9d}" for s in splits))
    return lines
