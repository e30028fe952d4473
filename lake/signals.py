"""Preemption: a cluster sends SIGTERM (or SIGUSR1) some time before it kills a job.

`preemption_signals()` turns those signals into a flag that the long loops (training steps,
ingest clips) poll at safe points: they finish the step or clip in hand, save what resumes
them, and raise `lake.errors.Preempted`. The first Ctrl-C (SIGINT) interrupts as Python's
always does (KeyboardInterrupt).

A second SIGTERM or SIGINT, after any first stop signal, ends the process at once: the first
one is being obeyed, or cannot be (a read from a store that stopped answering), and whoever
sends a second one means it. Nothing is torn by that: checkpoints and shards are written
to a temporary name and renamed, so what the first one's save finished is kept, and the
journals and `--resume` take it from there, as after SIGKILL. A repeated SIGUSR1 (a
scheduler's notice, sometimes sent again) is not a second request.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)
STOP_NOW = tuple(s for s in (getattr(signal, "SIGTERM", None), signal.SIGINT) if s is not None)


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


def stop_now(signum: int) -> None:
    """End the process at once, killed by `signum` as if nothing had caught it (exit 128 + signum to a shell),
    after one line saying so. No cleanup runs: it is what a second signal asks for."""
    name = signal.Signals(signum).name
    os.write(2, f"\nstopped: a second stop signal ({name}); ending now: what was saved is kept, re-run the same "
                "command to continue from it\n".encode())
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # a signal whose default is not to end the process


@contextmanager
def preemption_signals():
    """Within the block, SIGTERM/SIGUSR1 set the yielded flag instead of killing the process, and a second
    SIGTERM or SIGINT after any first one ends it at once (`stop_now`)."""
    flag = PreemptionFlag()
    if threading.current_thread() is not threading.main_thread():  # signals can only be caught there
        yield flag
        return
    first: list[int] = []

    def handler(signum, _frame):
        if first and signum in STOP_NOW:
            stop_now(signum)
        if not first:
            first.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # the first Ctrl-C, as Python's own handler does
        if flag.signal is None:
            flag.signal = signum

    previous = {s: signal.signal(s, handler) for s in dict.fromkeys(SIGNALS + STOP_NOW)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
