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

from lake.errors import LakeError

SAMPLE_RATE = 16000


def resolve_layers(spec: str, names: list[str], last: str) -> list[str]:
    """`all`, `last` or a comma list of layer names / indices into `names`."""
    spec = spec.strip()
    if spec == "all":
        return list(names)
    if spec == "last":
        return [last]
    chosen = []
    for part in spec.split(","):
        part = part.strip()
        if part.lstrip("-").isdigit():
            i = int(part)
            if not -len(names) <= i < len(names):
                raise LakeError(f"--audio-layers: index {i} out of range; this encoder has {len(names)} "
                                f"layers ({', '.join(names)})")
            part = names[i]
        if part not in names:
            raise LakeError(f"--audio-layers: no layer {part!r}; this encoder has {', '.join(names)}")
        if part not in chosen:
            chosen.append(part)
    if not chosen:
        raise LakeError("--audio-layers: empty list")
    return chosen


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

    def cost(self, num_samples: int) -> float:
        """Relative compute for a clip of this many samples (used to form batches of similar length)."""
        return float(num_samples)


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
