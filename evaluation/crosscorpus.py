"""Scoring a model on a corpus of another taxonomy: both sides mapped onto the corpus's classes.

    python -m evaluation stage3 --stage3-ckpt slm_stage3_best.pt --data-root sets/iemocap --label-map map.json

A label map (the trainers' format: `{label: class}`, or `{set name: {label: class}}` with one map for the
evaluated set and one for the set(s) the model was trained on) sends the evaluated set's labels and the
model's classes to target classes. The targets are the classes the evaluated set's labels reach (its own
classes, named as the map names them); a row whose label reaches none is left out and counted. Each target
takes the summed probability of the model classes mapped to it, and the prediction is the target with the
most (targets no model class reaches are never predicted: the report names them). So a 36-class SLM is scored
on a 4-class corpus among those 4, with the stage's own metrics (trainers.metrics).

A name with no entry in its side's map reaches the class of the same name, if there is one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lake.errors import LakeError
from trainers.data import read_label_map
from trainers.metrics import classification_metrics_from


@dataclass
class TargetMap:
    """How a model's classes and a corpus's labels meet: the target classes and each side's id -> target id."""

    targets: list[str]
    model_to_target: np.ndarray  # [model classes] target id or -1
    data_to_target: np.ndarray  # [corpus classes] target id or -1

    def unreached(self) -> list[str]:
        """Targets no model class maps to (the model can never predict them)."""
        hit = set(self.model_to_target[self.model_to_target >= 0].tolist())
        return [t for i, t in enumerate(self.targets) if i not in hit]

    def describe(self, model_classes: list[str]) -> dict[str, list[str]]:
        """Target -> the model classes summed into it."""
        return {t: [c for c, j in zip(model_classes, self.model_to_target) if j == i] for i, t in enumerate(self.targets)}


def _side(mapping: dict, names: list[str]) -> dict:
    """The map of one side: the flat map itself, or the union of the nested maps of `names`."""
    if all(isinstance(v, str) for v in mapping.values()):
        return mapping
    out: dict = {}
    for n in names:
        out.update(mapping.get(n, {}))
    return out


def target_map(model_classes: list[str], data_classes: list[str], mapping: dict, model_names: list[str],
               data_name: str, path: str = "--label-map") -> TargetMap:
    """Map both sides onto the classes the corpus's labels reach (sorted)."""
    if not all(isinstance(v, str) for v in mapping.values()) and data_name not in mapping:
        raise LakeError(f"{path}: no map for the evaluated set {data_name!r} (it names {', '.join(mapping)})")
    data_map, model_map = _side(mapping, [data_name]), _side(mapping, model_names)
    data_targets = [data_map.get(label, label) for label in data_classes]
    targets = sorted({t for label, t in zip(data_classes, data_targets) if label in data_map or t in model_map.values()
                      or t in model_classes})
    if not targets:
        raise LakeError(f"{path}: maps none of {data_name}'s labels ({', '.join(data_classes[:6])}...) to a class")
    index = {t: i for i, t in enumerate(targets)}
    model_ids = np.array([index.get(model_map.get(c, c), -1) for c in model_classes], dtype=np.int64)
    if not (model_ids >= 0).any():
        raise LakeError(f"{path}: maps none of the model's classes ({', '.join(model_classes[:6])}...) to a class of "
                        f"{data_name} ({', '.join(targets)})")
    data_ids = np.array([index.get(t, -1) for t in data_targets], dtype=np.int64)
    return TargetMap(targets, model_ids, data_ids)


def target_outputs(logits: np.ndarray, labels: np.ndarray, tm: TargetMap) -> dict[str, np.ndarray]:
    """{"logits": log of each target's summed probability [N', T], "label": target ids [N']} of the rows whose
    label reaches a target."""
    keep = tm.data_to_target[labels] >= 0
    probs = torch.softmax(torch.from_numpy(np.asarray(logits[keep], dtype=np.float32)), dim=1).numpy()
    summed = np.zeros((len(probs), len(tm.targets)), dtype=np.float64)
    for c, t in enumerate(tm.model_to_target):
        if t >= 0:
            summed[:, t] += probs[:, c]
    with np.errstate(divide="ignore"):
        return {"logits": np.log(summed).astype(np.float32), "label": tm.data_to_target[labels[keep]]}


def cross_corpus_metrics(outputs: dict[str, np.ndarray], model_classes: list[str], data_classes: list[str],
                         label_map: str, model_names: list[str], data_name: str) -> tuple[dict, dict]:
    """(metrics over the target classes, what the mapping did) of a model's gathered outputs on a corpus."""
    tm = target_map(model_classes, data_classes, read_label_map(label_map), model_names, data_name, label_map)
    mapped = target_outputs(outputs["logits"], outputs["label"], tm)
    if not len(mapped["label"]):
        raise LakeError(f"--label-map {label_map}: no row of {data_name} has a label that maps to a class")
    metrics = classification_metrics_from(mapped, tm.targets)
    left = np.bincount(outputs["label"][tm.data_to_target[outputs["label"]] < 0], minlength=len(data_classes))
    info = {"label_map": label_map, "targets": tm.targets, "model_classes_per_target": tm.describe(model_classes),
            "never_predicted": tm.unreached(), "rows_kept": int(len(mapped["label"])),
            "rows_left_out": {data_classes[i]: int(n) for i, n in enumerate(left) if n}}
    return metrics, info


def cross_corpus_note(info: dict) -> str:
    parts = ", ".join(f"{t} <- {' + '.join(c) or 'nothing'}" for t, c in info["model_classes_per_target"].items())
    left = ", ".join(f"{k} {v}" for k, v in info["rows_left_out"].items()) or "none"
    never = f" Never predicted (no model class maps to them): {', '.join(info['never_predicted'])}." \
        if info["never_predicted"] else ""
    return (f"Scored across corpora through {info['label_map']}: each class of this set takes the summed probability "
            f"of the model classes mapped to it ({parts}); {info['rows_kept']} rows kept, left out by label: "
            f"{left}.{never} The linear probe and the ablation are not run across corpora.")
