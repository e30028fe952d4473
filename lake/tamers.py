"""The previous tooling (vano04/TAMERSv2): what its precomputed vectors are, as encoder records.

Its LAION parquet holds, per clip, AuriStream's last hidden state mean-pooled (over every
token frame of a zero-padded batch of 8 clips, so padding counts), passed through a
randomly initialised, never trained Linear(768, 768) (torch seed 17), then L2-normalised;
the text is EmbeddingGemma with no prompt, normalised. Its MELD features skipped the
projection. Those are two different embedding spaces, and neither is what this project's
`auristream` encoder computes, so each gets its own encoder id. Ingest writes these records
into imported sets, and reference-layout checkpoints are given the records of the vectors
they were trained on, so the lake's ordinary encoder checks keep the spaces apart.

This sits in lake/ because both ingest (the import) and trainers (the checkpoints) need it.
"""

from __future__ import annotations

from lake.errors import LakeError
from lake.schema import SAMPLE_RATE

REFERENCE = "vano04/TAMERSv2"
LAION_AUDIO_ID = "tamers-auristream-randproj17"
MELD_AUDIO_ID = "tamers-auristream-meld"
TEXT_ID = "tamers-precomputed-text"
LAYERS = {"laion": "last_randproj17", "meld": "last"}
"""The one stored audio layer of an imported set, per kind."""

AUDIO_MODEL = "TuKoResearch/AuriStream100M_RoPE_librilight"
AUDIO_QUANTIZER = "TuKoResearch/WavCochV8192"
TEXT_MODEL = "google/embeddinggemma-300m"


def reference_encoders(kind: str = "laion", audio_dim: int = 768, text_dim: int = 768, audio_model: str = AUDIO_MODEL,
                       audio_quantizer: str = AUDIO_QUANTIZER, text_model: str = TEXT_MODEL,
                       sample_rate: int = SAMPLE_RATE) -> dict:
    """The manifest `encoders` record of the reference's precomputed vectors of one kind."""
    if kind not in LAYERS:
        raise ValueError(kind)
    pooling = ("mean of the last hidden state (hidden_states[-1]) over all token frames of the batch, the "
               "zero-padding of shorter clips included")
    audio_cfg = {"model": audio_model, "tokenizer": audio_quantizer, "pooling": pooling, "computed_by": REFERENCE}
    if kind == "laion":
        audio_cfg |= {"projection": f"Linear({audio_dim}, {audio_dim}) randomly initialised (torch seed 17), "
                                    "never trained; not reproducible here", "normalize": "L2 after the projection"}
    else:
        audio_cfg |= {"projection": None, "note": "MELD features: the same encoder without the projection, so "
                                                  "not in the space of the reference's LAION vectors"}
    return {
        "audio": {"id": LAION_AUDIO_ID if kind == "laion" else MELD_AUDIO_ID, "revision": None, "dim": int(audio_dim),
                  "layers": [LAYERS[kind]], "sample_rate": int(sample_rate), "config": audio_cfg},
        "text": {"id": TEXT_ID, "revision": None, "dim": int(text_dim), "model": text_model,
                 "config": {"model": text_model, "prompt": None, "normalize": True, "computed_by": REFERENCE}},
    }


def is_reference_encoders(encoders: dict) -> bool:
    return encoders.get("audio", {}).get("id") in (LAION_AUDIO_ID, MELD_AUDIO_ID)


def refuse_rebuild(encoders: dict, what: str) -> None:
    """New audio cannot be put into the reference's space: its random projection is not recorded anywhere."""
    if is_reference_encoders(encoders):
        raise LakeError(f"{what} reads vectors precomputed by {REFERENCE} ({encoders['audio']['id']}), whose audio "
                        "encoder cannot be rebuilt here (an untrained random projection); re-ingest the audio with "
                        "`python -m ingest --audio-encoder auristream` and retrain to predict on new files")
