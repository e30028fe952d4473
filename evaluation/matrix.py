"""The cross-corpus table: every model on every set, the stage's headline metric in each cell.

    python -m evaluation matrix --checkpoints a/slm_stage3_best.pt b/slm_stage3_best.pt \
        --data-root sets/a sets/b [--label-map map.json] --out reports/matrix

Rows are the checkpoints (named by the set or sets each was trained on), columns the sets' test splits.
A cell where the model's classes are the set's is the ordinary evaluation (trainers.loop.evaluate); any
other goes through the label map (evaluation.crosscorpus). Writes matrix.json, matrix.md and matrix.png
(a heatmap): the train x test table EmoBox publishes for its cross-corpus track.
"""

from __future__ import annotations

import json
import os

import numpy as np

from evaluation.crosscorpus import cross_corpus_metrics
from evaluation.plots import plot_matrix
from lake.catalog import ShardSet
from lake.distributed import World
from lake.errors import LakeError
from lake.storage import write_bytes_atomic
from evaluation.stages import trained_on_names
from trainers import models
from trainers.loop import evaluate, gather_outputs

ONE = World()


def _cell(path: str, shards: ShardSet, split: str, label_map: str, batch_size: int, device) -> tuple[dict, str]:
    """The headline metric (and the rows scored) of one checkpoint on one set, and the name of what it was
    trained on."""
    task, model = models.load(path, shards, same_classes=False)  # the classes are compared here
    if task.stage not in ("slm", "meld"):
        raise LakeError(f"{path}: a {task.stage} checkpoint; the matrix scores classifiers (slm, meld)")
    same = list(task.taxonomy) == list(shards.taxonomy)
    if not same and not label_map:
        raise LakeError(f"{path} has other classes than {shards.root} ({', '.join(task.taxonomy[:4])}... vs "
                        f"{', '.join(shards.taxonomy[:4])}...): pass --label-map FILE")
    loader = task.loader(split, batch_size, ONE)
    model = model.to(device)
    if same:
        metrics = evaluate(task, model, loader, device, ONE)
    else:
        metrics, _ = cross_corpus_metrics(gather_outputs(task, model, loader, device, ONE), task.taxonomy,
                                          shards.taxonomy, label_map, trained_on_names(task.checkpoint), shards.name)
    loader.close()
    cell = {"metric": task.selection, "value": metrics[task.selection], "rows": metrics["num_rows"],
            "classes": metrics["num_classes"], "mapped": not same}
    return cell, task.checkpoint["data"]["name"] or os.path.basename(path)


def matrix(checkpoints: list[str], sets: list[ShardSet], out: str, split: str = "test", label_map: str = "",
           batch_size: int = 1024, device="cpu") -> dict:
    """Every checkpoint on every set; writes matrix.json, matrix.md and matrix.png under `out`."""
    scored = [[_cell(p, s, split, label_map, batch_size, device) for s in sets] for p in checkpoints]
    cells = [[c for c, _ in row] for row in scored]
    rows = [row[0][1] for row in scored]
    cols = [s.name for s in sets]
    metrics = sorted({c["metric"] for row in cells for c in row})
    result = {"split": split, "label_map": label_map or None, "metric": metrics[0] if len(metrics) == 1 else metrics,
              "rows": [{"checkpoint": p, "trained_on": r} for p, r in zip(checkpoints, rows)],
              "columns": [{"data_root": s.root, "name": s.name, "fingerprint": s.fingerprint} for s in sets],
              "cells": cells}
    os.makedirs(out, exist_ok=True)
    paths = {"json": os.path.join(out, "matrix.json"), "markdown": os.path.join(out, "matrix.md"),
             "png": os.path.join(out, "matrix.png")}
    write_bytes_atomic(paths["json"], (json.dumps(result, indent=1) + "\n").encode())
    write_bytes_atomic(paths["markdown"], markdown(result).encode())
    values = np.array([[c["value"] for c in row] for row in cells])
    mapped = [[c["mapped"] for c in row] for row in cells]
    plot_matrix(values, rows, cols, paths["png"], f"{result['metric']} on {split}" + (" (*: through the label map)"
                if any(map(any, mapped)) else ""), mapped)
    return {"result": result, "paths": paths}


def markdown(result: dict) -> str:
    cols = [c["name"] for c in result["columns"]]
    lines = [f"# Cross-corpus {result['metric']} ({result['split']} splits)", "",
             "| trained on \\ evaluated on | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row, cells in zip(result["rows"], result["cells"]):
        shown = [f"{c['value']:.3f}" + (" *" if c["mapped"] else "") for c in cells]
        lines.append(f"| {row['trained_on']} | " + " | ".join(shown) + " |")
    lines += ["", "`*`: scored through the label map " + (f"`{result['label_map']}`" if result["label_map"] else "")
              + " (each of the set's classes takes the summed probability of the model classes mapped to it).", ""]
    lines += [f"- {r['trained_on']}: `{r['checkpoint']}`" for r in result["rows"]]
    return "\n".join(lines) + "\n"
