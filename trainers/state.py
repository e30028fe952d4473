"""The loop's own counters: one small stateful part of every checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from lake.errors import LakeError


@dataclass
class TrainState:
    """Steps taken, the epoch in progress, the best validation value so far and the last metrics."""

    metric: str  # the stage's selection metric (maximised)
    step: int = 0
    epoch: int = 0
    best_value: float = -math.inf
    best_epoch: int = -1  # -1: no epoch finished yet
    metrics: dict = field(default_factory=dict)

    def observe(self, epoch: int, metrics: dict, selected: dict | None = None) -> bool:
        """Record an epoch's validation metrics; True when it is the best so far (judged on `selected`: the
        metrics of the set selection looks at, by default `metrics` themselves)."""
        self.metrics = metrics
        value = (selected or metrics)[self.metric]
        if value > self.best_value:
            self.best_value, self.best_epoch = value, epoch
            return True
        return False

    @property
    def best(self) -> dict:
        return {"metric": self.metric, "value": self.best_value, "epoch": self.best_epoch}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "metrics": self.metrics}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_value, self.best_epoch = float(state["best"]["value"]), int(state["best"]["epoch"])
        self.metrics = dict(state.get("metrics", {}))


class LossWatch:
    """The first step whose training loss is not finite (NaN, inf), noted on the device with no sync per step;
    `check` (one sync; a collective under DDP, so every rank stops together) raises it as one line. The loop
    checks at log steps and before anything is saved, so a diverged or poisoned model is never saved as best."""

    def __init__(self, device: torch.device, distributed: bool):
        self.device, self.distributed = device, distributed
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, loss: torch.Tensor, step: int) -> None:
        bad = (self.first < 0) & ~torch.isfinite(loss.detach())
        self.first = torch.where(bad, torch.tensor(step, device=self.device), self.first)

    def check(self, epoch: int, last_saved: str | None) -> None:
        first = self.first.clone()
        if self.distributed:
            dist.all_reduce(first, op=dist.ReduceOp.MAX)
        if int(first) >= 0:
            saved = f"the last checkpoint saved is {last_saved}" if last_saved else "no checkpoint was saved"
            raise LakeError(f"the training loss is not finite (NaN or inf) from step {int(first)} on (epoch "
                            f"{epoch:03d}); stopped without saving it ({saved}): lower --lr, or check the set's "
                            "embeddings with `python -m shards verify`")
