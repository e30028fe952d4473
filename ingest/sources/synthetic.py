"""`--source synthetic`: the built-in corpus (ingest.synthetic), generated into --input when it is
not there yet, then read as the LAION tars it holds."""

from __future__ import annotations

import os
import sys

from lake.distributed import World, barrier
from ingest.sources.laion import LaionSource
from ingest.synthetic import generate


class SyntheticSource(LaionSource):
    name = "synthetic"

    @classmethod
    def from_config(cls, cfg, world: World | None = None) -> "SyntheticSource":
        laion = os.path.join(cfg.input, "laion")
        if (world is None or world.is_main) and not os.path.isdir(laion):
            print(f"generating a synthetic corpus in {cfg.input} ({cfg.synthetic_clips} clips, seed {cfg.seed})",
                  file=sys.stderr)
            generate(cfg.input, clips=cfg.synthetic_clips, seed=cfg.seed)
        barrier()  # every rank, whether or not the corpus was already there
        return cls.at(laion, cfg)
