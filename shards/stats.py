"""A split streamed once: its arrays, and the per-feature mean and standard deviation of its embeddings.

Encoders whose features live on different scales (fbank: log-mel means around 9, their
differences around 0.7; openSMILE: Hz next to dB next to ratios) say so in their manifest
record (`"standardize": true`). For them, finishing a set records the train split's
statistics in the manifest (`Manifest.feature_stats`), and the trainers standardise each
feature with them before the L2 normalisation every model applies to its inputs: without
it, the largest-magnitude features decide the direction of the unit vector. Encoders
already on a common scale (AuriStream hidden states, sentence models) carry no flag and
keep the reference's plain unit-norm inputs.

    {"split": "train", "rows": N,
     "audio": {LAYER: {"mean": [Da], "std": [Da]}, ...},   # when encoders.audio.standardize
     "text": {"mean": [Dt], "std": [Dt]},                   # when encoders.text.standardize
     "caption": {"mean": [Dt], "std": [Dt]}}                # likewise, if the set has captions

`std` is the population standard deviation, 1.0 where a feature is constant on the split
(as scikit-learn's StandardScaler does), so standardising never divides by zero.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from lake.catalog import ShardSet
from shards.loader import ShardLoader

TEXT_FIELDS = ("text", "caption")
BATCH_ROWS = 4096


def iter_split(shards: ShardSet, split: str, fields: tuple[str, ...], layers: list[str] | None = None,
               batch_rows: int = BATCH_ROWS) -> Iterator[dict[str, np.ndarray]]:
    """Every row of `split` once, in index order, as numpy batches of `fields` (+ `row`)."""
    loader = ShardLoader(shards, split, batch_rows, training=False, layers=layers, fields=fields)
    for batch in loader:
        yield {k: v.numpy() for k, v in batch.items()}


def split_arrays(shards: ShardSet, split: str, fields: tuple[str, ...], layers: list[str] | None = None
                 ) -> dict[str, np.ndarray]:
    """The whole split's `fields` as arrays (audio [N, L, Da] fp16, text [N, Dt] fp16, label [N] int64)."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in iter_split(shards, split, fields, layers):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


class _Moments:
    """Mean and M2 per feature in float64, merged batch by batch (Chan et al.): no catastrophic
    cancellation for features whose mean is large against their spread (ComParE's Hz^2)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        n_b = x.shape[0]
        if not n_b:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * n_b / n)
        self.n = n

    def result(self) -> dict[str, list[float]]:
        std = np.sqrt(self.m2 / self.n)
        std = np.where(std > 0, std, 1.0)
        return {"mean": self.mean.tolist(), "std": std.tolist()}


def feature_stats(shards: ShardSet, split: str = "train", fields: tuple[str, ...] = ("audio", "text"),
                  layers: list[str] | None = None) -> dict:
    """Per-feature mean/std of `fields` over `split` (audio: per stored layer in `layers`, default all),
    streaming the split once."""
    m = shards.manifest
    layers = list(layers or m.audio_layers)
    fields = tuple(f for f in fields if f in m.fields and f in ("audio",) + TEXT_FIELDS)
    acc = {f: ([_Moments() for _ in layers] if f == "audio" else _Moments()) for f in fields}
    rows = 0
    for batch in iter_split(shards, split, fields, layers):
        rows += len(batch["row"])
        for f in fields:
            if f == "audio":
                for j, mom in enumerate(acc[f]):
                    mom.add(batch[f][:, j])
            else:
                acc[f].add(batch[f])
    out: dict = {"split": split, "rows": rows}
    for f in fields:
        out[f] = {name: mom.result() for name, mom in zip(layers, acc[f])} if f == "audio" else acc[f].result()
    return out


def flagged_fields(shards: ShardSet) -> tuple[str, ...]:
    """The embedding fields whose encoder asks for per-feature standardisation."""
    m = shards.manifest
    out = ["audio"] if m.encoders["audio"].get("standardize") else []
    if m.encoders["text"].get("standardize"):
        out += [f for f in TEXT_FIELDS if f in m.fields]
    return tuple(out)


def standardization_stats(shards: ShardSet, split: str = "train") -> dict:
    """What a finished set records in `Manifest.feature_stats`: the statistics of the flagged fields
    over the train split; {} when no encoder asks for them or the set has no such split."""
    fields = flagged_fields(shards)
    if not fields or not shards.manifest.rows_of(split):
        return {}
    return feature_stats(shards, split, fields)
