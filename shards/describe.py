"""Library side of `python -m shards`: listings and statistics of a shard set as plain data."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lake.catalog import ShardSet
from lake.errors import LakeError
from lake.schema import split_sort_key
from shards.mapped import ShardMap


def list_shards(shards: ShardSet) -> list[dict]:
    return [{"path": s.path, "split": s.split, "rows": s.rows, "bytes": s.bytes, "blocks": len(s.blocks)}
            for s in shards.manifest.shards]


def set_stats(shards: ShardSet) -> dict:
    """Rows, hours, label histograms per split; encoders, dims, stored layers."""
    m = shards.manifest
    index = shards.index.select(["split", "label_id", "duration_s"]).to_pydict()
    splits: dict[str, dict] = {}
    for split in sorted({s.split for s in m.shards}, key=split_sort_key):
        entries = m.shards_of(split)
        splits[split] = {"rows": sum(s.rows for s in entries), "shards": len(entries),
                         "bytes": sum(s.bytes for s in entries), "duration_s": 0.0}
    labels: dict[str, Counter] = {split: Counter() for split in splits}
    for split, label, dur in zip(index["split"], index["label_id"], index["duration_s"]):
        if split in splits:
            splits[split]["duration_s"] += float(dur)
            labels[split][int(label)] += 1
    for d in splits.values():
        d["hours"] = round(d["duration_s"] / 3600.0, 4)
        d["duration_s"] = round(d["duration_s"], 3)
    return {
        "name": m.name,
        "fingerprint": m.fingerprint(),
        "schema_version": m.schema_version,
        "source": m.source,
        "num_classes": m.num_classes,
        "taxonomy": m.taxonomy,
        "fields": m.fields,
        "audio_encoder": m.encoders["audio"].get("id"),
        "text_encoder": m.encoders["text"].get("id"),
        "audio_dim": m.audio_dim,
        "text_dim": m.text_dim,
        "audio_layers": m.audio_layers,
        "rows": sum(d["rows"] for d in splits.values()),
        "hours": round(sum(d["duration_s"] for d in splits.values()) / 3600.0, 4),
        "splits": splits,
        "labels": {split: {m.taxonomy[i] if i < m.num_classes else str(i): c for i, c in sorted(cnt.items())}
                   for split, cnt in labels.items()},
        "quarantined": len(shards.quarantine()),
    }


def head_rows(shards: ShardSet, n: int = 10) -> list[dict]:
    table = shards.index.slice(0, n)
    return table.to_pylist()


def show_clip(shards: ShardSet, key: str) -> dict:
    """Everything stored about one clip: index row, block meta, label, embedding norms."""
    import pyarrow.compute as pc

    index = shards.index
    hits = index.filter(pc.equal(index["key"], key)).to_pylist()
    if not hits:
        raise LakeError(f"{shards.root}: no clip with key {key!r} (see `python -m shards head {shards.root}`)")
    row = hits[0]
    entry = next((s for s in shards.manifest.shards if s.path == row["shard"]), None)
    if entry is None:
        raise LakeError(f"{shards.root}: the index points {key!r} at {row['shard']}, which the manifest lacks")
    block = ShardMap(shards.shard_path(entry), entry).block(row["block"])
    i = row["row"]
    meta = block["meta"]
    out = dict(row)
    out["meta"] = {k: v[i] for k, v in meta.items() if isinstance(v, list) and len(v) == len(block["label"])}
    out["label_id_in_block"] = int(block["label"][i])
    layers = shards.manifest.audio_layers
    audio = block["audio"][i].astype(np.float32)
    out["norms"] = {f"audio[{name}]": float(np.linalg.norm(audio[j])) for j, name in enumerate(layers)}
    for name in ("text", "caption"):
        if name in block:
            out["norms"][name] = float(np.linalg.norm(block[name][i].astype(np.float32)))
    return out
