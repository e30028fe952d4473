"""What a training run tells people: console lines and TensorBoard scalars, from rank 0 only.

Step losses are printed every `--log-every` steps when the output is not a terminal (a
job's log file); on a terminal they show on the epoch's progress bar instead. The
TensorBoard writer is closed by `close()`, which the loop calls on every exit.
"""

from __future__ import annotations

import sys


class RunLog:
    def __init__(self, tb_dir: str, enabled: bool):
        self.enabled, self._tb_dir, self._tb = enabled, tb_dir, None
        self._terminal = sys.stdout.isatty() and sys.stderr.isatty()  # else the bar is not where the lines go

    @property
    def tb(self):
        if self._tb is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(self._tb_dir)
        return self._tb

    def line(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def step(self, step: int, loss: float, lr: float, logs: dict, bar) -> None:
        """A log step: scalars to TensorBoard; the loss on the bar (terminal) or as a line (log file)."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in logs.items()}  # tensors: .item() happens here, at log steps only
        self.tb.add_scalar("train/loss", loss, step)
        self.tb.add_scalar("train/lr", lr, step)
        for k, v in values.items():
            self.tb.add_scalar(f"train/{k}", v, step)
        if self._terminal:
            bar.set_postfix(loss=f"{loss:.4f}")
        else:
            extra = "".join(f"  {k} {v:.4g}" for k, v in values.items())
            print(f"step {step}  loss {loss:.4f}  lr {lr:.2e}{extra}", flush=True)

    def scalars(self, prefix: str, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
        self.tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
