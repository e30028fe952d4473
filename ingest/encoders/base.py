"""The encoder interface: a name, output dims, `encode(batch)`, what the manifest records, and
three ways to make one (the registry in ingest.encoders calls them):

    build(name, device, **options)     keyword options (a library call, a test)
    from_config(name, cfg, device)     the `python -m ingest` flags it reads (IngestConfig fields)
    from_record(record, device, **overrides)
                                       a shard set's manifest record, to encode new audio into
                                       that set's space; overrides name local copies of models

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


def record_layers(record: dict) -> str:
    """A record's stored layers as an --audio-layers spec."""
    return ",".join(record["layers"])


class AudioEncoder:
    name: str = ""
    revision: str | None = None
    dim: int = 0
    layers: list[str] = []  # the layers this encoder returns (after --audio-layers)

    @classmethod
    def build(cls, name: str, device: str = "cpu", layers: str = "all", **options) -> "AudioEncoder":
        raise NotImplementedError

    @classmethod
    def from_config(cls, name: str, cfg, device: str) -> "AudioEncoder":
        """Reads --audio-layers; encoders with more flags override this."""
        return cls.build(name, device=device, layers=cfg.audio_layers)

    @classmethod
    def from_record(cls, record: dict, device: str = "cpu", **overrides) -> "AudioEncoder":
        return cls.build(record["id"], device=device, layers=record_layers(record))

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

    @classmethod
    def build(cls, name: str, device: str = "cpu", **options) -> "TextEncoder":
        raise NotImplementedError

    @classmethod
    def from_config(cls, name: str, cfg, device: str) -> "TextEncoder":
        return cls.build(name, device=device)

    @classmethod
    def from_record(cls, record: dict, device: str = "cpu", **overrides) -> "TextEncoder":
        return cls.build(record["id"], device=device)

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [B, dim]."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {"id": self.name, "revision": self.revision, "dim": self.dim, "config": self.config()}

    def config(self) -> dict[str, Any]:
        return {}
