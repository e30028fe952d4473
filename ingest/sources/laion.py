"""LAION's Got Talent (enhanced): `.tar` files of `<id>.mp3` + `<id>.json` pairs.

Read straight from the tars (streamed, nothing extracted to disk). A tar's class
comes from its name's emotion prompt (lake.taxonomy); its clips' transcripts from
`flash_transcription`, falling back to the `<transcription_start>` block of
`annotation`; captions from `detailed_caption`; the per-emotion intensities of
`annotation`, when they parse, go to the block meta as soft labels.
Splits are hash splits of the clip key (lake.splits).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

from lake.errors import LakeError
from lake.taxonomy import EMONET_CATEGORIES, canonical_category, map_prompt, ordered_classes
from ingest.sources.base import Clip, Skip, SplitPolicy, Unit

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a")
LANGUAGES = {"en": "en", "english": "en", "de": "de", "german": "de", "es": "es", "spanish": "es",
             "fr": "fr", "french": "fr"}
_SUFFIXES = ("_vocalbursts_fixed",)


# -- the tar names and the JSON's annotation text -----------------------------------------------

@dataclass(frozen=True)
class LaionTarName:
    """The parts of a tar name `{lang}_{voice}_intense_{prompt words}[_vocalbursts_fixed].tar`, e.g.
    `de_alloy_intense_anger_rage_fury_hatred_and_annoyance_vocalbursts_fixed.tar`."""

    stem: str
    language: str  # en, de, es, fr (or the raw prefix, lowercased, if unknown)
    voice: str  # lowercased: some tars spell `Nova`
    prompt: str  # the emotion prompt words, without `intense_` and `_vocalbursts_fixed`


def is_extra_tar(name: str) -> bool:
    """`ADDITIONAL_STUFF*` tars (spelled `ADDITONAL_STUFF` on the hub): not emotion prompts."""
    return name.upper().startswith("ADDIT")


def parse_tar_name(name: str) -> LaionTarName | None:
    """Split `{lang}_{voice}_{prompt}.tar`; None when the name does not have that shape."""
    stem = name.rsplit("/", 1)[-1]
    if stem.endswith(".tar"):
        stem = stem[:-4]
    parts = stem.split("_")
    if len(parts) < 3 or is_extra_tar(stem):
        return None
    prompt = "_".join(parts[2:])
    for suffix in _SUFFIXES:
        if prompt.endswith(suffix):
            prompt = prompt[: -len(suffix)]
    if prompt.startswith("intense_"):
        prompt = prompt[len("intense_"):]
    lang = LANGUAGES.get(parts[0].lower(), parts[0].lower())
    return LaionTarName(stem=stem, language=lang, voice=parts[1].lower(), prompt=prompt)


_ANNOTATION_LINE = re.compile(r"<([A-Za-z][^<>#]*?)>\s*(-?\d+(?:\.\d+)?)\s*#")


def parse_annotation_scores(annotation: str) -> dict[str, float]:
    """Per-tag scores from Gemini annotation text: `<Elation>1#Slight elation ...</Elation>`.

    Emotion tags are renamed to their canonical category (tag spellings of multi-word
    categories vary: `Pleasure_Ecstasy`, `Pleasure/Ecstasy`); other tags (Valence,
    Arousal, ...) keep their own name. Unparseable lines are skipped.
    """
    scores: dict[str, float] = {}
    for tag, value in _ANNOTATION_LINE.findall(annotation or ""):
        tag = tag.strip()
        if tag.lower().startswith("transcription"):
            continue
        scores[canonical_category(tag) or tag] = float(value)
    return scores


_TRANSCRIPT = re.compile(r"<transcription_start>(.*?)(?:</?transcription[^>]*>|$)", re.DOTALL)


def transcript_from_annotation(annotation: str) -> str:
    """The text of the `<transcription_start>` block (its closing tag varies; parse defensively)."""
    m = _TRANSCRIPT.search(annotation or "")
    return " ".join(m.group(1).split()) if m else ""


# -- the source --------------------------------------------------------------------------------


class LaionSource:
    name = "laion"
    has_captions = True

    def __init__(self, root: str, languages=("en",), taxonomy: list[str] | None = None,
                 label_overrides: dict[str, str] | None = None, split_policy: SplitPolicy | None = None):
        if not os.path.isdir(root):
            raise LakeError(f"{root}: not a directory of LAION tars (download with "
                            "`hf download laion/laions_got_talent_enhanced_flash_annotations_and_long_captions "
                            "--repo-type dataset --local-dir DIR`)")
        self.root = root
        self.languages = tuple(languages)
        self.split_policy = split_policy or SplitPolicy("hash", 0.02, 0.02)
        self.ignored: list[str] = []  # ADDITIONAL_STUFF tars and names of another shape
        self.other_language: int = 0
        self.unknown_prompts: dict[str, list[str]] = defaultdict(list)  # prompt -> tar names
        self._tars: dict[str, tuple] = {}  # unit id -> (parsed name, class name or None for an unknown prompt)
        self._units: list[Unit] = []
        tars = sorted(os.path.relpath(os.path.join(d, f), root)
                      for d, _, files in os.walk(root) for f in files if f.endswith(".tar"))
        for rel in tars:
            name = os.path.basename(rel)
            parsed = parse_tar_name(name)
            if parsed is None:
                self.ignored.append(rel)
                continue
            if parsed.language not in self.languages:
                self.other_language += 1
                continue
            label = map_prompt(parsed.prompt, label_overrides)
            if label is None:
                self.unknown_prompts[parsed.prompt].append(rel)
            self._tars[rel] = (parsed, label)
            self._units.append(Unit(id=rel, size=os.path.getsize(os.path.join(root, rel))))
        if not self._units:
            raise LakeError(f"{root}: no LAION tars for language(s) {', '.join(self.languages)} "
                            f"({len(tars)} .tar files seen, {self.other_language} in other languages)")
        present = {label for _, label in self._tars.values() if label is not None}
        self._taxonomy = list(taxonomy) if taxonomy else ordered_classes(present, EMONET_CATEGORIES)

    @classmethod
    def from_config(cls, cfg, world=None) -> "LaionSource":
        return cls.at(cfg.input, cfg)

    @classmethod
    def at(cls, root: str, cfg) -> "LaionSource":
        """The tars under `root`, with the languages, taxonomy, label map and split fractions of `cfg`."""
        from lake.taxonomy import load_taxonomy_file

        taxonomy = load_taxonomy_file(cfg.taxonomy) if cfg.taxonomy else None
        overrides = None
        if cfg.label_map:
            try:
                overrides = json.load(open(cfg.label_map, encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise LakeError(f"{cfg.label_map}: cannot read the label map ({e})") from None
        languages = [x.strip() for x in cfg.languages.split(",") if x.strip()]
        return cls(root, languages=languages, taxonomy=taxonomy, label_overrides=overrides,
                   split_policy=SplitPolicy("hash", cfg.val_fraction, cfg.test_fraction))

    def units(self) -> list[Unit]:
        return list(self._units)

    def plan(self) -> dict:
        return {"languages": list(self.languages)}

    def taxonomy(self) -> list[str]:
        return list(self._taxonomy)

    def notes(self) -> list[str]:
        notes = []
        if self.ignored:
            notes.append(f"ignored {len(self.ignored)} tar(s) that are not emotion prompts: "
                         + ", ".join(self.ignored[:5]) + (" ..." if len(self.ignored) > 5 else ""))
        if self.other_language:
            notes.append(f"skipped {self.other_language} tar(s) in languages other than {', '.join(self.languages)}")
        if self.unknown_prompts:
            lines = [f"  {prompt}: {', '.join(tars)}" for prompt, tars in sorted(self.unknown_prompts.items())]
            notes.append(f"{len(self.unknown_prompts)} emotion prompt(s) map to no class (extend lake.taxonomy or "
                         "pass --label-map FILE); their clips were skipped:\n" + "\n".join(lines))
        return notes

    def read(self, unit: Unit) -> Iterator[Clip | Skip]:
        parsed, label = self._tars[unit.id]
        stem = parsed.stem
        path = os.path.join(self.root, unit.id)
        pending: dict[str, dict[str, bytes]] = {}  # id -> {"audio": ..., "json": ..., "ext": ...}

        def uri(member: str) -> str:
            return f"{path}#{member}"

        try:
            with tarfile.open(path, mode="r|*") as tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    base = posixpath.basename(info.name)
                    if base.startswith("._"):  # macOS AppleDouble junk
                        continue
                    cid, ext = posixpath.splitext(base)
                    ext = ext.lower()
                    if ext != ".json" and ext not in AUDIO_EXTENSIONS:
                        continue
                    data = tar.extractfile(info).read()
                    entry = pending.setdefault(cid, {})
                    if ext == ".json":
                        entry["json"], entry["json_name"] = data, info.name
                    else:
                        entry["audio"], entry["audio_name"] = data, info.name
                    if "json" in entry and "audio" in entry:
                        yield self._clip(parsed, cid, pending.pop(cid), label, uri)
        except (tarfile.TarError, EOFError, OSError) as e:
            yield Skip(key=f"{stem}/*", reason=f"damaged tar: {type(e).__name__}: {e} (clips after this point lost)",
                       source_uri=path)
        for cid, entry in sorted(pending.items()):
            member = entry.get("audio_name") or entry.get("json_name")
            missing = "json" if "audio" in entry else "audio"
            yield Skip(key=f"{stem}/{cid}", reason=f"unpaired: {posixpath.basename(member)} has no {missing} member",
                       source_uri=uri(member))

    def _clip(self, parsed, cid: str, entry: dict, label: str | None, uri) -> Clip | Skip:
        key = f"{parsed.stem}/{cid}"
        source_uri = uri(entry["audio_name"])
        if label is None:
            return Skip(key=key, reason=f"unknown emotion prompt: {parsed.prompt}", source_uri=source_uri)
        if label not in self._taxonomy:
            return Skip(key=key, reason=f"label not in taxonomy: {label}", source_uri=source_uri)
        try:
            meta = json.loads(entry["json"].decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("top level is not an object")
        except (ValueError, UnicodeDecodeError) as e:
            return Skip(key=key, reason=f"malformed json: {str(e)[:120]}", source_uri=uri(entry["json_name"]))
        annotation = meta.get("annotation") or ""
        annotation = annotation if isinstance(annotation, str) else ""
        transcript = meta.get("flash_transcription")
        transcript = " ".join(transcript.split()) if isinstance(transcript, str) else ""
        if not transcript:
            transcript = transcript_from_annotation(annotation)
        caption = meta.get("detailed_caption")
        extra = {"language": parsed.language, "voice": parsed.voice}
        scores = parse_annotation_scores(annotation)
        if scores:
            extra["soft_labels"] = scores
        if isinstance(meta.get("duration"), (int, float)):
            extra["json_duration"] = float(meta["duration"])
        return Clip(key=key, transcript=transcript, label=label, source_uri=source_uri, audio=entry["audio"],
                    caption=caption if isinstance(caption, str) else "", extra=extra)
