"""The local shard cache of sets behind a URL: whole shards, content-addressed, bounded, shared.

Why whole shards: an epoch reads every block of its split. Fetched once (one
streamed read) and memory-mapped, a shard serves the second epoch as fast as a
local set, where ranged reads would pay a round trip per block member, every epoch.

The cache directory:

    <sha256>.tar          a shard, named by its content hash: two sets sharing a shard share the
                          entry, and a replaced shard has another name, so it is never served stale
    <sha256>.tar.*.tmp    a download in progress; renamed into place only after its size and
                          sha256 match the manifest, so no reader ever sees a torn or altered shard
    locks/<xx>.lock       flock()ed while a shard whose hash starts with xx is fetched, so processes
                          sharing the cache (ranks, loader workers, two runs) fetch each shard once;
                          the kernel drops a dead process's locks: a crash cannot wedge the cache

Eviction is least-recently-used (a use touches the entry's mtime), down to the limit, after each
download. An evicted entry that a reader still maps stays readable (the inode lives until unmapped).
When the shards a loader needs do not fit, the loader does not cache at all and reads the recorded
block byte ranges: cycling a working set larger than the cache through it would only thrash.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import glob
import os
import shutil
import sys
import threading

from lake.catalog import ShardSet
from lake.errors import LakeError
from lake.progress import human_bytes
from lake.schema import ShardEntry
from shards.copy import transfer
from shards.format import TMP_SUFFIX
from shards.mapped import shard_gone

DISK_RESERVE = 1 << 30  # free disk space a download must leave


class ShardCache:
    """Whole shards under `directory`, at most `limit_bytes` of them. Plain data: safe to pickle into workers."""

    def __init__(self, directory: str, limit_bytes: int):
        self.directory, self.limit_bytes = str(directory), int(limit_bytes)
        try:
            os.makedirs(os.path.join(self.directory, "locks"), exist_ok=True)
        except OSError as e:
            raise LakeError(f"{self.directory}: cannot create the shard cache ({e.strerror}); "
                            "choose another with --cache-dir or EMOLAKE_CACHE_DIR") from None

    def path_of(self, entry: ShardEntry) -> str:
        return os.path.join(self.directory, f"{entry.sha256}.tar")

    def lookup(self, entry: ShardEntry, touch: bool = True) -> str | None:
        """The cached file of this shard, or None. `touch` records the use (LRU)."""
        path = self.path_of(entry)
        try:
            if os.stat(path).st_size != entry.bytes:
                return None  # not written by this cache (only verified downloads get this name)
            if touch:
                os.utime(path)
        except OSError:
            return None
        return path

    @contextlib.contextmanager
    def _lock(self, name: str, blocking: bool = True):
        with open(os.path.join(self.directory, "locks", f"{name}.lock"), "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True  # released when f closes

    def fetch(self, url: str, entry: ShardEntry, progress=None) -> str:
        """The cached file of the shard at `url`, downloading it (once across processes) if absent."""
        final = self.path_of(entry)
        with self._lock(entry.sha256[:2]):
            hit = self.lookup(entry)
            if hit is not None:
                return hit  # another process fetched it while we waited
            for stale in glob.glob(glob.escape(final) + ".*" + TMP_SUFFIX):
                os.remove(stale)  # we hold its lock: whoever wrote it died
            free = shutil.disk_usage(self.directory).free
            if entry.bytes > free - DISK_RESERVE:
                raise LakeError(f"{self.directory}: {human_bytes(free)} free, too little to cache {url} "
                                f"({human_bytes(entry.bytes)} and {human_bytes(DISK_RESERVE)} to spare); free "
                                "space, or pass --cache-dir elsewhere")
            try:
                transfer(url, final, entry, progress)  # verified, then renamed into place
            except FileNotFoundError:
                raise shard_gone(url, entry) from None
        self.evict(keep={entry.sha256})
        return final

    def used_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, path) of every finished entry."""
        out = []
        for name in os.listdir(self.directory):
            if name.endswith(".tar") and len(name) == 68:
                path = os.path.join(self.directory, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # evicted by another process just now
                out.append((st.st_mtime, st.st_size, path))
        return out

    def evict(self, keep=frozenset()) -> None:
        """Delete least recently used entries (never those in `keep`) until the rest fit; drop dead downloads."""
        with self._lock("evict"):
            for part in glob.glob(os.path.join(glob.escape(self.directory), "*.tar.*" + TMP_SUFFIX)):
                with self._lock(os.path.basename(part)[:2], blocking=False) as free:
                    if free:  # nobody is downloading under this lock: the part is a dead process's
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(part)
            entries = sorted(self._entries())
            total = sum(size for _, size, _ in entries)
            for _, size, path in entries:
                if total <= self.limit_bytes:
                    break
                if os.path.basename(path)[:-4] in keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                total -= size


def _warn(message: str) -> None:
    """One `warning:` line on stderr. Not `warnings.warn`: that prints the Python source line that warned
    after the message, which tells a user nothing."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def cache_for(shards: ShardSet, entries: list[ShardEntry]) -> ShardCache | None:
    """The cache a reader of these shards uses; None for a local set, a disabled cache, or too little room."""
    if shards.cache_dir is None or shards.cache_limit_gb <= 0:
        return None
    limit = int(shards.cache_limit_gb * 1e9)
    unique = list({e.sha256: e for e in entries}.values())
    need = sum(e.bytes for e in unique)
    if need > limit:
        _warn(f"{shards.root}: these shards ({human_bytes(need)}) exceed the shard cache's limit "
              f"({human_bytes(limit)}, --cache-limit {shards.cache_limit_gb:g} GB); reading the recorded block "
              "ranges instead, every epoch (raise --cache-limit to cache them)")
        return None
    cache = ShardCache(shards.cache_dir, limit)
    missing = sum(e.bytes for e in unique if cache.lookup(e, touch=False) is None)
    free = shutil.disk_usage(cache.directory).free
    if missing > free - DISK_RESERVE:
        _warn(f"{cache.directory}: {human_bytes(free)} free, {human_bytes(missing)} of shards to cache and "
              f"{human_bytes(DISK_RESERVE)} to spare; reading the recorded block ranges instead (free space or "
              "pass --cache-dir)")
        return None
    return cache


class Prefetcher:
    """Background threads fetching shards into the cache, in the order the loader will first need them.

    Started per epoch (`start`), in the loading process only: readers never wait for
    it, they read block ranges until a shard has arrived (`shards.mapped.ShardMap`).
    Threads exist only while there is work (the loader spawns its workers: none of them inherits one).
    """

    def __init__(self, caches: list[ShardCache], urls: list[str], entries: list[ShardEntry], threads: int = 4):
        """`caches[i]`: where shard i goes (several sets read together may have caches of their own)."""
        self.caches, self.urls, self.entries, self.threads = caches, urls, entries, threads
        self._todo: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._alive = self._busy = 0
        self.error: BaseException | None = None

    def needed(self) -> bool:
        """Whether any shard is still to fetch; records a use of every cached one (their LRU order)."""
        return any([c.lookup(e) is None for c, e in zip(self.caches, self.entries)])  # a list: touch them all

    def start(self, order) -> None:
        """Fetch these shard indices (first ones first), replacing what is still queued."""
        with self._cond:
            self._todo = collections.deque(dict.fromkeys(int(i) for i in order))
            self.error = None
            spawn = max(0, min(self.threads, len(self._todo)) - self._alive)
            self._alive += spawn
        for _ in range(spawn):
            threading.Thread(target=self._run, name="shard-prefetch", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._todo or self.error is not None:
                    self._alive -= 1
                    self._cond.notify_all()
                    return
                i = self._todo.popleft()
                self._busy += 1
            try:
                if self.caches[i].lookup(self.entries[i]) is None:
                    self.caches[i].fetch(self.urls[i], self.entries[i])
            except BaseException as e:  # reported to the loader by `check`
                with self._cond:
                    self.error = self.error or e
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def check(self) -> None:
        """Raise what a prefetch thread met (an altered shard, a lost connection), once."""
        error, self.error = self.error, None
        if error is not None:
            raise error

    def wait(self) -> None:
        """Until everything queued is fetched (benchmarks and tests; the loader never waits)."""
        with self._cond:
            while (self._todo and self.error is None) or self._busy:
                self._cond.wait()
        self.check()
