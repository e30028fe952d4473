"""`python -m ingest` settings: one dataclass, whose field help doubles as `--help`."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from lake.cliargs import REQUIRED, HelpFormatter, above, add_dataclass_args, at_least, between, check_ranges, from_args
from lake.cliargs import arg as _f
from lake.errors import LakeError
from lake.storage import LIMITS_HELP
from ingest.sources import SOURCES


@dataclass
class IngestConfig:
    source: str = _f(REQUIRED, "laion (LAION's Got Talent tars), meld (MELD.Raw), manifest (any corpus described by "
                     "a CSV/JSONL table, or an EmoBox data/<dataset> folder), hf (a Hugging Face dataset with an audio "
                     "column), synthetic (the built-in corpus: generated into --input if absent, then read as LAION) "
                     "or tamers-parquet (the previous tooling's precomputed vectors, imported without re-encoding)",
                     choices=list(SOURCES))
    input: str = _f(REQUIRED, "what to read: a folder of LAION tars or its URL (hf://datasets/OWNER/NAME[@REV], "
                    "s3://BUCKET/DIR: streamed, not downloaded), MELD.Raw, a manifest .csv/.jsonl or EmoBox folder, "
                    "a Hugging Face dataset id or local dataset folder, the synthetic corpus' folder, or a folder "
                    "(or URL) of the previous tooling's parquet files")
    out: str = _f(REQUIRED, "the shard set to write: a folder ROOT/NAME, or any fsspec URL that can write "
                  "(s3://BUCKET/PREFIX/NAME); re-running the same command resumes it, or checks and repairs a "
                  "finished one")
    staging_dir: str = _f("", "--out behind a URL: the local folder shards are built in before their upload; it "
                          "needs room for about two shards per rank (--rows-per-shard x row size x 2); empty = a "
                          "folder under the system temp dir")
    storage_options: str = _f("", "JSON of fsspec options for --input/--out URLs (e.g. '{\"anon\": true}'); "
                              "credentials and endpoints otherwise come from the usual AWS/Hub configuration. "
                              + LIMITS_HELP)
    check: bool = _f(False, "when --out is a finished set: also read and hash every shard (a full read; without "
                     "it, sizes and the index are checked) and repair what does not match")
    audio_encoder: str = _f("fbank", "audio encoder: fbank (offline log-mel statistics, 256 dims; ~0.25 ms of one "
                            "core per audio second), egemaps (openSMILE eGeMAPSv02, 88 functionals; ~12 ms per audio "
                            "second, 50x fbank), compare (openSMILE ComParE 2016, 6,373 functionals; ~10 ms per audio "
                            "second, 25x fbank's bytes per row); egemaps and compare run in the decode workers "
                            "(they scale with --decode-workers), no GPU; clips under 0.06 s are quarantined. "
                            "Or auristream (WavCoch tokens -> AuriStream hidden states; needs the hub weights), or "
                            "hf:ID_OR_DIR, any transformers speech encoder (wav2vec2, HuBERT, WavLM, data2vec-audio, "
                            "Whisper's encoder; a hub id or a local model folder): every hidden state, masked mean "
                            "over each clip's frames; GPU")
    text_encoder: str = _f("hashing", "text encoder: hashing (offline), minilm (all-MiniLM-L6-v2 from its wheel), "
                           "embeddinggemma (google/embeddinggemma-300m) or st:ID_OR_PATH")
    audio_layers: str = _f("all", "audio layers to store: all, last, or a comma list of names/indices "
                           "(auristream: h0..h12 and final_norm, the last layer after the model's final norm; "
                           "hf:ID: h0 (the first hidden state: the feature projection) .. hN)")
    text_prompt: str = _f("auto", "text encoder prompt name (embeddinggemma: Classification by default; "
                          "'none' reproduces the reference run)")
    audio_model: str = _f("", "auristream: model id or local dir (default TuKoResearch/AuriStream100M_RoPE_librilight); "
                          "hf:ID: a local copy of ID to load instead (the set still records hf:ID)")
    audio_tokenizer: str = _f("", "auristream: tokenizer id or local dir (default TuKoResearch/WavCochV8192)")
    audio_model_revision: str = _f("", "auristream, hf:ID: model revision to pin (commit hash, branch or tag; the "
                                   "commit actually loaded is recorded). Also spelled --audio-revision")
    audio_window_s: float = _f(0.0, "hf:ID: seconds of audio per model forward; longer clips run as several windows, "
                               "pooled by frame counts. 0 = the model's default: 20 s, Whisper's 30 s input (at "
                               "most that for Whisper)", range=at_least(0))
    text_model: str = _f("", "text encoder: model id or local dir overriding the name's default")
    text_revision: str = _f("", "text encoder: revision to pin")
    batch_size: int = _f(32, "clips per audio-encoder batch (clips are sorted by length first)", range=at_least(1))
    text_batch_size: int = _f(128, "texts per text-encoder batch", range=at_least(1))
    decode_workers: int = _f(0, "FFmpeg decode processes per rank (0: the machine's cores per rank minus one, at "
                             "least 1)", range=at_least(0))
    block_rows: int = _f(1024, "rows per block (one tar member set per block)", range=at_least(1))
    rows_per_shard: int = _f(16384, "rows per shard before a new one starts", range=at_least(1))
    limit: int = _f(0, "stop after this many clips (per rank: limit / ranks); 0 = all. For trials", range=at_least(0))
    languages: str = _f("en", "LAION languages to keep, comma-separated (en, de, es, fr, or another code the tar "
                        "names use); an unknown code stops the run")
    device: str = _f("auto", "auto, cuda or cpu (each torchrun rank takes cuda:LOCAL_RANK)", choices=["auto", "cuda", "cpu"])
    val_fraction: float = _f(0.02, "share of clips in the val split where the source has none (LAION; a manifest or "
                             "hf dataset without splits; EmoBox: taken from the fold's train part)", range=between(0, 1, hi_open=True))
    test_fraction: float = _f(0.02, "share of clips in the test split where the source has none (hash of the key, "
                              "or of speakers with --split-by speaker)", range=between(0, 1, hi_open=True))
    split_by: str = _f("key", "hash splits by clip key, or by speaker so that no speaker is in two splits "
                       "(manifest, hf: needs a speaker column)", choices=["key", "speaker"])
    max_seconds: float = _f(0.0, "cut clips longer than this (seconds; the full duration is kept in meta); "
                            "0 = no cut (long clips run as several encoder windows). Memory: a clip's wave takes 64 kB "
                            "per second of audio (230 MB per hour) in the ingest process until it is encoded, and "
                            "about 1.2x that in its decode worker while decoding, plus what the audio encoder needs "
                            "for its window; --max-seconds caps all three", range=at_least(0))
    taxonomy: str = _f("", "file with the class names in order (JSON list or one per line); default: the classes "
                       "present in the selected source, in canonical order")
    label_map: str = _f("", "JSON file mapping source labels to class names: LAION emotion prompts the built-in "
                        "mapping cannot settle; a manifest's or hf dataset's labels (then only labels it names are "
                        "used; EmoBox: its label_map.json by default)")
    fold: int = _f(0, "manifest, EmoBox layout: the fold whose train/test files to read (fold_K/); 0 = the whole "
                   "<dataset>.jsonl, hash-split", range=at_least(0))
    audio_root: str = _f("", "manifest: folder or URL that relative audio paths start from; empty = the table's "
                         "folder (EmoBox: the folder that holds data/)")
    audio_column: str = _f("audio", "hf: the column holding the audio (its stored bytes are decoded with FFmpeg)")
    label_column: str = _f("label", "hf: the column holding the label (ClassLabel or strings)")
    text_column: str = _f("", "hf: the column holding the transcript; empty = no transcripts")
    speaker_column: str = _f("speaker", "hf: the column naming the speaker, if the dataset has it (kept in meta; "
                             "needed by --split-by speaker)")
    key_column: str = _f("", "hf: a column of unique clip ids to key rows by; empty = split/data file/row number")
    splits: str = _f("", "hf: LAKE=DATASET split pairs, e.g. train=train,val=validation,test=test; or one dataset "
                     "split's name, hash-split; empty = every split of the dataset (validation -> val), or "
                     "hash splits when it has one")
    config: str = _f("", "hf: the dataset's configuration (subset) name; empty = its default")
    revision: str = _f("", "hf: the dataset revision (branch, tag or commit) to read; empty = main (the commit "
                       "actually read is recorded in the manifest)")
    checkpoint_mb: float = _f(2048.0, "input megabytes between checkpoints: open shards are closed and the work "
                              "so far committed, so a killed run loses at most this much (0 = after every source "
                              "unit)", range=at_least(0))
    synthetic_clips: int = _f(1000, "synthetic: LAION-layout clips to generate when --input holds no corpus", range=at_least(1))
    seed: int = _f(0, "synthetic: generator seed", range=at_least(0))
    rank_timeout_hours: float = _f(72.0, "with several ranks: how long a rank that finished waits for the others "
                                   "before giving up (ranks can finish hours apart on a resumed run)", range=above(0))
    tamers_kind: str = _f("auto", "tamers-parquet: laion (its LAION vectors, through its random projection), meld "
                          "(its MELD features, without it) or auto (laion when the files record a projection)",
                          choices=["auto", "laion", "meld"])
    overwrite: bool = _f(False, "replace the set at --out: the new one is built beside it (room for both is needed "
                         "until the swap) and the old one is deleted only once the new one is complete")

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.out))

    def __post_init__(self):
        check_ranges(self)

    def validate(self) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            raise LakeError(f"--val-fraction {self.val_fraction} and --test-fraction {self.test_fraction} leave no "
                            "train split: together they must be below 1")
        if self.rows_per_shard < self.block_rows:
            raise LakeError("--rows-per-shard must be at least --block-rows")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ingest",
        description="Decode clips with FFmpeg (PyAV), run the frozen encoders, write a shard set (format v1). "
                    "Plain python runs one worker; `torchrun --nproc_per_node=N -m ingest ...` runs one per GPU. "
                    "Re-running the same command resumes; the result is the same set of rows.",
        epilog="Open the result in Python with lake.catalog.open_shard_set(OUT); inspect it with "
               "`python -m shards stats OUT` and `python -m shards verify OUT`.",
        formatter_class=HelpFormatter)
    add_dataclass_args(p, IngestConfig)
    p.add_argument("--audio-revision", dest="audio_model_revision", default=argparse.SUPPRESS,
                   help="the same as --audio-model-revision (its earlier name)")
    return p


def parse_config(argv=None) -> IngestConfig:
    args = build_parser().parse_args(argv)
    cfg = from_args(IngestConfig, args)
    cfg.validate()
    return cfg
