"""The built-in synthetic corpus: both real layouts (LAION tars, MELD.Raw) plus truth.jsonl.

    python -m ingest.synthetic --out DIR [--clips N] [--seed S]
    from ingest.synthetic import generate

Modules: spec (rates, names, shares), voice (source-filter synthesis), text (transcripts,
captions, annotations), media (mp3 / mp4 encoding), laion and meld (the two layouts),
corpus (the driver and command line).
"""

from ingest.synthetic.corpus import generate, main

__all__ = ["generate", "main"]
