"""Which stored layer carries the emotion: the linear probe of the audio, fitted on each layer alone.

    python -m evaluation probe --data-root SET --layers all --out DIR   # report.md, metrics.json, layers.png

The probe of evaluation.probe (standardised logistic regression, C chosen on the validation
split by the stage's selection metric, not refit, scored on `split`) on every layer named, one at
a time, with two reference lines that do not depend on the layer swept: the transcript alone, and
both inputs side by side on the layer `last` names (the reference run's layer, what the stages read
by default). The fused line is deliberately not the best layer's: that would make the line depend on
the sweep it is drawn against, and concatenating every layer with the text is another probe (the
plain probe does it with `--audio-layer all`).

The best layer is the one with the best validation score (the test metric only reports it). The
cost is that of the plain probe times the layers: one fit per layer and C (9 values) on at most
`max_train_rows` train rows; every split is read once, with all the layers named.
"""

from __future__ import annotations

import time

import numpy as np

from evaluation.probe import C_GRID, MAX_TRAIN_ROWS, fit_selected, probe_settings, read_splits, selection_metric
from lake.catalog import ShardSet
from lake.layers import resolve_layers
from lake.splits import validation_split

SHOWN = ("accuracy",)  # beside the selection metric


def layer_probe(shards: ShardSet, split: str = "test", layers: list[str] | None = None,
                grid: tuple[float, ...] = C_GRID, max_train_rows: int = MAX_TRAIN_ROWS, seed: int = 0,
                selection: str | None = None) -> dict:
    """{"settings", "layers": {layer: probe result}, "reference": {"text": ..., "both": ...}, "best_layer"}; each
    probe result as evaluation.probe's: {"C", "val_score", "n_iter", "metrics"}."""
    m = shards.manifest
    t0 = time.time()
    layers = list(layers or m.audio_layers)
    fused = resolve_layers("last", m.audio_layers)[0]
    read = layers + ([fused] if fused not in layers else [])
    selection = selection or selection_metric(shards)
    val = validation_split(m.splits)
    data, available = read_splits(shards, split, read, max_train_rows, seed)
    ys = {s: d["label"] for s, d in data.items()}

    def fit(x_of) -> dict:
        return fit_selected({s: x_of(d) for s, d in data.items()}, ys, val, split, m.taxonomy, selection, grid, seed)

    per_layer = {name: fit(lambda d, i=i: d["audio"][:, i].astype(np.float32)) for i, name in enumerate(layers)}
    j = read.index(fused)
    reference = {"text": fit(lambda d: d["text"].astype(np.float32)),
                 "both": fit(lambda d: np.concatenate([d["audio"][:, j], d["text"]], 1).astype(np.float32))}
    best = max(layers, key=lambda name: per_layer[name]["val_score"])  # the first of equals
    settings = probe_settings(grid, selection, val, len(ys["train"]), available, seed, layers, split, t0)
    settings["fused_layer"] = fused
    return {"settings": settings, "layers": per_layer, "reference": reference, "best_layer": best}


def layer_rows(lp: dict) -> list[dict]:
    """One record per layer: its C, validation score and test metrics (the report's table, metrics.json's list)."""
    sel = lp["settings"]["metric"]
    return [{"layer": name, "C": r["C"], f"val {sel}": r["val_score"], sel: r["metrics"][sel],
             **{k: r["metrics"][k] for k in SHOWN if k != sel}, "best": name == lp["best_layer"]}
            for name, r in lp["layers"].items()]


def reference_rows(lp: dict) -> list[dict]:
    """The reference lines: the transcript alone, and the fused layer with the transcript."""
    sel = lp["settings"]["metric"]
    names = {"text": "text only", "both": f"audio {lp['settings']['fused_layer']} + text"}
    return [{"probe": names[what], "C": r["C"], f"val {sel}": r["val_score"], sel: r["metrics"][sel],
             **{k: r["metrics"][k] for k in SHOWN if k != sel}} for what, r in lp["reference"].items()]


def layer_note(lp: dict) -> str:
    s = lp["settings"]
    sub = (f"a fixed-seed subsample of {s['train_rows']} of the {s['train_rows_available']} train rows"
           if s["subsampled"] else f"all {s['train_rows']} train rows")
    best = lp["layers"][lp["best_layer"]]
    return (f"The linear probe ({s['model']}) of the audio embedding, one stored layer at a time "
            f"({len(s['audio_layers'])} layers), fitted on {sub}; C from {s['C_grid']} chosen by {s['selection']}; "
            f"scored on {s['split']}. Best layer by the validation score: **{lp['best_layer']}** ({s['metric']} "
            f"{best['metrics'][s['metric']]:.4f} on {s['split']}). Reference lines: the transcript embedding alone, "
            f"and layer {s['fused_layer']} (the layer `last` names) beside the transcript. {s['seconds']:.1f} s.")
