"""The loop's own counters: one small stateful part of every checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


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
