"""Readers of the published layouts, by `--source` name: each turns its input into units of clips.

    laion      LAION's Got Talent tars (.mp3 + .json pairs), local or streamed from a URL (hf://, s3://)
    meld       MELD.Raw (CSVs + mp4 clips, official splits)
    manifest   any corpus described by a CSV/JSONL table, or an EmoBox data/<dataset> folder
    hf         a Hugging Face dataset with an audio column (hub id or local folder), streamed
    synthetic  the built-in corpus (generated if absent), read as LAION
    tamers-parquet  the previous tooling's precomputed vectors, imported as they are

A source class has `from_config(cfg, world)`, `units()`, `read(unit)`, `taxonomy()`,
`split_policy`, `plan()` and `notes()` (ingest.sources.base.Source).
"""

from __future__ import annotations

import importlib

SOURCES = {
    "laion": "ingest.sources.laion:LaionSource",
    "meld": "ingest.sources.meld:MeldSource",
    "manifest": "ingest.sources.manifest:ManifestSource",
    "hf": "ingest.sources.hf:HfSource",
    "synthetic": "ingest.sources.synthetic:SyntheticSource",
    "tamers-parquet": "ingest.sources.tamers_parquet:TamersParquetSource",
}


def open_source(cfg, world=None):
    """The source `cfg.source` names, opened on `cfg.input` (its modules are imported only when used)."""
    module, cls = SOURCES[cfg.source].split(":")
    return getattr(importlib.import_module(module), cls).from_config(cfg, world)
