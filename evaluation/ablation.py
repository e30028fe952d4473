"""Modality ablation: does the model use the audio (the prosody) and the text it is given?

Every evaluated row's audio input (or its text input) is replaced by the train split's mean
vector of the raw stored embeddings (per loaded layer), and the split is evaluated again
through the loop's own `evaluate`: a large drop without audio says the model relies on what
it hears, none says it ignores it. The mean, not zeros: a zero vector is a point the model
never saw (and the L2 normalisation is undefined there); the mean is the input that carries
no information about this clip while staying where the training inputs live.
"""

from __future__ import annotations

import numpy as np
import torch

from lake.catalog import ShardSet
from shards.stats import feature_stats

VARIANTS = {"none": (), "audio": ("audio",), "text": ("text",), "all": ("audio", "text")}
LABELS = {None: "fused", "audio": "without audio", "text": "without text"}


def train_means(shards: ShardSet, layers: list[str], fields=("audio", "text")) -> dict[str, np.ndarray]:
    """{"audio": [L, Da], "text": [Dt]}: the train split's mean stored vectors, from the manifest's
    statistics where it records them, else by streaming the train split once."""
    stored = shards.manifest.feature_stats
    have = {"audio": all(x in stored.get("audio", {}) for x in layers), "text": "text" in stored}
    missing = tuple(f for f in fields if not have[f])
    computed = feature_stats(shards, "train", missing, layers) if missing else {}
    out = {}
    for f in fields:
        src = stored if have[f] else computed
        out[f] = np.array([src["audio"][x]["mean"] for x in layers] if f == "audio" else src[f]["mean"],
                          dtype=np.float32)
    return out


class Replaced:
    """A loader whose batches carry `means[field]` (broadcast over rows) instead of that input."""

    def __init__(self, loader, means: dict[str, np.ndarray], field: str):
        self.loader, self.field = loader, field
        self.value = torch.from_numpy(means[field])

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_rows(self) -> int:
        return self.loader.num_rows

    def __iter__(self):
        for batch in self.loader:
            x = batch[self.field]
            batch[self.field] = self.value.expand(x.shape).contiguous()
            yield batch


def ablation(evaluate_loader, loader, means: dict[str, np.ndarray], fields: tuple[str, ...], metric: str,
             fused: dict) -> dict:
    """{"rows": the headline metric per input and its change, "per_class": F1 per class per input}.

    `evaluate_loader(loader) -> metrics` is the stage's evaluation pass; `fused` its metrics on
    the untouched loader."""
    runs = {None: fused}
    for f in fields:
        runs[f] = evaluate_loader(Replaced(loader, means, f))
    base = fused[metric]
    rows = [{"input": LABELS[f], metric: m[metric], "change": m[metric] - base, "accuracy": m["accuracy"]}
            for f, m in runs.items()]
    per_class = []
    for c, rec in enumerate(fused["per_class"]):
        row = {"class": rec["class"], "support": rec["support"], "F1 fused": rec["f1"]}
        for f in fields:
            f1 = runs[f]["per_class"][c]["f1"]
            row[f"F1 {LABELS[f]}"] = f1
            row[f"change {LABELS[f]}"] = f1 - rec["f1"]
        per_class.append(row)
    return {"metric": metric, "rows": rows, "per_class": per_class}


def ablation_note(metric: str) -> str:
    return (f"Each row replaces one input of every evaluated clip by the train split's mean stored vector "
            f"and evaluates again; `change` is the {metric} minus the fused model's. A large drop without "
            "audio means the model uses what it hears (prosody); no drop means it ignores it.")
