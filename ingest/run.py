"""`python -m ingest`: open the source and encoders, resume or start the set, run this rank,
and (rank 0) merge and summarise."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import time
from collections import Counter, defaultdict

from lake.distributed import World, barrier, close_distributed, init_distributed
from lake.errors import LakeError
from lake.schema import MANIFEST_NAME, SHARDS_DIR
from lake.splits import check_fractions
from lake.taxonomy import load_taxonomy_file
from ingest.config import IngestConfig, parse_config
from ingest.journal import read_journals, work_dir

PLAN_NAME = "plan.json"


def open_source(cfg: IngestConfig):
    from ingest.sources.laion import LaionSource
    from ingest.sources.meld import MeldSource

    if cfg.source == "meld":
        return MeldSource(cfg.input)
    root = os.path.join(cfg.input, "laion") if cfg.source == "synthetic" else cfg.input
    taxonomy = load_taxonomy_file(cfg.taxonomy) if cfg.taxonomy else None
    overrides = None
    if cfg.label_map:
        try:
            overrides = json.load(open(cfg.label_map, encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise LakeError(f"{cfg.label_map}: cannot read the label map ({e})") from None
    languages = [x.strip() for x in cfg.languages.split(",") if x.strip()]
    return LaionSource(root, languages=languages, taxonomy=taxonomy, label_overrides=overrides)


def build_encoders(cfg: IngestConfig, device: str):
    from ingest.encoders import build_audio_encoder, build_text_encoder

    audio_opts = {}
    if cfg.audio_encoder.startswith("auristream"):
        audio_opts = {k: v for k, v in (("model", cfg.audio_model), ("tokenizer", cfg.audio_tokenizer),
                                        ("model_revision", cfg.audio_revision)) if v}
    text_opts = {k: v for k, v in (("model", cfg.text_model), ("revision", cfg.text_revision)) if v}
    if cfg.text_encoder != "hashing" and cfg.text_prompt != "auto":
        text_opts["prompt"] = cfg.text_prompt
    audio = build_audio_encoder(cfg.audio_encoder, device=device, layers=cfg.audio_layers, **audio_opts)
    text = build_text_encoder(cfg.text_encoder, device=device, **text_opts)
    return audio, text


def make_plan(cfg: IngestConfig, source, taxonomy: list[str], audio, text, world_size: int = 1) -> dict:
    """Everything that decides which rows a set holds and what they mean; a resume must match it."""
    src = {"kind": cfg.source, "input": os.path.abspath(cfg.input)}
    if source.name == "laion":
        src["languages"] = list(source.languages)
        src["splits"] = {"method": "hash", "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction}
    else:
        src["splits"] = {"method": "official"}
    return {
        "name": cfg.name,
        "source": src,
        "encoders": {"audio": audio.info(), "text": text.info()},
        "taxonomy": taxonomy,
        "fields": ["audio", "text"] + (["caption"] if source.has_captions else []) + ["label"],
        "max_seconds": cfg.max_seconds or None,
        "limit": cfg.limit or None,
        # --limit is per rank, so a limited run resumes only on as many ranks
        **({"limit_ranks": world_size} if cfg.limit else {}),
    }


def _differences(old: dict, new: dict) -> list[str]:
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


def prepare_output(cfg: IngestConfig, plan: dict, world: World) -> str:
    """'complete' (nothing to do), 'resume' or 'new'. Refuses a set made with other settings."""
    root = cfg.out
    if world.distributed:
        import torch.distributed as dist

        plans = [None] * world.world_size
        dist.all_gather_object(plans, plan)
        for r, other in enumerate(plans):
            diff = _differences(other, plan)
            if diff:  # e.g. another model revision in one machine's cache
                raise LakeError(f"rank {r} would write other rows than rank {world.rank}:\n" + "\n".join(diff))
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
        diff = _differences(old, plan)
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
        diff = _differences(json.load(open(plan_path, encoding="utf-8")), plan)
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


def summarize(root: str, notes: list[str], elapsed: float | None = None) -> str:
    from lake.catalog import open_shard_set
    from ingest.sources.base import reason_category

    shards = open_shard_set(root)
    m = shards.manifest
    idx = shards.index.select(["split", "duration_s"]).to_pydict()
    hours: dict[str, float] = defaultdict(float)
    for split, d in zip(idx["split"], idx["duration_s"]):
        hours[split] += d / 3600
    skipped: dict[str, Counter] = defaultdict(Counter)
    quarantine = shards.quarantine()
    for rec in quarantine:
        skipped[rec.get("split") or "-"][reason_category(rec["reason"])] += 1
    lines = [f"{m.name}: {sum(s.rows for s in m.shards)} rows in {len(m.shards)} shards, "
             f"{sum(s.bytes for s in m.shards) / 2**20:.1f} MiB, {m.num_classes} classes"
             + (f", {elapsed:.1f} s" if elapsed is not None else "")]
    splits = sorted(set(m.splits) | set(skipped) - {"-"}, key=lambda s: ("train", "val", "dev", "test").index(s)
                    if s in ("train", "val", "dev", "test") else 9)
    for split in splits:
        rows = m.splits.get(split, {}).get("rows", 0)
        why = ", ".join(f"{n} {r}" for r, n in skipped[split].most_common())
        lines.append(f"  {split:>5}: {rows:8d} rows {hours[split]:9.3f} h" + (f"   skipped {sum(skipped[split].values())}: {why}" if why else ""))
    if skipped["-"]:
        lines.append("  other skipped: " + ", ".join(f"{n} {r}" for r, n in skipped["-"].most_common()))
    if quarantine:
        lines.append(f"  quarantined clips are listed in {os.path.join(root, 'quarantine.jsonl')}")
    lines += [f"note: {n}" for n in notes]
    lines.append(f"check it: python -m shards verify {root}")
    return "\n".join(lines)


def run(cfg: IngestConfig) -> int:
    from ingest.pipeline import RankWorker, assign_units
    from ingest.merge import merge_set

    t0 = time.time()
    check_fractions(cfg.val_fraction, cfg.test_fraction)
    world, device = init_distributed(cfg.device, backend="gloo", timeout_s=cfg.rank_timeout_hours * 3600)
    try:
        if cfg.source == "synthetic":
            if world.is_main and not os.path.isdir(os.path.join(cfg.input, "laion")):
                from ingest.synthetic import generate

                print(f"generating a synthetic corpus in {cfg.input} ({cfg.synthetic_clips} clips, seed {cfg.seed})",
                      file=sys.stderr)
                generate(cfg.input, clips=cfg.synthetic_clips, seed=cfg.seed)
            barrier()  # every rank, whether or not the corpus was already there
        source = open_source(cfg)
        taxonomy = source.taxonomy()
        audio, text = build_encoders(cfg, str(device))
        plan = make_plan(cfg, source, taxonomy, audio, text, world.world_size)
        status = prepare_output(cfg, plan, world)
        if status == "complete":
            if world.is_main:
                print(f"{cfg.out} is already complete; nothing to do (--overwrite starts afresh)")
                print(summarize(cfg.out, []))
            return 0
        state = read_journals(cfg.out)
        units = assign_units(source.units(), world.world_size)[world.rank]
        progress = None
        if world.is_main:
            from tqdm import tqdm

            progress = tqdm(desc=f"ingest{' rank 0' if world.distributed else ''}", unit="clip", dynamic_ncols=True,
                            total=None, mininterval=1.0, file=sys.stderr)
            progress.estimate = True
            if status == "resume":
                print(f"resuming {cfg.out}: {len(state.shards)} shards and {len(state.units_done)} source units "
                      "already done", file=sys.stderr)
        worker = RankWorker(cfg, source, taxonomy, audio, text, world.rank, world.world_size, state, progress)
        worker.clean_leftovers()
        worker.run(units)
        if progress is not None:
            progress.close()
        barrier()
        if world.is_main:
            settings = {"batch_size": cfg.batch_size, "block_rows": cfg.block_rows, "rows_per_shard": cfg.rows_per_shard,
                        "world_size": world.world_size, "device": str(device), "argv": sys.argv[1:]}
            merge_set(cfg.out, plan, [u.id for u in source.units()], settings)
            print(summarize(cfg.out, source.notes(), time.time() - t0))
        barrier()
        return 0
    finally:
        close_distributed()


def main(argv=None) -> int:
    try:
        cfg = parse_config(argv)
        return run(cfg)
    except LakeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished shards are kept; re-run the same command to resume", file=sys.stderr)
        return 130
