"""What a run trains on: one shard set, or several read as one (shared encoders and stored layers, one taxonomy).

    data = TrainingData.open(["sets/laion", "sets/meld"], label_map="shared.json", proportions=[0.7, 0.3])
    data.taxonomy                    # the run's classes: the label map's (or --taxonomy's), else the sets' own
    data.loader("train", 512, ...)   # one ShardLoader over every set (shards.partition mixes them)
    data.split_loaders("val", ...)   # {set name: loader}: each set's validation split scored on its own

Sets read together must share their encoders (ids, revisions, dims) and stored layers: a mismatch is
one line naming both sets and what differs. Their classes meet in one taxonomy through a label map
(`{label: class}` for every set, or `{set name: {label: class}}`; a label that is itself a class of
the run maps to itself); without one the sets must have the same taxonomy. Rows whose label maps to
nothing are left out. A set's manifest name identifies it (in label maps, `--select-on`, reports and
checkpoints), so names must differ.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.compute as pc

from lake import storage
from lake.catalog import ShardSet, open_shard_set
from lake.distributed import World
from lake.errors import LakeError
from lake.splits import validation_split
from lake.taxonomy import load_taxonomy_file
from shards.loader import ShardLoader
from shards.partition import quotas


def read_label_map(path: str) -> dict:
    """A label map file: {label: class}, or {set name: {label: class}}."""
    try:
        mapping = json.loads(storage.read_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        raise LakeError(f"--label-map {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LakeError(f"--label-map {path}: cannot read it as JSON ({e})") from None
    flat = isinstance(mapping, dict) and all(isinstance(v, str) for v in mapping.values())
    nested = isinstance(mapping, dict) and all(isinstance(v, dict) and all(isinstance(c, str) for c in v.values())
                                               for v in mapping.values())
    if not mapping or not (flat or nested):
        raise LakeError(f"--label-map {path}: expected a JSON object {{label: class}} or {{set name: {{label: "
                        "class}}}")
    return mapping


def _maps_per_set(mapping: dict | None, sets: list[ShardSet], path: str) -> list[dict | None]:
    if mapping is None:
        return [None] * len(sets)
    if all(isinstance(v, str) for v in mapping.values()):
        return [dict(mapping)] * len(sets)
    names = [s.name for s in sets]
    unknown = sorted(set(mapping) - set(names))
    missing = [n for n in names if n not in mapping]
    if unknown or missing:
        raise LakeError(f"--label-map {path}: its set names must be those of --data-root ({', '.join(names)})"
                        + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                        + (f"; no map for: {', '.join(missing)}" if missing else ""))
    return [dict(mapping[n]) for n in names]


def merged_taxonomy(sets: list[ShardSet], maps: list[dict | None], taxonomy: list[str] | None, path: str) -> list[str]:
    """The run's classes: `taxonomy` (--taxonomy), else every class a set's label maps to, sorted; without maps, the
    sets' common taxonomy."""
    if all(m is None for m in maps):
        first = sets[0].taxonomy
        for s in sets[1:]:
            if s.taxonomy != first:
                raise LakeError(f"{s.root} has the classes {', '.join(s.taxonomy[:5])}..., {sets[0].root} "
                                f"{', '.join(first[:5])}...: pass --label-map FILE to map them onto one taxonomy")
        return list(first)
    reached = {m.get(label, label) for s, m in zip(sets, maps) for label in s.taxonomy if label in m}
    if taxonomy is None:
        return sorted(reached)
    stray = sorted(reached - set(taxonomy))
    if stray:
        raise LakeError(f"--label-map {path} maps labels to {', '.join(stray)}, which --taxonomy does not list")
    return list(taxonomy)


def label_ids(taxonomy_of_set: list[str], mapping: dict | None, classes: list[str]) -> np.ndarray | None:
    """The set's class id -> the run's class id (-1: left out); None when they are the same ids."""
    if mapping is None and taxonomy_of_set == classes:
        return None
    index = {c: i for i, c in enumerate(classes)}
    mapping = mapping or {}
    return np.array([index.get(mapping.get(label, label), -1) for label in taxonomy_of_set], dtype=np.int64)


