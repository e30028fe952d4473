"""What an ingest run does with its output, decided on rank 0 and told to every rank.

Rank 0 looks at the output (and completes an interrupted --overwrite swap first), compares
the plan it finds with this command's (ingest.write.plan), checks a finished set and reopens
a damaged one (ingest.write.repair); every rank then gets the same (Status, SetOutput): the
object itself, broadcast, so no rank rebuilds it from strings.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum

from lake.distributed import World
from lake.errors import LakeError
from lake.schema import MANIFEST_NAME
from ingest.write.output import WORK_DIR, SetOutput, finish_swap, overwrite_sibling
from ingest.write.plan import (PLAN_NAME, check_ranks_agree, differences, plan_in_progress, plan_of_finished,
                               write_plan)
from ingest.write.repair import inspect_set, reopen


class Status(StrEnum):
    """What a run does with its output (prepare_output), and what it ends with (ingest.run.ingest_set)."""

    NEW = "new"  # nothing there yet: the plan is written, every unit is read
    RESUME = "resume"  # an unfinished ingest of the same plan: its committed shards are kept
    REPAIR = "repair"  # a damaged finished set reopened, with clips to ingest again
    MERGE = "merge"  # a damaged finished set reopened with nothing to re-read: only index or manifest to rebuild
    COMPLETE = "complete"  # a finished, sound set: nothing to do
    DONE = "done"  # the end of a run that built (or finished) a set


def prepare_output(cfg, plan: dict, world: World, out: SetOutput) -> tuple[Status, SetOutput]:
    """(status, where it builds): where it builds is `out`, or with --overwrite the sibling the new set
    is made in before the swap. A set made with other settings is refused, listing the differences."""
    check_ranks_agree(plan, world)
    decided: list = [None]
    if world.is_main:
        try:
            decided = [_decide(cfg, plan, out)]
        except LakeError as e:
            decided = [e]  # every rank raises it, not only rank 0
    if world.distributed:
        import torch.distributed as dist  # torch only under torchrun: seconds of start-up a single rank does not need

        dist.broadcast_object_list(decided, src=0)
    if isinstance(decided[0], LakeError):
        raise decided[0]
    return decided[0]


def _decide(cfg, plan: dict, out: SetOutput) -> tuple[Status, SetOutput]:
    if not out.remote and os.path.isfile(out.root):
        raise LakeError(f"--out {out.root}: is a file, not a shard set's folder; choose another path")
    note = finish_swap(out)
    if note:
        print(note, file=sys.stderr)
    ours = out.exists(MANIFEST_NAME) or out.exists(WORK_DIR, PLAN_NAME)
    if not ours and not out.is_empty():
        raise LakeError(f"{out.root}: exists, is not empty and is not a shard set; choose another --out")
    if cfg.overwrite and ours:
        build = overwrite_sibling(out)
        status, _ = _decide_plain(cfg, plan, build, overwrite_stale=True)
        return status, build
    return _decide_plain(cfg, plan, out)


def _decide_plain(cfg, plan: dict, out: SetOutput, overwrite_stale: bool = False) -> tuple[Status, SetOutput]:
    """The status of `out` itself. `overwrite_stale`: an --overwrite build: a partial one made with other
    settings is wiped (it was never a set anyone read), not refused."""
    if out.exists(MANIFEST_NAME):
        if overwrite_stale and differences(plan_of_finished(out) or {}, plan):  # an old --overwrite build, never swapped in
            out.remove_tree()
        else:
            return _finished(cfg, plan, out), out
    started = plan_in_progress(out)
    if started is not None:
        diff = differences(started, plan)
        if not diff:
            return Status.RESUME, out
        if not overwrite_stale:
            raise LakeError(f"{out.root}: an unfinished ingest with other settings is here:\n" + "\n".join(diff)
                            + "\nre-run it with its own settings to resume, or pass --overwrite to start afresh")
        out.remove_tree()
    write_plan(out, plan)
    return Status.NEW, out


def _finished(cfg, plan: dict, out: SetOutput) -> Status:
    """A set with a manifest: refuse other settings, check it, and reopen it if it is damaged."""
    old = plan_of_finished(out)  # None: unreadable, rebuilt below under this command's settings
    diff = differences(old, plan) if old is not None else []
    if diff:
        raise LakeError(f"{out.root}: a finished set made with other settings:\n" + "\n".join(diff)
                        + "\nwrite to another --out, or pass --overwrite to replace it")
    found = inspect_set(out, deep=cfg.check)
    if found.sound:
        _clean_finished(out)
        return Status.COMPLETE
    print(f"{out.root}: damaged, repairing it:\n" + "\n".join(f"  {p}" for p in found.problems[:10])
          + (f"\n  ... {len(found.problems) - 10} more" if len(found.problems) > 10 else ""), file=sys.stderr)
    done, reingest = reopen(out, plan, found)
    for line in done:
        print(f"repair: {line}", file=sys.stderr)
    return Status.REPAIR if reingest else Status.MERGE


def _clean_finished(out: SetOutput) -> None:
    """Leftovers of a run killed after its manifest was written (its work folder, temporary files)."""
    out.remove_tree(WORK_DIR)
    for name in out.listdir():
        if ".tmp-" in name:
            out.remove(name)
