"""Preemption: a cluster sends SIGTERM (or SIGUSR1) some time before it kills a job.

`preemption_signals()` turns those signals into a flag that the long loops (training steps,
ingest clips) poll at safe points: they finish the step or clip in hand, save what resumes
them, and raise `lake.errors.Preempted`. A second signal while stopping is ignored (the
first one already asked); SIGKILL cannot be caught, which is what the journals and
checkpoints are for.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class PreemptionFlag:
    def __init__(self):
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def agreed(self, world, device=None) -> bool:
        """Whether any rank was signalled (a collective under DDP: call it at the same step on every rank,
        so that all ranks stop together instead of one waiting forever in the next all-reduce)."""
        if not world.distributed:
            return bool(self)
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if self else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


@contextmanager
def preemption_signals():
    """Within the block, SIGTERM/SIGUSR1 set the yielded flag instead of killing the process."""
    flag = PreemptionFlag()
    if threading.current_thread() is not threading.main_thread():  # signals can only be caught there
        yield flag
        return

    def handler(signum, _frame):
        if flag.signal is None:
            flag.signal = signum

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