def check_same_encoders(sets: list[ShardSet]) -> None:
    """Sets read together must hold the same embedding space: encoders and stored layers."""
    first = sets[0].manifest
    for s in sets[1:]:
        m = s.manifest
        for kind in ("audio", "text"):
            a, b = first.encoders[kind], m.encoders[kind]
            if a != b:
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise LakeError(f"{sets[0].root} and {s.root} were encoded differently ({kind} encoder "
                                f"{a.get('id')} vs {b.get('id')}; differs in {', '.join(diff)}): sets read together "
                                "must share their encoders")
        if m.audio_layers != first.audio_layers:
            raise LakeError(f"{sets[0].root} and {s.root} store other audio layers ({', '.join(first.audio_layers)} vs "
                            f"{', '.join(m.audio_layers)}): sets read together must store the same layers")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise LakeError(f"two sets of --data-root have the same manifest name ({', '.join(names)}); sets read "
                        "together must be told apart by name")


def pooled_stats(stats: list[dict], weights: list[float]) -> dict:
    """The per-feature mean and std of a mixture of sets (each set's train statistics, weighted by its share)."""
    if not stats or not all(stats):
        return {}
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)

    def pool(parts):
        mean = sum(wi * np.asarray(p["mean"]) for wi, p in zip(w, parts))
        second = sum(wi * (np.asarray(p["std"]) ** 2 + np.asarray(p["mean"]) ** 2) for wi, p in zip(w, parts))
        return {"mean": mean.tolist(), "std": np.sqrt(np.maximum(second - mean ** 2, 0)).tolist()}

    out = {}
    for field in set.intersection(*[set(k for k in s if k not in ("split", "rows")) for s in stats]):
        if field == "audio":
            out[field] = {layer: pool([s[field][layer] for s in stats]) for layer in stats[0][field]}
        else:
            out[field] = pool([s[field] for s in stats])
    return out


