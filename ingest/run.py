"""`python -m ingest`: open the source and encoders, resume or start the set, run this rank,
and (rank 0) merge and summarise."""

from __future__ import annotations

import sys
import time

from lake.cli import run_cli
from lake.distributed import World, barrier, close_distributed, init_distributed
from lake.progress import Progress
from ingest.config import IngestConfig, parse_config
from ingest.journal import read_journals
from ingest.plan import make_plan, prepare_output
from ingest.sources import open_source
from ingest.summary import summarize


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


def ingest_set(cfg: IngestConfig, world: World | None = None, device: str = "cpu") -> str:
    """Every rank's part of an ingest, then (rank 0) the merge: "complete" if the set was already
    finished, else "done". `world`: from init_distributed (default: one process)."""
    from ingest.merge import merge_set
    from ingest.pipeline import RankWorker, assign_units
    from ingest.precomputed import PrecomputedWorker

    world = world or World()
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
    status = prepare_output(cfg, plan, world)
    if status == "complete":
        if world.is_main:
            print(f"{cfg.out} is already complete; nothing to do (--overwrite starts afresh)")
            print(summarize(cfg.out, []))
        return status
    state = read_journals(cfg.out)
    units = assign_units(source.units(), world.world_size)[world.rank]
    progress = Progress(f"ingest{' rank 0' if world.distributed else ''}", unit="clip", enabled=world.is_main)
    if world.is_main and status == "resume":
        progress.write(f"resuming {cfg.out}: {len(state.shards)} shards and {len(state.units_done)} source units "
                       "already done")
    if audio is None:
        worker = PrecomputedWorker(cfg, source, taxonomy, world.rank, world.world_size, state, progress)
    else:
        worker = RankWorker(cfg, source, taxonomy, audio, text, world.rank, world.world_size, state, progress)
    worker.clean_leftovers()
    worker.run(units)
    progress.close()
    barrier()
    if world.is_main:
        settings = {"batch_size": cfg.batch_size, "block_rows": cfg.block_rows, "rows_per_shard": cfg.rows_per_shard,
                    "world_size": world.world_size, "device": device, "argv": sys.argv[1:]}
        merge_set(cfg.out, plan, [u.id for u in source.units()], settings)
        print(summarize(cfg.out, source.notes(), time.time() - t0))
    barrier()
    return "done"


def run(cfg: IngestConfig) -> int:
    world, device = init_distributed(cfg.device, backend="gloo", timeout_s=cfg.rank_timeout_hours * 3600)
    try:
        ingest_set(cfg, world, str(device))
        return 0
    finally:
        close_distributed()


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_config(argv)), kept="finished shards are kept")
