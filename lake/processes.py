"""How the project starts worker processes: from a fork server, never by forking the caller.

A child forked from a process that runs threads inherits every lock another thread held
at that moment, and nothing in the child will ever release it: the child hangs (seen:
corpus workers stuck in FFmpeg's and the import machinery's locks, forked from a test
process running a loopback S3 server and torch's pools). Every process here may run
threads (torch, fsspec's event loop, the shard prefetcher, a test's servers), so no
worker is forked from it. Python 3.12+ warns about such forks; 3.14 stops making them by
default.

Workers come from a fork server instead: a fresh interpreter (started by fork+exec, as
subprocess does), one per process, which imports the modules the workers need once and
forks each worker from itself while it runs no other thread (numpy's OpenBLAS pool, the
only one its imports start, is shut down by OpenBLAS before every fork). A worker then
starts in milliseconds, where a spawned one imports torch again (seconds). Platforms
without a fork server (Windows) spawn.

A module whose code runs in workers calls `preload(__name__)` when it is imported; the
server imports whatever is registered when the first worker starts (later registrations
reach workers as ordinary imports). The server's environment is the one of that moment, so
every worker starts with `WorkerStart`, which gives it its parent's environment and storage
options as they are when the pool starts. `tests/test_processes.py` runs every worker pool
of the project with `os.fork` disabled.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from multiprocessing.context import BaseContext

from lake import storage

_PRELOAD: list[str] = []


def preload(module: str) -> None:
    """Have the fork server import `module` before forking workers (call at import time)."""
    if module not in _PRELOAD:
        _PRELOAD.append(module)


def worker_context() -> BaseContext:
    """The multiprocessing context for every worker pool and DataLoader of the project."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(_PRELOAD))  # read when the server starts; ignored once it runs
    return ctx


class WorkerStart:
    """Run first in every worker (a Pool's `initializer`, a DataLoader's `worker_init_fn`), made when the
    pool starts: the worker then sees what its parent sees at that moment, the environment (a fork
    server's child would see the server's, from when it started: a test's endpoint set since would be
    missing) and the fsspec storage options (`--storage-options`; a new interpreter has none)."""

    def __init__(self):
        self.environ = dict(os.environ)
        self.storage_options = storage.options_snapshot()

    def __call__(self, *_worker_id) -> None:
        for name in set(os.environ) - set(self.environ):
            del os.environ[name]
        os.environ.update(self.environ)
        storage.restore_options(self.storage_options)
