"""LAION's Got Talent (enhanced): `.tar` files of `<id>.mp3` + `<id>.json` pairs.

Read straight from the tars (streamed, nothing extracted to disk). A tar's class
comes from its name's emotion prompt (lake.taxonomy); its clips' transcripts from
`flash_transcription`, falling back to the `<transcription_start>` block of
`annotation`; captions from `detailed_caption`; the per-emotion intensities of
`annotation`, when they parse, go to the block meta as soft labels.
Splits are hash splits of the clip key (lake.splits), decided later by ingest.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from collections import defaultdict
from typing import Iterator

from lake.errors import LakeError
from lake.taxonomy import (EMONET_CATEGORIES, map_prompt, ordered_classes, parse_annotation_scores,
                           parse_tar_name, transcript_from_annotation)
from ingest.sources.base import Clip, Skip, Unit

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a")


class LaionSource:
    name = "laion"
    has_captions = True

    def __init__(self, root: str, languages=("en",), taxonomy: list[str] | None = None,
                 label_overrides: dict[str, str] | None = None):
        if not os.path.isdir(root):
            raise LakeError(f"{root}: not a directory of LAION tars (download with "
                            "`hf download laion/laions_got_talent_enhanced_flash_annotations_and_long_captions "
                            "--repo-type dataset --local-dir DIR`)")
        self.root = root
        self.languages = tuple(languages)
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

    def units(self) -> list[Unit]:
        return list(self._units)

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
