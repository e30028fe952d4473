"""One writer per set: an exclusive lock an ingest holds from its start to its last byte.

Local sets: an OS file lock (`flock`) on `<parent>/.<name>.lock`, beside the set rather than in
it, since `--overwrite` swaps the set's folder. The kernel drops it when the process ends, so a
killed ingest (kill -9 included) never leaves a stale lock. Sets behind a URL: a lock object
`ROOT/_lock.json` holding the owner (host, pid, since) and a lease that a thread renews; a lock
whose lease ran out, or whose owner is a dead process on this very host, is taken over.
Readers never look at either: reading is never blocked.

A second writer is refused, exit 2: "another ingest (host, pid, since ...) is writing OUT".
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid

from lake import storage
from lake.errors import LakeError
from ingest.write.output import LOCK_OBJECT

LEASE_S = 120.0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}


def _refusal(root: str, owner: dict) -> LakeError:
    return LakeError(f"another ingest ({owner.get('host', '?')}, pid {owner.get('pid', '?')}, since "
                     f"{owner.get('since', '?')}) is writing {root}; wait for it to finish, or write to another --out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SetLock:
    """`with SetLock(root):` ... the set at `root` (a local path or URL) is ours."""

    def __init__(self, root: str, lease_s: float = LEASE_S):
        self.root, self.lease_s = str(root).rstrip("/"), lease_s
        self._fd = None
        self._stop = threading.Event()
        self._thread = None
        self._token = uuid.uuid4().hex

    # -- local ----------------------------------------------------------------------------------
    def _lock_path(self) -> str:
        path = os.path.abspath(storage.local_path(self.root))
        return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")

    def _acquire_local(self) -> None:
        import fcntl

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
            raise _refusal(self.root, owner) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode("utf-8"), 0)
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
        record = {**_owner(), "token": self._token, "lease_until": time.time() + self.lease_s}
        storage.write_bytes_atomic(self._url(), json.dumps(record).encode("utf-8"))

    def _stale(self, held: dict) -> bool:
        if held.get("lease_until", 0) < time.time():
            return True
        return held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) and not _alive(held["pid"])

    def _acquire_remote(self) -> None:
        held = self._read_remote()
        if held and held.get("token") != self._token and not self._stale(held):
            raise _refusal(self.root, held)
        self._write_remote()
        time.sleep(0.2)  # two writers racing: the later PUT wins, and each reads back who that was
        held = self._read_remote()
        if not held or held.get("token") != self._token:
            raise _refusal(self.root, held or {})
        self._thread = threading.Thread(target=self._renew, name="set-lock-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self._write_remote()
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the lease covers two misses
                pass

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
            try:
                held = self._read_remote()
                if held and held.get("token") == self._token:
                    storage.remove(self._url())
            except Exception:  # noqa: BLE001 - cleanup after an error must not hide that error
                pass
