"""Decode ahead of the encoders in worker processes, in order, with bounded memory.

A producer thread reads clips from the source (tar members, mp4 paths) and submits
them to a process pool in small chunks; at most `max_pending` clips are in flight,
so memory stays bounded however large a source unit is (Pool.imap would read the
whole input ahead). The consumer (the encoding loop, on the GPU's thread) gets
results in submission order and never reads or decodes itself. A worker that dies
costs only the clip it died on.

An audio encoder that is CPU work (openSMILE's functionals) runs here too, right after each
clip's decode (`chunk_fn`): it then scales with the decode workers and the encoding loop only
packs what they computed.

A long clip's wave does not travel through the result pipe: pickled, it would be a copy in the
worker's message and two in the parent (the bytes received and the array made from them), so a
one-hour clip (230 MB of wave) would cost the parent twice that for a while. The worker writes it
to a file in /dev/shm (memory, not disk) and the parent maps that file as the wave's own memory
(`_SharedWave`): one copy in all once it has arrived.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import mmap
import os
import queue
import sys
import tempfile
import threading
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

import numpy as np

from ingest.decode import Decoded, DecodeError, decode_audio

_DONE = object()


@dataclass
class Featured(Decoded):
    """A decoded clip with the audio features its decode worker computed: float32 [L, D], or None
    and why the encoder cannot use the clip (`failure`, "category: detail"). The wave stays in the
    worker (empty here: nothing encodes it again); `encoded_samples` keeps its length."""
    features: np.ndarray | None = None
    failure: str | None = None
    encoded_samples: int = 0

    @property
    def samples(self) -> int:
        return self.encoded_samples


SHARED_MIN_BYTES = 8 << 20  # waves from ~2 minutes up travel through /dev/shm
SHM_DIR = "/dev/shm"
_PREFIX = "emolake-wave-"


class _SharedWave:
    """A decoded clip whose wave waits in a /dev/shm file; unpickled in the parent as the usual
    `(clip, Decoded, None)`, the wave mapped from that file (`_received`)."""

    def __init__(self, clip, decoded: Decoded, path: str, samples: int):
        self.clip, self.decoded, self.path, self.samples = clip, decoded, path, samples

    def __reduce__(self):
        return _received, (self.clip, self.decoded, self.path, self.samples)


def _shared(clip, decoded: Decoded):
    """In the worker: the wave written to a /dev/shm file, or None where there is none or no room for it."""
    if not os.path.isdir(SHM_DIR):
        return None
    try:
        fd, path = tempfile.mkstemp(prefix=f"{_PREFIX}{os.getppid()}-", dir=SHM_DIR)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, decoded.wave.nbytes)  # no room: an error now, not SIGBUS later
            decoded.wave.tofile(f)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(path)
        return None
    return _SharedWave(clip, replace(decoded, wave=np.empty(0, np.float32)), path, len(decoded.wave))


def _received(clip, decoded: Decoded, path: str, samples: int) -> tuple:
    """In the parent, while the result is unpickled: the wave is the file's memory (its name is removed at
    once: the mapping keeps it until the wave is dropped)."""
    try:
        with open(path, "r+b") as f:
            memory = mmap.mmap(f.fileno(), samples * 4)
        os.remove(path)
    except (OSError, ValueError) as e:
        return clip, None, f"decode error: the decoded wave was lost on its way from the decode worker ({e})"
    return clip, replace(decoded, wave=np.frombuffer(memory, np.float32, count=samples)), None


def _remove_orphans(pid: int | None = None) -> None:
    """Wave files nobody will map: those of `pid` (results never received), or of every process that is gone
    (a parent killed with results in flight)."""
    for path in glob.glob(os.path.join(SHM_DIR, f"{_PREFIX}{pid if pid is not None else ''}*")):
        owner = os.path.basename(path)[len(_PREFIX):].split("-", 1)[0]
        if pid is None:
            try:
                os.kill(int(owner), 0)
                continue  # alive: its results are still on their way
            except ProcessLookupError:
                pass
            except (PermissionError, ValueError):
                continue
        with contextlib.suppress(OSError):
            os.remove(path)


def _decode_one(clip, max_seconds: float, features: Callable | None = None):
    try:
        decoded = decode_audio(clip.audio if clip.audio is not None else clip.path, max_seconds=max_seconds or None,
                               start=clip.start, end=clip.end)
        reason = None
    except DecodeError as e:
        decoded, reason = None, str(e)
    except Exception as e:  # noqa: BLE001 - a clip must never stop the run
        decoded, reason = None, f"decode error: {type(e).__name__}: {e}"
    clip = replace(clip, audio=None)
    if decoded is not None and features is not None:
        feats, failure = features(decoded.wave)
        decoded = Featured(np.empty(0, np.float32), decoded.duration_s, decoded.cut, feats, failure, len(decoded.wave))
    if decoded is not None and decoded.wave.nbytes >= SHARED_MIN_BYTES:
        return _shared(clip, decoded) or (clip, decoded, reason)
    return clip, decoded, reason


def decode_chunk(items: list, features: Callable | None = None) -> list:
    """Runs in a decode worker: [(Clip, max_seconds)] in, [(clip without its bytes, Decoded or None, reason)] out.
    With `features` (wave -> (float32 [L, D] or None, failure or None)) every decoded clip is `Featured`."""
    return [_decode_one(clip, max_seconds, features) for clip, max_seconds in items]


def one_thread() -> None:
    """A decode worker's start: one compute thread. The workers together get the rank's cores, so a
    worker's own thread pool (torch's for fbank, OpenMP's) would only oversubscribe them: measured on
    2 cores, 2 workers each with 2 threads beside a 2-thread text encoder spent most of their CPU
    waiting on each other's spinning threads. Set before the features' modules are imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    torch = sys.modules.get("torch")  # imported by the features, if at all, after this runs
    if torch is not None:
        torch.set_num_threads(1)