class TrainingData:
    """The sets of a run, as one: the manifest facts trainers read, a taxonomy, and the loaders over them."""

    def __init__(self, sets: list[ShardSet], taxonomy: list[str], maps: list[dict | None],
                 proportions: list[float] | None = None, epoch_rows: int = 0):
        self.sets, self.taxonomy, self.maps = list(sets), list(taxonomy), list(maps)
        self.label_ids = [label_ids(s.taxonomy, m, self.taxonomy) for s, m in zip(self.sets, self.maps)]
        self.proportions, self.epoch_rows = (list(proportions) if proportions else None), int(epoch_rows)
        m = self.sets[0].manifest
        self.encoders, self.audio_dim, self.text_dim = m.encoders, m.audio_dim, m.text_dim
        self.audio_layers = m.audio_layers
        self.fields = [f for f in m.fields if all(f in s.manifest.fields for s in self.sets)]

    @classmethod
    def of(cls, shards: ShardSet) -> "TrainingData":
        """One set, as it is."""
        return cls([shards], shards.taxonomy, [None])

    @classmethod
    def open(cls, roots: list[str], cache_dir: str = "", cache_limit: float | None = None, storage_options: str = "",
             proportions: list[float] | None = None, epoch_rows: int = 0, label_map: str = "",
             taxonomy: str = "") -> "TrainingData":
        sets = [open_shard_set(r, cache_dir, cache_limit, storage_options) for r in roots]
        check_same_encoders(sets)
        maps = _maps_per_set(read_label_map(label_map) if label_map else None, sets, label_map)
        classes = merged_taxonomy(sets, maps, load_taxonomy_file(taxonomy) if taxonomy else None, label_map)
        return cls(sets, classes, maps, proportions, epoch_rows)

    # -- what trainers read of the manifest ---------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.taxonomy)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sets]

    @property
    def name(self) -> str:
        return " + ".join(self.names)

    @property
    def root(self) -> str:
        return " + ".join(s.root for s in self.sets)

    @property
    def single(self) -> bool:
        """One set read as it is: its own fingerprint, classes and statistics."""
        return len(self.sets) == 1 and self.label_ids[0] is None and not self.epoch_rows

    def shares(self) -> list[float]:
        """Each set's share of a training epoch's rows."""
        q = self.train_quotas()
        return [x / sum(q) for x in q]

    def train_quotas(self) -> list[int]:
        return quotas(self.kept_rows("train"), self.proportions, self.epoch_rows)

    @property
    def feature_stats(self) -> dict:
        """Per-feature statistics for standardisation: the set's own, or the mixture's (weights: epoch shares)."""
        if self.single:
            return self.sets[0].manifest.feature_stats
        return pooled_stats([s.manifest.feature_stats for s in self.sets], self.shares())

    def asked(self) -> list[float]:
        """Each set's share of an epoch as asked: --proportions normalised, or by kept train rows."""
        w = self.proportions or self.kept_rows("train")
        return [round(x / sum(w), 6) for x in w]

    def record(self) -> list[dict]:
        """What a checkpoint records of every set (and `--resume` checks): its share as asked, and the rows an
        epoch draws from it."""
        return [{"name": s.name, "root": s.root, "fingerprint": s.fingerprint, "proportion": p, "rows": q,
                 "label_map": m} for s, p, q, m in zip(self.sets, self.asked(), self.train_quotas(), self.maps)]

    @property
    def fingerprint(self) -> str:
        """The set's own fingerprint for one set read as it is; else a hash of every set, share and label map."""
        if self.single:
            return self.sets[0].fingerprint
        blob = json.dumps([self.record(), self.taxonomy, self.epoch_rows], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # -- rows ---------------------------------------------------------------------------------
    def _labels(self, shards: ShardSet, table, split: str) -> np.ndarray:
        index = shards.index
        raw = index.filter(pc.equal(index["split"], split)).column("label_id").to_numpy().astype(np.int64)
        return raw if table is None else table[raw]

    def kept_rows(self, split: str) -> list[int]:
        return [int((self._labels(s, t, split) >= 0).sum()) for s, t in zip(self.sets, self.label_ids)]

    def train_labels(self) -> np.ndarray:
        """The run's class ids of every kept train row (from index.parquet: no shard is read)."""
        parts = [self._labels(s, t, "train") for s, t in zip(self.sets, self.label_ids)]
        labels = np.concatenate(parts)
        return labels[labels >= 0]

    def summary(self) -> list[str]:
        """Per set: train rows kept and left out, by label (the start-up lines of a run on several sets)."""
        lines = []
        for s, t in zip(self.sets, self.label_ids):
            index = s.index
            raw = index.filter(pc.equal(index["split"], "train")).column("label_id").to_numpy().astype(np.int64)
            mapped = raw if t is None else t[raw]
            out = np.bincount(raw[mapped < 0], minlength=len(s.taxonomy))
            left = ", ".join(f"{s.taxonomy[i]} {n}" for i, n in enumerate(out) if n)
            lines.append(f"  {s.name}: {int((mapped >= 0).sum())} train rows kept, {int((mapped < 0).sum())} left out"
                         + (f" ({left})" if left else ""))
        return lines

    def durations(self, split: str) -> np.ndarray:
        parts = []
        for s in self.sets:
            index = s.index
            parts.append(index.filter(pc.equal(index["split"], split)).column("duration_s").to_numpy())
        return np.concatenate(parts)

    # -- loaders ------------------------------------------------------------------------------
    def loader(self, split: str, batch_size: int, world: World, training: bool = False, seed: int = 0,
               layers: list[str] | None = None, fields: tuple[str, ...] = ("audio", "text", "label"),
               num_workers: int = 0, pin_memory: bool = False) -> ShardLoader:
        """One loader over the split of every set (training: mixed by the shares; evaluation: set after set)."""
        return ShardLoader(self.sets, split, batch_size, world.rank, world.world_size, training=training, seed=seed,
                           num_workers=num_workers, layers=layers, fields=fields, pin_memory=pin_memory,
                           proportions=self.proportions, epoch_rows=self.epoch_rows, label_ids=self.label_ids)

    def split_loaders(self, split: str | None, batch_size: int, world: World, seed: int = 0,
                      layers: list[str] | None = None, fields: tuple[str, ...] = ("audio", "text", "label"),
                      num_workers: int = 0, pin_memory: bool = False) -> dict[str, ShardLoader]:
        """{set name: an evaluation loader of its split} (split None: each set's validation split), sets without
        that split left out."""
        out = {}
        for s, t in zip(self.sets, self.label_ids):
            name = split or validation_split(s.manifest.splits)
            if name in s.manifest.splits:
                out[s.name] = ShardLoader(s, name, batch_size, world.rank, world.world_size, training=False,
                                          seed=seed, num_workers=num_workers, layers=layers, fields=fields,
                                          pin_memory=pin_memory, label_ids=[t])
        return out
