"""Torch's compute threads for the length of a block; a user's OMP_NUM_THREADS comes first.

Ingest gives its encoders the cores its decode workers leave; the demo trains its small
models on one thread. Both set a number for a while and put the old one back.
"""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def compute_threads(n: int | None):
    """torch's intra-op threads are `n` inside the block and what they were after it. `n` None, or
    OMP_NUM_THREADS set by the user, leaves them as they are."""
    import torch  # here: the demo imports this before torch, which it loads while its corpus is made

    before = torch.get_num_threads()
    if n is not None and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
