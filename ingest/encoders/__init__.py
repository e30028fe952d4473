"""Frozen encoders behind one small interface, selected by name on the command line.

audio: `fbank` (offline default), `auristream` (WavCoch tokens -> AuriStream hidden states),
       `egemaps` / `compare` (openSMILE eGeMAPSv02 / ComParE 2016 functionals, in the decode workers)
text:  `hashing` (offline default), `minilm` (the real all-MiniLM-L6-v2 from its wheel),
       `embeddinggemma` (google/embeddinggemma-300m), `st:ID_OR_PATH` (any sentence-transformers model)
"""

from __future__ import annotations

from ingest.encoders.base import AudioEncoder, TextEncoder


def build_audio_encoder(name: str, device: str = "cpu", layers: str = "all", **options) -> AudioEncoder:
    if name == "fbank":
        from ingest.encoders.fbank import FbankEncoder

        return FbankEncoder(layers=layers, **options)
    if name in ("egemaps", "compare"):
        from ingest.encoders.opensmile import OpenSmileEncoder

        return OpenSmileEncoder(name, layers=layers)
    if name == "auristream" or name.startswith("auristream:"):
        from ingest.encoders.auristream import AuriStreamEncoder

        if name.startswith("auristream:"):  # auristream:ID_OR_DIR picks another AuriStream checkpoint
            options.setdefault("model", name.split(":", 1)[1])
        return AuriStreamEncoder(device=device, layers=layers, **options)
    from lake.errors import LakeError

    raise LakeError(f"unknown audio encoder {name!r}; choose fbank, egemaps, compare or auristream")


def build_text_encoder(name: str, device: str = "cpu", **options) -> TextEncoder:
    if name == "hashing":
        from ingest.encoders.hashing import HashingEncoder

        return HashingEncoder(**{k: v for k, v in options.items() if k in ("dim",)})
    if name in ("embeddinggemma", "minilm") or name.startswith("st:"):
        from ingest.encoders.sentence import SentenceEncoder

        return SentenceEncoder(name, device=device, **options)
    from lake.errors import LakeError

    raise LakeError(f"unknown text encoder {name!r}; choose hashing, minilm, embeddinggemma or st:ID_OR_PATH")


def text_encoder_from_manifest(record: dict, device: str = "cpu", text_model: str = "") -> TextEncoder:
    """Rebuild a set's text encoder from its manifest record (pinned to the recorded revision)."""
    import re

    from lake.errors import LakeError

    if record["id"] == "hashing":
        text = build_text_encoder("hashing", dim=record["dim"])
    else:
        cfg = record.get("config", {})
        opts = {"prompt": cfg.get("prompt") or "none", "normalize": cfg.get("normalize", True)}
        model = text_model or (record.get("model") if record["id"] != "minilm" else None)
        if model and model != record["id"]:
            opts["model"] = model
        if not text_model and re.fullmatch(r"[0-9a-f]{40}", str(record.get("revision") or "")):
            opts["revision"] = record["revision"]
        text = build_text_encoder(record["id"], device=device, **opts)
    if text.dim != record["dim"]:
        raise LakeError(f"the rebuilt text encoder {record['id']} gives {text.dim} dims, the set recorded "
                        f"{record['dim']}; point it at the same model")
    return text


def encoders_from_manifest(encoders: dict, device: str = "cpu", text_model: str = "", audio_model: str = "",
                           audio_tokenizer: str = ""):
    """Rebuild the encoders a shard set was made with, from its manifest's `encoders` record.

    Used where new audio must land in a set's embedding space (prediction). `*_model` /
    `audio_tokenizer` point at local copies when the recorded hub ids are not reachable. The
    rebuilt dims must match the record; recorded commit revisions are pinned.
    """
    from lake.errors import LakeError

    a = encoders["audio"]
    acfg = a.get("config", {})
    layers = ",".join(a["layers"])
    if a["id"] == "fbank":
        audio = build_audio_encoder("fbank", layers=layers, n_mels=acfg.get("n_mels", 64))
    elif a["id"] in ("egemaps", "compare"):
        audio = build_audio_encoder(a["id"], layers=layers)
        if any(audio.config()[k] != acfg.get(k) for k in ("feature_names", "fp16")):
            raise LakeError(f"this openSMILE ({audio.config()['openSMILE']}) computes other {a['id']} features "
                            f"than the set's ({acfg.get('openSMILE')}); install the opensmile package the set "
                            f"was made with ({acfg.get('opensmile')})")
    else:
        opts = {"model": audio_model or acfg.get("model"), "tokenizer": audio_tokenizer or acfg.get("tokenizer")}
        if not audio_model and acfg.get("model_revision"):
            opts["model_revision"] = acfg["model_revision"]
        if not audio_tokenizer and acfg.get("tokenizer_revision"):
            opts["tokenizer_revision"] = acfg["tokenizer_revision"]
        audio = build_audio_encoder(a["id"], device=device, layers=layers, **{k: v for k, v in opts.items() if v})
    if audio.dim != a["dim"]:
        raise LakeError(f"the rebuilt audio encoder {a['id']} gives {audio.dim} dims, the set recorded "
                        f"{a['dim']}; point it at the same model")
    return audio, text_encoder_from_manifest(encoders["text"], device, text_model)
