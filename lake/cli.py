"""How every command line ends: one mechanism from exceptions to a message and an exit status.

    return run_cli(lambda: work(args), kept="finished shards are kept")

  LakeError            "error: <message>"                           exit 2
  OSError              "error: <path>: <cause>: <what to do>"        exit 2 (a full disk, a read-only
                        + what was kept                                       filesystem, a permission, ...)
  Preempted            "stopped: <message>"                         exit 75 (re-run to continue)
  KeyboardInterrupt    "interrupted: <what was kept>"               exit 130

No traceback reaches the user for any of these; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

from lake.errors import PREEMPTED_EXIT, LakeError, Preempted, describe_os_error


def run_cli(work, kept: str = "") -> int:
    """Run `work()` (returns an exit status) and turn the exceptions above into one line each.
    `kept`: what survives a failure, said after it (e.g. "finished shards are kept")."""
    after = f"; {kept}" if kept else ""
    try:
        return int(work() or 0)
    except LakeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return PREEMPTED_EXIT
    except OSError as e:
        print(f"error: {describe_os_error(e)}{after}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted{after}" + ("; re-run the same command to continue" if kept else ""), file=sys.stderr)
        return 130
