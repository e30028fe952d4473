"""The stages, by name, and the one door from any checkpoint file to a trained model.

    task, model = load("slm_stage3_best.pt", shards)          # the stage is read from the file
    task, model = load("clap_projectors.pt", shards, "clap")  # or asked for: a file of another stage is refused

A file may be a stage's own checkpoint, the exported CLAP projectors, or the previous tooling's
layouts (its projectors, its stage-3 and MELD files): each stage's `Task.checkpoint_from` says which
files are its own and turns them into its checkpoint dict, and `Task.from_checkpoint` is the one way a
trained task and model are built from that. Evaluation, prediction and the demo come in here; a new
stage is one module with its Task plus one line in STAGES.
"""

from __future__ import annotations

import torch

from lake.catalog import ShardSet
from lake.errors import LakeError
from trainers.checkpoint import read_checkpoint_file
from trainers.clap import ClapTask
from trainers.data import TrainingData
from trainers.loop import Task
from trainers.meld import MeldTask
from trainers.reference import layout_name
from trainers.slm import SlmTask

STAGES: dict[str, type[Task]] = {"clap": ClapTask, "slm": SlmTask, "meld": MeldTask}


def load(path: str, shards: ShardSet | TrainingData | None = None, stage: str | None = None,
         same_classes: bool = True, **files) -> tuple[Task, torch.nn.Module]:
    """(task, trained model in eval mode on the CPU) from any checkpoint file this project accepts.

    `shards`: the set it is used on (checked against what the model was trained on: its encoders, and its classes
    unless `same_classes` is False; the reference tooling's files take their class names from it), or None
    (prediction). `stage`: the stage the caller needs (else the file's). `files`: other checkpoints a layout
    needs (a reference MELD head: `stage3_ckpt`).
    """
    data = TrainingData.of(shards) if isinstance(shards, ShardSet) else shards
    if stage is not None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        return STAGES[stage].load(path, data, same_classes, **files)
    obj = read_checkpoint_file(path)
    for task_cls in STAGES.values():
        ckpt = task_cls.checkpoint_from(obj, path, data, **files)
        if ckpt is not None:
            return task_cls.from_checkpoint(ckpt, data, path, same_classes)
    what = layout_name(obj)
    raise LakeError(f"{path}: {'a ' + what if what else 'not a checkpoint of this project'}; expected a checkpoint "
                    f"of a stage ({', '.join(STAGES)}), CLAP projectors or a file of the previous tooling")
