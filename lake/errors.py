"""The exceptions a command line turns into one line and an exit status (lake.cli.run_cli).

`LakeError`: a problem a user can fix (bad path, wrong version, mismatch); its message
names the file and the problem, and says what to do where that is known. `Preempted`:
a stop signal was obeyed and the work saved. OS errors (a full disk, a read-only
filesystem, a permission) are described by `describe_os_error`, naming the path.
"""

import contextlib
import errno
import os

PREEMPTED_EXIT = 75
"""Exit status of a run stopped by SIGTERM/SIGUSR1 after saving what resumes it (EX_TEMPFAIL:
re-run the same command)."""


class LakeError(Exception):
    """A user-facing error: its message is the whole report."""


class Preempted(Exception):
    """The job was asked to stop (SIGTERM/SIGUSR1) and stopped cleanly; its message says how to continue."""


_OS_HINTS = {
    errno.ENOSPC: "no space left on the device holding {path}: free space (or point the output elsewhere) and re-run",
    errno.EDQUOT: "disk quota exceeded on the device holding {path}: free space and re-run",
    errno.EROFS: "{path} is on a read-only filesystem: choose a writable location",
    errno.EACCES: "permission denied for {path}: choose a location you can write, or fix its permissions",
    errno.EPERM: "operation not permitted on {path}: choose a location you can write, or fix its permissions",
    errno.ENOTDIR: "{path}: a part of this path is a file, not a directory: choose another path",
    errno.EISDIR: "{path} is a directory where a file was expected",
    errno.EEXIST: "{path} already exists (and is in the way): remove it or choose another path",
    errno.ENOENT: "{path}: no such file or directory",
    errno.EIO: "input/output error on {path}: the disk or network filesystem failed; check it and re-run",
}


def describe_os_error(e: OSError) -> str:
    """One line for an OS error: the path it concerns, what happened, what to do."""
    path = e.filename if e.filename is not None else "(unknown path)"
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    hint = _OS_HINTS.get(e.errno)
    if hint:
        return hint.format(path=path)
    return f"{path}: {e.strerror or type(e).__name__}" + (f" ({e})" if not e.strerror else "")


@contextlib.contextmanager
def about(path):
    """OS errors raised inside name `path` when they name no file themselves: a write() or fsync() that fails
    (a full disk) does not say which file it was writing, and the message must."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
