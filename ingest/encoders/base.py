"""The encoder interface: a name, output dims, `encode(batch)`, and what the manifest records.

Audio encoders take a batch of 16 kHz mono float32 waveforms (peak-normalised, each
its own length) and return float32 [B, L, D]: one pooled vector per stored layer,
pooled over each clip's own samples only (lengths are passed, never padding), so a
clip's embedding does not depend on its batch-mates. Text encoders take strings and
return float32 [B, D]. Shards store both as float16.
"""

from __future__ import annotations

from typing import Any

import numpy as np


from lake.schema import SAMPLE_RATE


class AudioEncoder:
    name: str = ""
    revision: str | None = None
    dim: int = 0
    layers: list[str] = []  # the layers this encoder returns (after --audio-layers)

    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        """float32 [B, len(layers), dim] for B waveforms of any lengths."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """What the manifest records under encoders.audio (compared on resume)."""
        return {"id": self.name, "revision": self.revision, "dim": self.dim, "layers": list(self.layers),
                "sample_rate": SAMPLE_RATE, "config": self.config()}

    def config(self) -> dict[str, Any]:
        return {}


class TextEncoder:
    name: str = ""
    revision: str | None = None
    dim: int = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [B, dim]."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {"id": self.name, "revision": self.revision, "dim": self.dim, "config": self.config()}

    def config(self) -> dict[str, Any]:
        return {}
