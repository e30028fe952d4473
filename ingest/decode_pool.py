"""Decode ahead of the encoders in worker processes, in order, with bounded memory.

A producer thread reads clips from the source (tar members, mp4 paths) and submits
them to a process pool in small chunks; at most `max_pending` clips are in flight,
so memory stays bounded however large a source unit is (Pool.imap would read the
whole input ahead). The consumer (the encoding loop, on the GPU's thread) gets
results in submission order and never reads or decodes itself.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import replace
from typing import Callable, Iterable, Iterator

_DONE = object()


def _decode_one(clip, max_seconds: float):
    from ingest.decode import DecodeError, decode_audio

    try:
        decoded = decode_audio(clip.audio if clip.audio is not None else clip.path, max_seconds=max_seconds or None)
        reason = None
    except DecodeError as e:
        decoded, reason = None, str(e)
    except Exception as e:  # noqa: BLE001 - a clip must never stop the run
        decoded, reason = None, f"decode error: {type(e).__name__}: {e}"
    return replace(clip, audio=None), decoded, reason


def decode_chunk(items: list) -> list:
    """Runs in a decode worker: [(Clip, max_seconds)] in, [(clip without its bytes, Decoded or None, reason)] out."""
    return [_decode_one(clip, max_seconds) for clip, max_seconds in items]


class OrderedDecoder:
    def __init__(self, pool, fn: Callable[[list], list], chunk: int = 4, max_pending: int = 1024):
        self.pool, self.fn, self.chunk = pool, fn, chunk
        self._slots = threading.Semaphore(max(1, max_pending // chunk))

    def map(self, items: Iterable) -> Iterator:
        results: queue.Queue = queue.Queue()
        stop = threading.Event()

        def produce():
            try:
                batch = []
                for item in items:
                    if stop.is_set():
                        return
                    batch.append(item)
                    if len(batch) == self.chunk:
                        self._submit(batch, results)
                        batch = []
                if batch:
                    self._submit(batch, results)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                results.put(e)
            finally:
                results.put(_DONE)

        thread = threading.Thread(target=produce, name="clip-reader", daemon=True)
        thread.start()
        try:
            while True:
                r = results.get()
                if r is _DONE:
                    break
                if isinstance(r, BaseException):
                    raise r
                try:
                    out = r.get()
                finally:
                    self._slots.release()
                yield from out
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting for a slot
                self._slots.release()
                thread.join(timeout=0.05)

    def _submit(self, batch: list, results: queue.Queue) -> None:
        self._slots.acquire()
        results.put(self.pool.apply_async(self.fn, (batch,)))