def chunk_fn(audio_enc) -> Callable[[list], list]:
    """What the decode workers run for this audio encoder: decoding, plus the encoder's features
    where it computes them on the CPU (a picklable `worker_features(wave)`; no others have one)."""
    features = getattr(audio_enc, "worker_features", None)
    return functools.partial(decode_chunk, features=features) if features is not None else decode_chunk


def crashed(item) -> tuple:
    """The record of a clip whose decode worker died (an FFmpeg crash, the OOM killer)."""
    clip, _ = item
    return replace(clip, audio=None), None, "decode error: the decoder process died on this clip (crash or out of memory)"


class OrderedDecoder:
    """Ordered, bounded decoding in a process pool that survives a worker dying.

    `new_pool()` makes a `concurrent.futures.ProcessPoolExecutor` (spawned workers: the parent holds
    CUDA contexts and threads). When a worker dies the pool is broken: it is replaced, and the chunks
    it held are decoded again one clip at a time, so only the clip that kills a worker is lost
    (`on_crash(item)` gives its record).
    """

    def __init__(self, new_pool: Callable, fn: Callable[[list], list], chunk: int = 4, max_pending: int = 1024,
                 on_crash: Callable = crashed):
        self.new_pool, self.fn, self.chunk, self.on_crash = new_pool, fn, chunk, on_crash
        _remove_orphans()  # of an ingest killed with long waves in flight
        self.pool = new_pool()
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max(1, max_pending // chunk))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        _remove_orphans(os.getpid())

    def terminate(self) -> None:
        for proc in list(getattr(self.pool, "_processes", {}).values()):
            proc.terminate()
        self.pool.shutdown(wait=False, cancel_futures=True)
        _remove_orphans(os.getpid())

    def _replace(self, broken) -> None:
        with self._lock:
            if self.pool is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                self.pool = self.new_pool()

    def _run_alone(self, item) -> tuple:
        pool = self.pool
        try:
            return pool.submit(self.fn, [item]).result()[0]
        except BrokenProcessPool:
            self._replace(pool)
            return self.on_crash(item)

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
                pool, future, batch = r
                try:
                    out = future.result() if future is not None else None
                except BrokenProcessPool:
                    out = None
                finally:
                    self._slots.release()
                if out is None:  # its worker died: a fresh pool, one clip at a time
                    self._replace(pool)
                    out = [self._run_alone(item) for item in batch]
                yield from out
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting for a slot
                self._slots.release()
                thread.join(timeout=0.05)

    def _submit(self, batch: list, results: queue.Queue) -> None:
        self._slots.acquire()
        pool = self.pool
        try:
            future = pool.submit(self.fn, batch)
        except BrokenProcessPool:  # broken since; the consumer replaces it and retries
            future = None
        results.put((pool, future, batch))
