"""Readers of the published layouts, by `--source` name: each turns its input into units of clips.

    laion      LAION's Got Talent tars (.mp3 + .json pairs)
    meld       MELD.Raw (CSVs + mp4 clips, official splits)
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
    "synthetic": "ingest.sources.synthetic:SyntheticSource",
    "tamers-parquet": "ingest.sources.tamers_parquet:TamersParquetSource",
}


def open_source(cfg, world=None):
    """The source `cfg.source` names, opened on `cfg.input` (its modules are imported only when used)."""
    module, cls = SOURCES[cfg.source].split(":")
    return getattr(importlib.import_module(module), cls).from_config(cfg, world)
