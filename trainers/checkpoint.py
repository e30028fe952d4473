"""Checkpoints: one dict of named parts, written atomically by rank 0.

    {"format", "stage", "model", "optimizer", "scheduler", "scaler", "loader", "rng",
     "epoch", "step", "best", "config", "arch", "data", "metrics"}

`arch` holds what defines the model's shapes (dims, class count, taxonomy); `data`
holds the fingerprint and encoders of the shard set it was trained on. Resuming
checks both, and loads every state dict strictly.

Files per stage prefix P: `P_epoch{EEE}.pt` after each epoch (0-based, the newest
`keep_epochs` kept), `P_best.pt` (best by the stage's selection metric) and
`P_last.pt` (the latest state, also written every `save_every_steps`).
"""

from __future__ import annotations

import os
import random
import re
import shutil

import numpy as np
import torch

from lake.errors import LakeError

FORMAT = "emolake-checkpoint-v1"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, stage: str | None = None) -> dict:
    """Load a checkpoint of this project (on CPU); a wrong file gets one clear message."""
    if not os.path.exists(path):
        raise LakeError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise LakeError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise LakeError(f"{path}: not a checkpoint of this project's trainers")
    if stage is not None and ckpt.get("stage") != stage:
        raise LakeError(f"{path}: a {ckpt.get('stage')} checkpoint, but a {stage} checkpoint is needed here")
    return ckpt


def _copy(src: str, dst: str) -> None:
    """dst becomes a copy of src (a hard link where the filesystem allows), atomically."""
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class Checkpointer:
    def __init__(self, save_dir: str, prefix: str, keep_epochs: int = 3, enabled: bool = True):
        self.save_dir, self.prefix, self.keep_epochs, self.enabled = save_dir, prefix, keep_epochs, enabled

    def path(self, which: str | int) -> str:
        name = f"{self.prefix}_epoch{which:03d}.pt" if isinstance(which, int) else f"{self.prefix}_{which}.pt"
        return os.path.join(self.save_dir, name)

    def save_last(self, state: dict) -> None:
        if self.enabled:
            save_atomic(state, self.path("last"))

    def save_epoch(self, state: dict, epoch: int, is_best: bool) -> None:
        if not self.enabled:
            return
        path = self.path(epoch)
        save_atomic(state, path)
        if is_best:  # best before last: a kill in between must not leave `last` naming a best that is not on disk
            _copy(path, self.path("best"))
        _copy(path, self.path("last"))
        if self.keep_epochs > 0:
            # only this run's older epochs: files of a later-numbered earlier run in the same dir stay
            pattern = re.compile(re.escape(self.prefix) + r"_epoch(\d{3,})\.pt$")
            for name in os.listdir(self.save_dir):
                m = pattern.match(name)
                if m and int(m.group(1)) <= epoch - self.keep_epochs:
                    os.remove(os.path.join(self.save_dir, name))

    def resolve_resume(self, resume: str, checkpoint: str) -> str:
        if resume not in ("", "last"):
            return resume
        if checkpoint:
            return checkpoint
        path = self.path("last")
        if not os.path.exists(path):
            raise LakeError(f"--resume: no {os.path.basename(path)} in {self.save_dir}; pass the checkpoint to continue")
        return path
