"""The ingest plan: what decides which rows a set holds and what they mean, and what is done.

The plan (name, source and its split policy, encoder records, taxonomy, fields, limits)
is written to `_work/plan.json` when a set is started and kept in the manifest when it
is finished. A re-run of the same command compares its plan with the one it finds:
equal means resume (or nothing to do); different means another set, refused with the
list of differences, so two incompatible runs can never write into one set.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

from lake import storage
from lake.distributed import World, barrier
from lake.errors import LakeError
from lake.schema import MANIFEST_NAME, SHARDS_DIR
from ingest.journal import work_dir

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


def prepare_output(cfg, plan: dict, world: World) -> str:
    """'complete' (nothing to do), 'resume' or 'new'. Refuses a set made with other settings."""
    root = cfg.out
    check_ranks_agree(plan, world)
    manifest_path = os.path.join(root, MANIFEST_NAME)
    plan_path = os.path.join(work_dir(root), PLAN_NAME)
    ours = os.path.exists(manifest_path) or os.path.exists(plan_path)
    if os.path.isdir(root) and os.listdir(root) and not ours:
        raise LakeError(f"{root}: exists, is not empty and is not a shard set; choose another --out")
    if cfg.overwrite and ours:
        barrier()
        if world.is_main:
            # the manifest (or the plan) goes last: until then an interrupted --overwrite can be re-run
            shutil.rmtree(os.path.join(root, SHARDS_DIR), ignore_errors=True)
            for name in ("index.parquet", "quarantine.jsonl"):
                if os.path.exists(os.path.join(root, name)):
                    os.remove(os.path.join(root, name))
            for path in glob.glob(os.path.join(work_dir(root), "*")):
                if os.path.basename(path) != PLAN_NAME:
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            if os.path.exists(manifest_path):
                os.remove(manifest_path)
            shutil.rmtree(work_dir(root), ignore_errors=True)
        barrier()
        ours = False
    status = "new"
    if os.path.exists(manifest_path):
        old = json.load(open(manifest_path, encoding="utf-8")).get("ingest", {}).get("plan", {})
        diff = differences(old, plan)
        if diff:
            raise LakeError(f"{root}: a finished set made with other settings:\n" + "\n".join(diff)
                            + "\nwrite to another --out, or pass --overwrite to replace it")
        barrier()
        if world.is_main:  # leftovers of a run killed after its manifest was written
            shutil.rmtree(work_dir(root), ignore_errors=True)
            for tmp in glob.glob(os.path.join(root, "*.tmp-*")):
                os.remove(tmp)
        return "complete"
    if os.path.exists(plan_path):
        diff = differences(json.load(open(plan_path, encoding="utf-8")), plan)
        if diff:
            raise LakeError(f"{root}: an unfinished ingest with other settings is here:\n" + "\n".join(diff)
                            + "\nre-run it with its own settings to resume, or pass --overwrite to start afresh")
        status = "resume"
    barrier()
    if world.is_main and status == "new":
        os.makedirs(work_dir(root), exist_ok=True)
        with open(plan_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(plan, f, indent=1, ensure_ascii=False)
        os.replace(plan_path + ".tmp", plan_path)
    barrier()
    return status
