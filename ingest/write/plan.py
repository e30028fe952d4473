"""The ingest plan: what decides which rows a set holds and what they mean.

The plan (name, source and its split policy, encoder records, taxonomy, fields, limits)
is written to `_work/plan.json` when a set is started and kept in the manifest when it
is finished. A re-run of the same command compares its plan with the one it finds
(ingest.write.prepare): equal means resume (or nothing to do); different means another
set, refused with the list of differences, so two incompatible runs can never write into one set.
"""

from __future__ import annotations

import json
import os

from lake import storage
from lake.blocks import new_build_id
from lake.distributed import World
from lake.errors import LakeError
from lake.schema import MANIFEST_NAME
from ingest.write.output import WORK_DIR, SetOutput

PLAN_NAME = "plan.json"
BUILD_KEY = "build"
"""In _work/plan.json only: the id this build's shard names carry (lake.blocks), kept so that a resumed
run names its shards as the killed one did. Not part of the comparison: a build is not a setting."""


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
        if k not in ("name", BUILD_KEY) and old.get(k) != new.get(k):
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
    import torch.distributed as dist  # torch only under torchrun: seconds of start-up a single rank does not need

    plans = [None] * world.world_size
    dist.all_gather_object(plans, plan)
    for r, other in enumerate(plans):
        diff = differences(other, plan)
        if diff:
            raise LakeError(f"rank {r} would write other rows than rank {world.rank}:\n" + "\n".join(diff))


def write_plan(out: SetOutput, plan: dict) -> str:
    """Start a build at `out`: its plan, under a new build id (returned)."""
    build = new_build_id()
    record = {**plan, BUILD_KEY: build}
    out.write_atomic(f"{WORK_DIR}/{PLAN_NAME}", json.dumps(record, indent=1, ensure_ascii=False).encode("utf-8"))
    return build


def build_of(out: SetOutput) -> str:
    """The build id of the unfinished ingest at `out` ("": none, or one started by code before build ids)."""
    return (plan_in_progress(out) or {}).get(BUILD_KEY, "")


def plan_in_progress(out: SetOutput) -> dict | None:
    """The plan of the unfinished ingest at `out` (None: none there)."""
    if not out.exists(WORK_DIR, PLAN_NAME):
        return None
    return json.loads(out.read_text(WORK_DIR, PLAN_NAME))


def plan_of_finished(out: SetOutput) -> dict | None:
    """The plan a finished set's manifest records (None when the manifest cannot be read)."""
    try:
        return json.loads(out.read_text(MANIFEST_NAME)).get("ingest", {}).get("plan", {})
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
