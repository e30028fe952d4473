"""Frozen encoders behind one small interface, selected by name on the command line.

audio: `fbank` (offline default), `auristream` (WavCoch tokens -> AuriStream hidden states)
text:  `hashing` (offline default), `minilm` (the real all-MiniLM-L6-v2 from its wheel),
       `embeddinggemma` (google/embeddinggemma-300m), `st:ID_OR_PATH` (any sentence-transformers model)
"""

from __future__ import annotations

from ingest.encoders.base import AudioEncoder, TextEncoder


def build_audio_encoder(name: str, device: str = "cpu", layers: str = "all", **options) -> AudioEncoder:
    if name == "fbank":
        from ingest.encoders.fbank import FbankEncoder

        return FbankEncoder(layers=layers, **options)
    if name == "auristream" or name.startswith("auristream:"):
        from ingest.encoders.auristream import AuriStreamEncoder

        if name.startswith("auristream:"):  # auristream:ID_OR_DIR picks another AuriStream checkpoint
            options.setdefault("model", name.split(":", 1)[1])
        return AuriStreamEncoder(device=device, layers=layers, **options)
    from lake.errors import LakeError

    raise LakeError(f"unknown audio encoder {name!r}; choose fbank or auristream")


def build_text_encoder(name: str, device: str = "cpu", **options) -> TextEncoder:
    if name == "hashing":
        from ingest.encoders.hashing import HashingEncoder

        return HashingEncoder(**{k: v for k, v in options.items() if k in ("dim",)})
    if name in ("embeddinggemma", "minilm") or name.startswith("st:"):
        from ingest.encoders.sentence import SentenceEncoder

        return SentenceEncoder(name, device=device, **options)
    from lake.errors import LakeError

    raise LakeError(f"unknown text encoder {name!r}; choose hashing, minilm, embeddinggemma or st:ID_OR_PATH")
