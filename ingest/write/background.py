"""The background shard writer: blocks go into a queue; a thread writes and commits them.

The encoding loop never waits on disk (only on a full queue, which means the disk
is the bottleneck). An exception in the thread is re-raised in the caller on its
next call, so a full disk stops the run instead of being lost.
"""

from __future__ import annotations

import queue
import threading

from shards.writer import RotatingWriter


class BackgroundWriter:
    def __init__(self, writer: RotatingWriter, max_queued_blocks: int = 8):
        self.writer = writer
        self._q: queue.Queue = queue.Queue(max_queued_blocks)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                kind, *args = item
                if self._error is not None:
                    continue  # drain without writing after a failure
                if kind == "block":
                    self.writer.add_block(*args)
                elif kind == "sync":
                    self.writer.close()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = e
            finally:
                if item is not None and item[0] == "sync":
                    item[1].set()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, split: str, block: dict) -> None:
        self._check()
        self._q.put(("block", split, block))

    def sync(self) -> None:
        """Write everything queued and close (commit) every open shard."""
        done = threading.Event()
        self._q.put(("sync", done))
        done.wait()
        self._check()

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join()
        self._check()

    def abort(self) -> None:
        """After a failure or an interrupt: stop the thread and drop unfinished shards (never raises over
        the failure that brought us here)."""
        self._error = self._error or RuntimeError("aborted")
        try:
            self._q.put(None, timeout=30)
        except queue.Full:  # the thread is stuck writing: it is a daemon, and the shards it holds stay uncommitted
            return
        self._thread.join(timeout=30)
        self.writer.abort()
