"""The ingest plan: what decides which rows a set holds and what they mean, and what is done.

The plan (name, source and its split policy, encoder records, taxonomy, fields, limits)
is written to `_work/plan.json` when a set is started and kept in the manifest when it
is finished. A re-run of the same command compares its plan with the one it finds:
equal means resume (or nothing to do); different means another set, refused with the
list of differences, so two incompatible runs can never write into one set.
"""

from __future__ import annotations

import json
import os
import sys

from lake import storage
from lake.distributed import World
from lake.errors import LakeError
from lake.schema import MANIFEST_NAME
from ingest.output import WORK_DIR, SetOutput, finish_swap, overwrite_sibling

PLAN_NAME = "plan.json"


def make_plan(cfg, source, taxonomy: list[str], encoders: dict, world_size: int = 1) -> dict:
    """Everything that decides which rows a set holds and what they mean; a resume must match it.
    `encoders`: the audio and text encoder records (an encoder's info(), or a precomputed source's)."""
    where = cfg.input if storage.is_url(cfg.input) else os.path.abspath(cfg.input)
    return {
        "name": cfg.name,
        "source": {"kind": cfg.source, "input": where, **source.plan(), "splits": source.split_policy.record()},
        "encoders": encoders,
        "taxonomy": taxonomy,
        "fields": ["audio", "text"] + (["caption"] if source.has_captions else []) + ["label"],
        **({} if getattr(source, "precomputed", False) else {"max_seconds": cfg.max_seconds or None}),
        "limit": cfg.limit or None,
        # --limit is per rank, so a limited run resumes only on as many ranks
        **({"limit_ranks": world_size} if cfg.limit else {}),
    }


def differences(old: dict, new: dict) -> list[str]:
    """One line per top-level plan entry that differs (the name aside)."""
    out = []
    for k in sorted(set(old) | set(new)):
        if k != "name" and old.get(k) != new.get(k):
            def short(v):
                if k == "encoders" and isinstance(v, dict):
                    return ", ".join(f"{m} {e.get('id')} dim {e.get('dim')}" + (f" layers {len(e['layers'])}" if "layers" in e else "")
                                     for m, e in v.items())
                s = json.dumps(v, ensure_ascii=False)
                return s if len(s) < 120 else s[:117] + "..."
            out.append(f"  {k}: the set has {short(old.get(k))}; this command asks for {short(new.get(k))}")
    return out


def check_ranks_agree(plan: dict, world: World) -> None:
    """Every rank must plan the same rows (another model revision in one machine's cache would not)."""
    if not world.distributed:
        return
    import torch.distributed as dist

    plans = [None] * world.world_size
    dist.all_gather_object(plans, plan)
    for r, other in enumerate(plans):
        diff = differences(other, plan)
        if diff:
            raise LakeError(f"rank {r} would write other rows than rank {world.rank}:\n" + "\n".join(diff))


def prepare_output(cfg, plan: dict, world: World, out: SetOutput) -> tuple[str, SetOutput]:
    """What this run does, decided on rank 0 and told to every rank: (status, where it builds).

    status: "complete" (nothing to do), "merge" (a damaged set reopened: only the index or the
    manifest to rebuild), "repair" (reopened: clips to ingest again), "resume" or "new". Where it
    builds is `out`, or with --overwrite the sibling the new set is made in before the swap.
    A set made with other settings is refused, listing the differences.
    """
    check_ranks_agree(plan, world)
    decided: list = [None]
    if world.is_main:
        try:
            status, build = _decide(cfg, plan, out)
            decided = [(status, build.root, build.staging)]
        except LakeError as e:
            decided = [("error", str(e), "")]
    if world.distributed:
        import torch.distributed as dist

        dist.broadcast_object_list(decided, src=0)
    status, root, staging = decided[0]
    if status == "error":
        raise LakeError(root)
    return status, SetOutput(root, staging)


def _decide(cfg, plan: dict, out: SetOutput) -> tuple[str, SetOutput]:
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


def _decide_plain(cfg, plan: dict, out: SetOutput, overwrite_stale: bool = False) -> tuple[str, SetOutput]:
    """The status of `out` itself. `overwrite_stale`: an --overwrite build: a partial one made with other
    settings is wiped (it was never a set anyone read), not refused."""
    if out.exists(MANIFEST_NAME):
        if overwrite_stale and differences(_plan_of_finished(out) or {}, plan):  # an old --overwrite build, never swapped in
            out.remove_tree()
        else:
            return _finished(cfg, plan, out), out
    if out.exists(WORK_DIR, PLAN_NAME):
        diff = differences(json.loads(out.read_text(WORK_DIR, PLAN_NAME)), plan)
        if not diff:
            return "resume", out
        if not overwrite_stale:
            raise LakeError(f"{out.root}: an unfinished ingest with other settings is here:\n" + "\n".join(diff)
                            + "\nre-run it with its own settings to resume, or pass --overwrite to start afresh")
        out.remove_tree()
    write_plan(out, plan)
    return "new", out


def _finished(cfg, plan: dict, out: SetOutput) -> str:
    """A set with a manifest: refuse other settings, check it, and reopen it if it is damaged."""
    from ingest.repair import inspect_set, reopen

    old = _plan_of_finished(out)  # None: unreadable, rebuilt below under this command's settings
    diff = differences(old, plan) if old is not None else []
    if diff:
        raise LakeError(f"{out.root}: a finished set made with other settings:\n" + "\n".join(diff)
                        + "\nwrite to another --out, or pass --overwrite to replace it")
    found = inspect_set(out, deep=cfg.check)
    if found.sound:
        _clean_finished(out)
        return "complete"
    print(f"{out.root}: damaged, repairing it:\n" + "\n".join(f"  {p}" for p in found.problems[:10])
          + (f"\n  ... {len(found.problems) - 10} more" if len(found.problems) > 10 else ""), file=sys.stderr)
    done, reingest = reopen(out, plan, found)
    for line in done:
        print(f"repair: {line}", file=sys.stderr)
    return "repair" if reingest else "merge"


def _plan_of_finished(out: SetOutput) -> dict | None:
    """The plan a finished set's manifest records (None when the manifest cannot be read)."""
    try:
        return json.loads(out.read_text(MANIFEST_NAME)).get("ingest", {}).get("plan", {})
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def _clean_finished(out: SetOutput) -> None:
    """Leftovers of a run killed after its manifest was written (its work folder, temporary files)."""
    out.remove_tree(WORK_DIR)
    for name in out.listdir():
        if ".tmp-" in name:
            out.remove(name)


def write_plan(out: SetOutput, plan: dict) -> None:
    out.write_atomic(f"{WORK_DIR}/{PLAN_NAME}", json.dumps(plan, indent=1, ensure_ascii=False).encode("utf-8"))
