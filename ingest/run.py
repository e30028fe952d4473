"""`python -m ingest`: open the source and encoders, resume or start the set, run this rank,
and (rank 0) merge and summarise."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext

from lake.cli import run_cli
from lake.distributed import World, barrier, close_distributed, init_distributed
from lake.progress import Progress
from lake.signals import preemption_signals
from ingest.config import IngestConfig, parse_config
from ingest.encoders import encoder_class
from ingest.journal import read_journals
from ingest.lock import SetLock
from ingest.output import SetOutput, swap_in
from ingest.plan import make_plan, prepare_output
from ingest.sources import open_source
from ingest.summary import summarize


def build_encoders(cfg: IngestConfig, device: str):
    """The audio and text encoders the flags name, each made from the flags it reads (ingest.encoders)."""
    return (encoder_class("audio", cfg.audio_encoder).from_config(cfg.audio_encoder, cfg, device),
            encoder_class("text", cfg.text_encoder).from_config(cfg.text_encoder, cfg, device))


def ingest_set(cfg: IngestConfig, world: World | None = None, device: str = "cpu", preempted=None) -> str:
    """Every rank's part of an ingest, then (rank 0) the merge: "complete" if the set was already
    finished and sound, else "done". `world`: from init_distributed (default: one process).
    Rank 0 holds the set's lock (ingest.lock) throughout: a second writer is refused."""
    world = world or World()
    out = SetOutput(cfg.out, cfg.staging_dir)
    with SetLock(out.root) if world.is_main else nullcontext():
        return _ingest(cfg, world, device, out, preempted)


def _ingest(cfg: IngestConfig, world: World, device: str, out: SetOutput, preempted) -> str:
    from ingest.merge import merge_set

    t0 = time.time()
    source = open_source(cfg, world)
    taxonomy = source.taxonomy()
    if getattr(source, "precomputed", False):  # the rows arrive as vectors: no decoding, no encoders
        audio = text = None
        encoders = source.encoders()
    else:
        audio, text = build_encoders(cfg, device)
        encoders = {"audio": audio.info(), "text": text.info()}
    plan = make_plan(cfg, source, taxonomy, encoders, world.world_size)
    status, build = prepare_output(cfg, plan, world, out)
    if status == "complete" and build.root == out.root:
        if world.is_main:
            checked = "every shard read and hashed" if cfg.check else "sizes and index; --check also hashes every shard"
            print(f"{out.root} is already complete and checks out ({checked}); nothing to do")
            print(summarize(out.root, []))
        return status
    if status != "complete":
        _build(cfg, world, device, source, taxonomy, audio, text, status, build, preempted)
        barrier()
    if world.is_main:
        if status != "complete":
            settings = {"batch_size": cfg.batch_size, "block_rows": cfg.block_rows,
                        "rows_per_shard": cfg.rows_per_shard, "world_size": world.world_size, "device": device,
                        "argv": sys.argv[1:]}
            merge_set(build, plan, [u.id for u in source.units()], settings)
        if build.root != out.root:  # --overwrite: the old set goes only now that the new one is whole
            swap_in(build, out)
        print(summarize(out.root, source.notes(), time.time() - t0))
    barrier()
    return "done"


def _build(cfg, world, device, source, taxonomy, audio, text, status, build: SetOutput, preempted) -> None:
    """This rank's units: decoded and encoded (or imported), committed shard by shard."""
    from ingest.journal import Journal
    from ingest.pipeline import RankWorker, assign_units
    from ingest.precomputed import PrecomputedWorker

    if status == "merge" and world.is_main:  # a reopened set with nothing to re-read: every unit is done
        journal = Journal(build, "repair")
        journal.append({"type": "units_done", "units": {u.id: 0 for u in source.units()}})
        journal.close()
    barrier()
    state = read_journals(build)
    units = assign_units(source.units(), world.world_size)[world.rank]
    progress = Progress(f"ingest{' rank 0' if world.distributed else ''}", unit="clip", enabled=world.is_main)
    if world.is_main and status in ("resume", "repair"):
        progress.write(f"resuming {build.root}: {len(state.shards)} shards and {len(state.units_done)} source units "
                       "already done")
    if audio is None:
        worker = PrecomputedWorker(cfg, source, taxonomy, world.rank, world.world_size, state, progress, build,
                                   preempted)
    else:
        worker = RankWorker(cfg, source, taxonomy, audio, text, world.rank, world.world_size, state, progress, build,
                            preempted)
    worker.clean_leftovers()
    try:
        worker.run(units)
    finally:
        progress.close()


def run(cfg: IngestConfig) -> int:
    from lake.storage import set_storage_options

    set_storage_options([cfg.input, cfg.out], cfg.storage_options)
    world, device = init_distributed(cfg.device, backend="gloo", timeout_s=cfg.rank_timeout_hours * 3600)
    try:
        with preemption_signals() as preempted:
            ingest_set(cfg, world, str(device), preempted)
        return 0
    finally:
        close_distributed()


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_config(argv)), kept="finished shards are kept")
