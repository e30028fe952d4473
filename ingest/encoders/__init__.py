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


def encoders_from_manifest(encoders: dict, device: str = "cpu", text_model: str = "", audio_model: str = "",
                           audio_tokenizer: str = ""):
    """Rebuild the encoders a shard set was made with, from its manifest's `encoders` record.

    Used where new audio must land in a set's embedding space (prediction, zero-shot class
    prompts). `*_model` / `audio_tokenizer` point at local copies when the recorded hub ids
    are not reachable. The rebuilt dims must match the record.
    """
    from lake.errors import LakeError

    a, t = encoders["audio"], encoders["text"]
    acfg, tcfg = a.get("config", {}), t.get("config", {})
    layers = ",".join(a["layers"])
    if a["id"] == "fbank":
        audio = build_audio_encoder("fbank", layers=layers, n_mels=acfg.get("n_mels", 64))
    else:
        opts = {"model": audio_model or acfg.get("model"), "tokenizer": audio_tokenizer or acfg.get("tokenizer")}
        if not audio_model and acfg.get("model_revision"):
            opts["model_revision"] = acfg["model_revision"]
        if not audio_tokenizer and acfg.get("tokenizer_revision"):
            opts["tokenizer_revision"] = acfg["tokenizer_revision"]
        audio = build_audio_encoder(a["id"], device=device, layers=layers, **{k: v for k, v in opts.items() if v})
    if t["id"] == "hashing":
        text = build_text_encoder("hashing", dim=t["dim"])
    else:
        opts = {"prompt": tcfg.get("prompt") or "none", "normalize": tcfg.get("normalize", True)}
        model = text_model or (t.get("model") if t["id"] != "minilm" else None)
        if model and model != t["id"]:
            opts["model"] = model
        text = build_text_encoder(t["id"], device=device, **opts)
    for what, enc, rec in (("audio", audio, a), ("text", text, t)):
        if enc.dim != rec["dim"]:
            raise LakeError(f"the rebuilt {what} encoder {rec['id']} gives {enc.dim} dims, the set recorded "
                            f"{rec['dim']}; point it at the same model")
    return audio, text
