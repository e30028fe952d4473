"""Emotions of new audio files with a trained SLM (and optionally the MELD head).

Inputs outside what the model saw (silent, shorter than a syllable or than the training clips,
far longer than the longest of them) are flagged in the output's `warnings`: the model still
answers, but a confident label for 50 ms of sound is not one to trust.

The files are decoded like ingest decodes (PyAV, 16 kHz mono, peak-normalised) and
encoded with the encoders recorded in the SLM checkpoint's data manifest, rounded to
float16 as the shards store them, so a prediction sees what training saw. A
transcript comes from --transcript, else from a `FILE.txt` beside the audio, else
is empty.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ingest.decode import DecodeError, decode_audio
from ingest.encoders import encoders_from_manifest
from lake.errors import LakeError, about, describe_os_error
from lake.tamers import refuse_rebuild
from trainers import models
from trainers.clap import check_same_projectors


class InputError(Exception):
    """One input file that cannot be used: its message says why (the other files are still answered)."""


def _transcript(path: str, given: str | None) -> str:
    if given is not None:
        return given
    side = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(side):
        return ""
    try:
        with about(side), open(side, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"cannot read its transcript: {describe_os_error(e)}") from None
    try:
        return raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        raise InputError(f"its transcript {side} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}): "
                         "save it as UTF-8, or pass the text with --transcript") from None


def load_input(path: str, transcript: str | None):
    """(decoded wave, transcript) of one input file; `InputError` says why a file cannot be used."""
    if os.path.isdir(path):
        raise InputError("a directory, not an audio file: pass the audio files in it (e.g. DIR/*.wav)")
    if not os.path.exists(path):
        raise InputError("no such file")
    try:
        dec = decode_audio(path)
    except DecodeError as e:
        raise InputError(f"cannot decode ({e})") from None
    return dec, _transcript(path, transcript)


def _top(probs: np.ndarray, names: list[str], k: int) -> list[dict]:
    order = np.argsort(-probs)[:k]
    return [{"label": names[i], "prob": round(float(probs[i]), 4)} for i in order]


MIN_SECONDS = 0.25  # shorter than a syllable: no emotion to hear, whatever the training clips were
LONGER_THAN_TRAINING = 2.0  # x the longest training clip: one label for a whole recording


def out_of_range(duration_s: float, wave: np.ndarray, seen: dict) -> list[str]:
    """Why an input lies outside what the model saw (`seen`: the training clips' duration quantiles)."""
    notes = []
    if not np.any(wave):
        notes.append("silent: every decoded sample is zero, so the probabilities below carry no information")
    shortest = max(MIN_SECONDS, 0.5 * seen["p1"]) if seen else MIN_SECONDS
    span = f"; the model was trained on clips of {seen['p1']:.1f} to {seen['p99']:.1f} s" if seen else ""
    if duration_s < shortest:
        notes.append(f"too short: {duration_s:.2f} s{span}")
    if seen and duration_s > LONGER_THAN_TRAINING * seen["max"]:
        notes.append(f"far longer than the training clips ({duration_s:.0f} s, the longest was {seen['max']:.1f} s): "
                     "one label for the whole recording; cut it into clips (a manifest with start/end does that)")
    return notes


def predict(files: list[str], stage3_ckpt: str, clap_ckpt: str | None = None, meld_ckpt: str | None = None,
            transcript: str | None = None, top: int = 5, device: str = "cpu", text_model: str = "",
            audio_model: str = "", audio_tokenizer: str = "") -> list[dict]:
    slm_task, slm = models.load(stage3_ckpt, stage="slm")
    ckpt = slm_task.checkpoint
    if clap_ckpt:
        check_same_projectors(clap_ckpt, slm.clap_audio, stage3_ckpt)
    meld = None
    if meld_ckpt:
        meld_task, meld = models.load(meld_ckpt, stage="meld")
        if meld_task.arch()["slm_arch"] != slm_task.arch():
            raise LakeError(f"{meld_ckpt}: its SLM differs from {stage3_ckpt}")
    data = ckpt["data"]
    refuse_rebuild(data["encoders"], "predict")  # the reference tooling's vectors cannot be made for new audio
    audio_enc, text_enc = encoders_from_manifest(data["encoders"], device=device, text_model=text_model,
                                                 audio_model=audio_model, audio_tokenizer=audio_tokenizer)
    layer_idx = [data["audio_layers"].index(x) for x in ckpt["arch"]["layers"]]
    taxonomy = ckpt["arch"]["taxonomy"]
    results = []
    for path in files:
        item = {"file": path}
        try:
            dec, text = load_input(path, transcript)
        except InputError as e:
            item["error"] = str(e)
            results.append(item)
            continue
        audio = audio_enc.encode([dec.wave])[:, layer_idx].astype(np.float16)
        text_emb = text_enc.encode([text]).astype(np.float16)
        a, t = torch.from_numpy(audio).float(), torch.from_numpy(text_emb).float()
        with torch.no_grad():
            probs = torch.softmax(slm(a, t), -1)[0].numpy()
            item.update(duration_s=round(dec.duration_s, 3), transcript=text, slm=_top(probs, taxonomy, top),
                        warnings=out_of_range(dec.duration_s, dec.wave, data.get("train_durations_s") or {}))
            if meld is not None:
                mprobs = torch.softmax(meld(a, t), -1)[0].numpy()
                item["meld"] = _top(mprobs, meld_task.taxonomy, len(mprobs))
        results.append(item)
    return results


def format_predictions(results: list[dict]) -> str:
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['file']}: {r['error']}")
            continue
        said = f'  "{r["transcript"]}"' if r["transcript"] else ""
        lines.append(f"{r['file']} ({r['duration_s']:.2f} s){said}")
        lines.append("  SLM:  " + " | ".join(f"{p['label']} {p['prob']:.3f}" for p in r["slm"]))
        if "meld" in r:
            lines.append("  MELD: " + " | ".join(f"{p['label']} {p['prob']:.3f}" for p in r["meld"]))
        lines += [f"  warning: {w}" for w in r.get("warnings", [])]
    return "\n".join(lines)
