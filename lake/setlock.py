"""One writer per set: an exclusive lock every command that writes a set holds from its start to its
last byte (the ingest, its repair of a damaged set, `python -m shards cp` into a destination).

Local sets: an OS file lock (`flock`) on `<parent>/.<name>.lock`, beside the set rather than in
it, since `ingest --overwrite` swaps the set's folder. The kernel drops it when the process ends, so
a killed writer (kill -9 included) never leaves a stale lock. Sets behind a URL: a lock object
`ROOT/_lock.json` holding the owner (command, host, pid, since) and a lease that a thread renews; a
lock whose lease ran out, or whose owner is a dead process on this very host, is taken over.
Readers never look at either: reading is never blocked.

A lease can run out under a live writer (its process stopped, its machine suspended, longer than
the lease): another writer then takes the lock over. So a writer asks `check()` before each thing
it writes: it stops with one line once the lock is no longer its own, rather than writing into the
other writer's set; and its renewal thread never writes over another owner's lock.

A second writer is refused, exit 2: "another shards cp (host, pid, since ...) is writing DST".
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import threading
import time
import uuid

from lake import storage
from lake.errors import LakeError

LOCK_OBJECT = "_lock.json"
"""The lock object at the root of a set behind a URL (a writer's listing of the root skips it)."""
LEASE_S = 120.0
_HELD: set[str] = set()
"""Tokens of the remote locks this process holds now: a record naming this process with another token is
one it held and could not remove (the store was unreachable at the end), so it is stale."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _who(owner: dict) -> str:
    """'shards cp (host, pid 12, since 2026-...)' of a lock record (records of older code name no command)."""
    return (f"{owner.get('command', 'writer')} ({owner.get('host', '?')}, pid {owner.get('pid', '?')}, since "
            f"{owner.get('since', '?')})")


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SetLock:
    """`with SetLock(root, "shards cp"):` ... the set at `root` (a local path or URL) is ours.
    `command`: who we are, as a refused writer is told; `lease_s`: behind a URL (default LEASE_S)."""

    def __init__(self, root: str, command: str = "ingest", lease_s: float | None = None):
        self.root, self.command = str(root).rstrip("/"), command
        self.lease_s = lease_s or LEASE_S
        self._fd = None
        self._stop = threading.Event()
        self._thread = None
        self._token = uuid.uuid4().hex
        self._lost: dict | None = None  # the record of whoever took the lock over (remote)

    def _owner(self) -> dict:
        return {"command": self.command, "host": socket.gethostname(), "pid": os.getpid(), "since": _now()}

    def _refusal(self, owner: dict) -> LakeError:
        return LakeError(f"another {_who(owner)} is writing {self.root}; wait for it to finish, or write the set "
                         "elsewhere")

    # -- local ----------------------------------------------------------------------------------
    def _lock_path(self) -> str:
        path = os.path.abspath(storage.local_path(self.root))
        return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")

    def _acquire_local(self) -> None:
        path = self._lock_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
            except (OSError, ValueError):
                owner = {}
            os.close(fd)
            raise self._refusal(owner) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._owner()).encode("utf-8"), 0)
        self._fd = fd

    # -- object store ---------------------------------------------------------------------------
    def _url(self) -> str:
        return storage.join(self.root, LOCK_OBJECT)

    def _read_remote(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self._url()).decode("utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # a torn or foreign object: treat as expired

    def _write_remote(self) -> None:
        record = {**self._owner(), "token": self._token, "lease_until": time.time() + self.lease_s}
        storage.write_bytes_atomic(self._url(), json.dumps(record).encode("utf-8"))

    def _stale(self, held: dict) -> bool:
        if held.get("lease_until", 0) < time.time():
            return True
        if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
            return False
        if held["pid"] == os.getpid():
            return held.get("token") not in _HELD
        return not pid_alive(held["pid"])

    def _acquire_remote(self) -> None:
        held = self._read_remote()
        if held and held.get("token") != self._token and not self._stale(held):
            raise self._refusal(held)
        self._write_remote()
        time.sleep(0.2)  # two writers racing: the later PUT wins, and each reads back who that was
        held = self._read_remote()
        if not held or held.get("token") != self._token:
            raise self._refusal(held or {})
        _HELD.add(self._token)
        self._thread = threading.Thread(target=self._renew, name="set-lock-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                held = self._read_remote()
                if held is None or held.get("token") != self._token:
                    self._lost = held or {}  # taken over while we were stopped: never write over its lock
                    return
                self._write_remote()
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the lease covers two misses
                pass

    def check(self) -> None:
        """Raise if the lock is no longer ours (behind a URL: taken over after our lease ran out); a writer
        asks before each shard and before its manifest. A local flock cannot be lost: nothing to ask."""
        if self._thread is None:
            return
        held = self._lost if self._lost is not None else self._read_remote()
        if held is None or held.get("token") != self._token:
            self._lost = held or {}
            other = f"another {_who(held)}" if held else "someone (the lock object is gone)"
            raise LakeError(f"{self.root}: this {self.command}'s lock was taken over by {other} after its lease ran "
                            f"out (this process was stopped for over {self.lease_s:g} s); it stopped without writing "
                            "more. Check the set with `python -m shards verify`, and re-run once the other writer "
                            "has finished")

    # -- both -----------------------------------------------------------------------------------
    def __enter__(self) -> "SetLock":
        if storage.is_url(self.root):
            self._acquire_remote()
        else:
            self._acquire_local()
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the file itself stays (it is only a name)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            _HELD.discard(self._token)
            try:
                held = self._read_remote()
                if held and held.get("token") == self._token:
                    storage.remove(self._url())
            except Exception:  # noqa: BLE001 - cleanup after an error must not hide that error
                pass
