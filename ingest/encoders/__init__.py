"""Frozen encoders behind one small interface, selected by name on the command line.

audio: `fbank` (offline default), `auristream` / `auristream:ID_OR_DIR` (WavCoch tokens -> AuriStream
       hidden states), `egemaps` / `compare` (openSMILE eGeMAPSv02 / ComParE 2016 functionals, in
       the decode workers), `hf:ID_OR_DIR` (any transformers speech encoder: wav2vec2, HuBERT,
       WavLM, data2vec-audio, Whisper's encoder)
text:  `hashing` (offline default), `minilm` (the real all-MiniLM-L6-v2 from its wheel),
       `embeddinggemma` (google/embeddinggemma-300m), `st:ID_OR_PATH` (any sentence-transformers model)

ENCODERS maps a name, or a prefix ending in ":" (the rest of the name is the model), to its class
as "module:Class", imported only when used: transformers and openSMILE take seconds to import.
A class makes itself three ways (ingest.encoders.base): `build` from keyword options,
`from_config` from `python -m ingest` flags, `from_record` from a set's manifest record. A new
encoder is one module plus one line here.
"""

from __future__ import annotations

import importlib

from ingest.encoders.base import AudioEncoder, TextEncoder
from lake.errors import LakeError

ENCODERS = {
    "audio": {
        "fbank": "ingest.encoders.fbank:FbankEncoder",
        "egemaps": "ingest.encoders.opensmile:OpenSmileEncoder",
        "compare": "ingest.encoders.opensmile:OpenSmileEncoder",
        "auristream": "ingest.encoders.auristream:AuriStreamEncoder",
        "auristream:": "ingest.encoders.auristream:AuriStreamEncoder",
        "hf:": "ingest.encoders.hf_speech:HfSpeechEncoder",
    },
    "text": {
        "hashing": "ingest.encoders.hashing:HashingEncoder",
        "minilm": "ingest.encoders.sentence:SentenceEncoder",
        "embeddinggemma": "ingest.encoders.sentence:SentenceEncoder",
        "st:": "ingest.encoders.sentence:SentenceEncoder",
    },
}


def encoder_names(kind: str) -> str:
    """The names of one kind as a user types them."""
    return ", ".join(k + ("ID_OR_PATH" if k.endswith(":") else "") for k in ENCODERS[kind])


def encoder_class(kind: str, name: str):
    """The class of the `kind` ("audio" or "text") encoder `name`: an exact name, else a
    `prefix:` entry with something after the colon."""
    table = ENCODERS[kind]
    prefix, colon, rest = str(name).partition(":")
    key = name if not colon else (prefix + colon if rest else None)  # "hf:" alone names no model
    if key not in table:
        raise LakeError(f"unknown {kind} encoder {name!r}; choose {encoder_names(kind)}")
    module, cls = table[key].split(":")
    return getattr(importlib.import_module(module), cls)


def build_audio_encoder(name: str, device: str = "cpu", layers: str = "all", **options) -> AudioEncoder:
    return encoder_class("audio", name).build(name, device=device, layers=layers, **options)


def build_text_encoder(name: str, device: str = "cpu", **options) -> TextEncoder:
    return encoder_class("text", name).build(name, device=device, **options)


def _check_dims(encoder, record: dict, kind: str) -> None:
    if encoder.dim != record["dim"]:
        raise LakeError(f"the rebuilt {kind} encoder {record['id']} gives {encoder.dim} dims, the set recorded "
                        f"{record['dim']}; point it at the same model")


def audio_encoder_from_record(record: dict, device: str = "cpu", **overrides) -> AudioEncoder:
    """A set's audio encoder rebuilt from its manifest record (recorded commit revisions pinned;
    `model=` / `tokenizer=` point at local copies); its dims must be the recorded ones."""
    audio = encoder_class("audio", record["id"]).from_record(record, device, **overrides)
    _check_dims(audio, record, "audio")
    return audio


def text_encoder_from_manifest(record: dict, device: str = "cpu", text_model: str = "") -> TextEncoder:
    """Rebuild a set's text encoder from its manifest record (pinned to the recorded revision)."""
    text = encoder_class("text", record["id"]).from_record(record, device, model=text_model)
    _check_dims(text, record, "text")
    return text


def encoders_from_manifest(encoders: dict, device: str = "cpu", text_model: str = "", audio_model: str = "",
                           audio_tokenizer: str = ""):
    """Rebuild the encoders a shard set was made with, from its manifest's `encoders` record.

    Used where new audio must land in a set's embedding space (prediction). `*_model` /
    `audio_tokenizer` point at local copies when the recorded hub ids are not reachable. The
    rebuilt dims must match the record; recorded commit revisions are pinned.
    """
    audio = audio_encoder_from_record(encoders["audio"], device, model=audio_model, tokenizer=audio_tokenizer)
    return audio, text_encoder_from_manifest(encoders["text"], device, text_model)
