"""The LAION part: tars named like the hub's, of <id>.mp3 + <id>.json pairs, with the bad cases a reader meets."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass

import numpy as np

from lake.errors import LakeError
from lake.taxonomy import EMONET_PROMPTS
from ingest.synthetic.spec import EXTRA_TAR, MAX_S, SR, TAR_MTIME, UNKNOWN_PROMPT_TAR
from ingest.synthetic.voice import VOICES, VOICE_NAMES, profile, sample_cues, syllables, synthesize
from ingest.synthetic.text import pick_text, make_annotation, make_caption
from ingest.synthetic.media import clip_rng, encode_mp3


@dataclass
class TarPlan:
    name: str  # file name, e.g. en_ash_intense_anger_rage_fury_hatred_and_annoyance.tar
    lang: str
    voice: str
    category: str | None  # None: the ignored extra tar, the unknown prompt tar
    prosody: str  # profile used for the audio
    folder: bool  # members under `{stem}/`
    json_first: bool
    clips: list[dict]  # {"id", "status"[, "variant"]}


def _tar_name(lang: str, voice: str, category: str, fixed: bool) -> str:
    return f"{lang}_{voice}_intense_{EMONET_PROMPTS[category]}{'_vocalbursts_fixed' if fixed else ''}.tar"


def share(total: int, weights: list[float], minimum: int = 0) -> list[int]:
    """Split `total` by `weights` (largest remainder), at least `minimum` each."""
    w = np.asarray(weights, dtype=float)
    base = np.full(len(w), minimum)
    rest = total - base.sum()
    raw = w / w.sum() * rest
    out = base + np.floor(raw).astype(int)
    for i in np.argsort(-(raw - np.floor(raw)), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return out.tolist()


def plan_laion(clips: int, classes: list[str], languages: list[str], rng: np.random.Generator) -> list[TarPlan]:
    n_en = 3 if clips >= 200 else 2
    tars: list[TarPlan] = []
    for ci, cat in enumerate(classes):
        for lang in languages:
            n_tars = n_en if lang == "en" else 1
            for k in range(n_tars):
                voice = VOICE_NAMES[(3 * ci + 4 * k + (0 if lang == "en" else 7)) % len(VOICE_NAMES)]
                fixed = (k + ci) % 3 != 1
                if ci == 0 and k == 1 and lang == "en":  # the same voice both plain and fixed, as on the hub
                    voice, fixed = tars[-1].voice, not tars[-1].name.endswith("_vocalbursts_fixed.tar")
                tars.append(TarPlan(_tar_name(lang, voice, cat, fixed), lang, voice, cat, cat,
                                    folder=(ci + k) % 2 == 0, json_first=(ci + 2 * k) % 3 != 0, clips=[]))
    if clips < len(tars):
        raise LakeError(f"--clips {clips} is too small: {len(classes)} classes x {len(languages)} languages make "
                        f"{len(tars)} tars; use --clips {len(tars)} or more")
    lang_w = {lang: (0.8 if lang == "en" else 0.2 / max(1, len(languages) - 1)) for lang in languages}
    if "en" not in languages:
        lang_w = {lang: 1.0 for lang in languages}
    counts = share(clips, [lang_w[t.lang] / (n_en if t.lang == "en" else 1) for t in tars], minimum=1)
    for tar, n in zip(tars, counts):
        ident = int(rng.integers(0, 40))
        for _ in range(n):
            tar.clips.append({"id": f"{ident:06d}", "status": "ok"})
            ident += 1 + int(rng.random() < 0.08)  # ids with gaps, as where generation failed

    # Bad cases, each in a different tar where possible.
    bad = ["malformed_json"] * 3 + ["mp3_only", "json_only", "corrupt_audio", "empty_audio"]
    order = rng.permutation(len(tars))
    used: set[tuple[int, int]] = set()
    for j, status in enumerate(bad):
        for attempt in range(len(tars)):
            t = int(order[(j + attempt) % len(tars)])
            free = [i for i in range(len(tars[t].clips)) if (t, i) not in used]
            if free and (len(free) > 1 or clips < 2 * len(tars)):
                i = free[int(rng.integers(0, len(free)))]
                used.add((t, i))
                tars[t].clips[i]["status"] = status
                tars[t].clips[i]["variant"] = j  # which kind of malformed json
                break
    extra = TarPlan(EXTRA_TAR, "en", "alloy", None, "Contentment", folder=False, json_first=True,
                    clips=[{"id": f"{i:06d}", "status": "ignored_tar"} for i in range(3)])
    unknown = TarPlan(UNKNOWN_PROMPT_TAR, "en", "alloy", None, "Fatigue/Exhaustion", folder=True, json_first=True,
                      clips=[{"id": f"{i:06d}", "status": "unknown_prompt"} for i in range(3)])
    return tars + [extra, unknown]


def _malformed(text: str, variant: int) -> bytes:
    if variant == 0:
        return text[: len(text) // 2].encode()  # truncated
    if variant == 1:
        return repr(json.loads(text)).encode()  # a Python dict repr: single quotes
    return b'[' + text.encode() + b']'  # valid JSON, but not an object


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.uname, info.gname = TAR_MTIME, "laion", "laion"
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        return
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def build_tar(plan: TarPlan, laion_dir: str, seed: int, max_s: float = MAX_S) -> list[dict]:
    """Synthesize and write one tar of clips up to `max_s` seconds; returns its truth records. The tar
    is written under a temporary name and renamed when complete: a `*.tar` in the folder is a finished one."""
    stem = plan.name[:-4]
    prefix = f"{stem}/" if plan.folder else ""
    records = []
    voice = VOICES[plan.voice]
    path = os.path.join(laion_dir, plan.name)
    with tarfile.open(path + ".part", "w", format=tarfile.PAX_FORMAT) as tar:
        if plan.folder:
            _tar_add(tar, stem, None)
        for clip in plan.clips:
            key = f"{stem}/{clip['id']}"
            rng = clip_rng(seed, key)
            cues = sample_cues(profile(plan.prosody), voice, rng)
            text = pick_text(rng, plan.prosody, plan.lang, cues.rate, max_s=max_s)
            wave, realised = synthesize(cues, voice, syllables(text), rng, max_s=max_s)
            duration = len(wave) / SR
            flash = "" if rng.random() < 0.1 else text
            block = text
            if rng.random() < 0.3:  # Gemini's block: a line break after a sentence, stray spaces
                block = re.sub(r"([.!?]) ", r"\1\n", text, count=1) + " "
            closing = "</transcription_end>" if rng.random() < 0.5 else "</transcription_start>"
            caption = make_caption(cues, voice, realised)
            meta = {"duration": duration, "detailed_caption": caption, "flash_transcription": flash,
                    "annotation": make_annotation(plan.category, cues, block, closing, rng)}
            json_text = json.dumps(meta, ensure_ascii=False)
            status = clip["status"]
            mp3 = encode_mp3(wave) if status not in ("corrupt_audio", "empty_audio", "json_only") else None
            if status == "corrupt_audio":
                mp3 = rng.bytes(int(rng.integers(2000, 6000)))
            elif status == "empty_audio":
                mp3 = b""
            json_bytes = json_text.encode()
            if status == "malformed_json":
                json_bytes = _malformed(json_text, clip["variant"] % 3)
            members = []
            if status != "json_only":
                members.append((f"{prefix}{clip['id']}.mp3", mp3))
            if status != "mp3_only":
                members.append((f"{prefix}{clip['id']}.json", json_bytes))
            if plan.json_first:
                members.reverse()
            for name, data in members:
                _tar_add(tar, name, data)
            transcript = None
            if status not in ("malformed_json", "mp3_only"):
                transcript = flash if flash else " ".join(block.split())
            records.append({
                "source": "laion", "key": key, "label": plan.category, "transcript": transcript,
                "caption": caption if status not in ("malformed_json", "mp3_only") else None, "split": None,
                "status": "unpaired" if status in ("mp3_only", "json_only") else status,
                "duration_s": duration, "file": f"laion/{plan.name}",
                "member": members[0][0] if len(members) == 1 else f"{prefix}{clip['id']}.mp3",
                "language": plan.lang, "voice": plan.voice, "prosody": plan.prosody,
            })
    os.replace(path + ".part", path)
    return records
