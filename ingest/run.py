"""`python -m ingest`: open the source and encoders, resume or start the set, run this rank,
and (rank 0) merge and summarise."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext

from lake.cli import run_cli
from lake.distributed import World, barrier, close_distributed, init_distributed
from lake.progress import Progress
from lake.setlock import SetLock
from lake.signals import preemption_signals
from lake import storage
from lake.storage import set_storage_options
from shards.card import write_card
from ingest.config import IngestConfig, parse_config
from ingest.encoders import encoder_class
from ingest.pipeline import RankWorker
from ingest.precomputed import PrecomputedWorker
from ingest.sources import open_source
from ingest.summary import summarize
from ingest.write.commit import RankCommit, assign_units
from ingest.write.journal import Journal, read_journals
from ingest.write.ledger import Ledger, per_rank_limit
from ingest.write.output import SetOutput, swap_in
from ingest.write.plan import make_plan
from ingest.write.prepare import Status, prepare_output


def build_encoders(cfg: IngestConfig, device: str):
    """The audio and text encoders the flags name, each made from the flags it reads (ingest.encoders)."""
    return (encoder_class("audio", cfg.audio_encoder).from_config(cfg.audio_encoder, cfg, device),
            encoder_class("text", cfg.text_encoder).from_config(cfg.text_encoder, cfg, device))


def ingest_set(cfg: IngestConfig, world: World | None = None, device: str = "cpu", preempted=None) -> Status:
    """Every rank's part of an ingest, then (rank 0) the merge: Status.COMPLETE if the set was already
    finished and sound, else Status.DONE. `world`: from init_distributed (default: one process).
    Rank 0 holds the set's lock (lake.setlock) throughout: a second writer is refused. The output
    (--out, --staging-dir) is decided here, once, and handed down as one SetOutput."""
    world = world or World()
    out = SetOutput(cfg.out, cfg.staging_dir)
    with SetLock(out.root) if world.is_main else nullcontext() as lock:
        return _ingest(cfg, world, device, out, preempted, lock)


def _ingest(cfg: IngestConfig, world: World, device: str, out: SetOutput, preempted, lock: SetLock | None) -> Status:
    from ingest.write.merge import merge_set  # shards.stats imports torch: seconds of start-up (-X importtime)

    t0 = time.time()
    say = (lambda msg: print(f"ingest: {msg}", file=sys.stderr, flush=True)) if world.is_main else (lambda msg: None)
    say(f"reading the {cfg.source} source at {cfg.input}")
    source = open_source(cfg, world)
    taxonomy = source.taxonomy()
    if getattr(source, "precomputed", False):  # the rows arrive as vectors: no decoding, no encoders
        audio = text = None
        encoders = source.encoders()
    else:
        say(f"{len(source.units())} source units, {len(taxonomy)} classes; loading the encoders ({cfg.audio_encoder} "
            f"audio, {cfg.text_encoder} text) on {device}")
        audio, text = build_encoders(cfg, device)
        encoders = {"audio": audio.info(), "text": text.info()}
        say(f"encoders ready after {time.time() - t0:.0f} s; decoding and encoding")
    plan = make_plan(cfg, source, taxonomy, encoders, world.world_size)
    status, build = prepare_output(cfg, plan, world, out)
    if status == Status.COMPLETE and build.root == out.root:
        if world.is_main:
            checked = "every shard read and hashed" if cfg.check else "sizes and index; --check also hashes every shard"
            print(f"{out.root} is already complete and checks out ({checked}); nothing to do")
            print(summarize(out.root, []))
        return status
    if status != Status.COMPLETE:
        _build(cfg, world, device, source, taxonomy, audio, text, status, build, preempted)
        barrier()
    if world.is_main:
        lock.check()  # behind a URL the lease may have run out while this process was stopped
        if status != Status.COMPLETE:
            settings = {"batch_size": cfg.batch_size, "block_rows": cfg.block_rows,
                        "rows_per_shard": cfg.rows_per_shard, "world_size": world.world_size, "device": device,
                        "argv": sys.argv[1:]}
            merge_set(build, plan, [u.id for u in source.units()], settings)
        if build.root != out.root:  # --overwrite: the old set goes only now that the new one is whole
            swap_in(build, out)
        if storage.scheme(out.root) == "hf":  # a set on the hub explains itself: its card and preview
            write_card(out.root)
        print(summarize(out.root, source.notes(), time.time() - t0))
    barrier()
    return Status.DONE


def _build(cfg, world, device, source, taxonomy, audio, text, status: Status, build: SetOutput, preempted) -> None:
    """This rank's units: decoded and encoded (or imported), committed shard by shard."""
    if status == Status.MERGE and world.is_main:  # a reopened set with nothing to re-read: every unit is done
        journal = Journal(build, "repair")
        journal.append({"type": "units_done", "units": {u.id: 0 for u in source.units()}})
        journal.close()
    barrier()
    state = read_journals(build)
    units = assign_units(source.units(), world.world_size)[world.rank]
    progress = Progress(f"ingest{' rank 0' if world.distributed else ''}", unit="clip", enabled=world.is_main,
                        estimated=True)
    if world.is_main and status in (Status.RESUME, Status.REPAIR):
        progress.write(f"resuming {build.root}: {len(state.shards)} shards and {len(state.units_done)} source units "
                       "already done")
    ledger = Ledger(units, state, build, per_rank_limit(cfg.limit, world.world_size), progress)
    commit = RankCommit(cfg, build, world.rank, state, taxonomy, source.has_captions, ledger, preempted)
    if audio is None:
        producer = PrecomputedWorker(source, ledger, preempted)
    else:
        producer = RankWorker(cfg, source, taxonomy, audio, text, world.world_size, ledger, progress, preempted, device)
    commit.clean_leftovers()
    try:
        commit.run(producer.processor())
    finally:
        progress.close()


def run(cfg: IngestConfig) -> int:
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
