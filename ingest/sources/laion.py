"""LAION's Got Talent (enhanced): `.tar` files of `<id>.mp3` + `<id>.json` pairs.

Read straight from the tars, member by member, from a local folder or streamed from any
fsspec URL (`hf://datasets/laion/...[@REV]`, `s3://...`: ingest.sources.location); nothing
is extracted or downloaded to disk. A tar's language and class come from its name
(the emotion prompt, lake.taxonomy), so `--languages` and the prompt mapping pick tars
before any of their bytes are fetched. Its clips' transcripts come from
`flash_transcription`, falling back to the `<transcription_start>` block of
`annotation`; captions from `detailed_caption`; the per-emotion intensities of
`annotation`, when they parse, go to the block meta as soft labels.
Splits are hash splits of the clip key (lake.splits).

Keys: an audio member and its JSON pair up by their full member path without extension,
and a clip's key is `{tar stem}/{id}` for the hub's layouts (members at the top of the
tar or in a `{tar stem}/` folder); members in other folders keep their folder
(`{tar stem}/{folder}/{id}`), and two tars of the same stem in different folders of the
input are told apart by their path, so keys stay unique within a set.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterator

from lake import storage
from lake.blocks import SOFT_LABELS
from lake.errors import LakeError
from lake.taxonomy import EMONET_CATEGORIES, canonical_category, load_taxonomy_file, map_prompt, ordered_classes
from ingest.sources.base import BadClip, Clip, Skip, SplitPolicy, Unit, one_clip, printable
from ingest.sources.labels import load_label_map
from ingest.sources.location import RemoteStream, SourceReadError, list_files, pin_hub_url

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a")
LANGUAGES = {"en": "en", "english": "en", "de": "de", "german": "de", "es": "es", "spanish": "es",
             "fr": "fr", "french": "fr"}
HUB_DATASET = "laion/laions_got_talent_enhanced_flash_annotations_and_long_captions"
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


def _member_kind(name: str) -> str | None:
    """"audio", "json", or None for a member that is no half of a clip (other files, macOS `._` junk)."""
    if posixpath.basename(name).startswith("._"):
        return None
    ext = posixpath.splitext(name)[1].lower()
    return "json" if ext == ".json" else "audio" if ext in AUDIO_EXTENSIONS else None


# -- the source --------------------------------------------------------------------------------


class LaionSource:
    name = "laion"
    has_captions = True

    def __init__(self, root: str, languages=("en",), taxonomy: list[str] | None = None,
                 label_overrides: dict[str, str] | None = None, split_policy: SplitPolicy | None = None):
        if not storage.is_url(root) and not os.path.isdir(root):
            raise LakeError(f"{root}: not a directory of LAION tars (stream them with --input hf://datasets/{HUB_DATASET}, "
                            f"or download with `hf download {HUB_DATASET} --repo-type dataset --local-dir DIR`)")
        self.root, self.revision = pin_hub_url(storage.local_path(root))
        self.split_policy = split_policy or SplitPolicy("hash", 0.02, 0.02)
        self.ignored: list[str] = []  # ADDITIONAL_STUFF tars and names of another shape
        self.other_language: int = 0
        self.unknown_prompts: dict[str, list[str]] = defaultdict(list)  # prompt -> tar names
        self._tars: dict[str, tuple] = {}  # unit id -> (parsed name, class name or None, key prefix)
        tars = list_files(self.root, (".tar",))
        parsed_all = {rel: parse_tar_name(posixpath.basename(rel)) for rel, _ in tars}
        self.languages = self._check_languages(languages, {p.language for p in parsed_all.values() if p})
        # a stem that two tars share (in different folders) would give both the same keys
        stems = Counter(p.stem for p in parsed_all.values() if p)
        sizes = {}
        for rel, size in tars:
            parsed = parsed_all[rel]
            if parsed is None:
                self.ignored.append(rel)
                continue
            if parsed.language not in self.languages:
                self.other_language += 1
                continue
            label = map_prompt(parsed.prompt, label_overrides)
            if label is None:
                self.unknown_prompts[parsed.prompt].append(rel)
            prefix = parsed.stem if stems[parsed.stem] == 1 else rel[: -len(".tar")]
            self._tars[rel], sizes[rel] = (parsed, label, prefix), size
        if not self._tars:
            raise LakeError(f"{root}: no LAION tars for language(s) {', '.join(self.languages)} "
                            f"({len(tars)} .tar files seen, {self.other_language} in other languages)")
        present = {label for _, label, _ in self._tars.values() if label is not None}
        self._taxonomy = list(taxonomy) if taxonomy else ordered_classes(present, EMONET_CATEGORIES)
        # a remote tar whose name settles that none of its clips can be used is never fetched (a local
        # one is read, so each of its clips gets its own quarantine record)
        remote = storage.is_url(self.root)
        self._units = [Unit(id=rel, size=0 if remote and label not in self._taxonomy else sizes[rel])
                       for rel, (_, label, _) in self._tars.items()]

    @staticmethod
    def _check_languages(requested, present: set[str]) -> tuple[str, ...]:
        """The requested language codes, normalised; an unknown code stops the run before any work."""
        langs = tuple(dict.fromkeys(LANGUAGES.get(x.strip().lower(), x.strip().lower()) for x in requested if x.strip()))
        known = set(LANGUAGES.values())
        unknown = [x for x in langs if x not in known | present]
        if unknown or not langs:
            raise LakeError(f"--languages: {'unknown code(s) ' + ', '.join(unknown) if unknown else 'none given'}; "
                            f"known: {', '.join(sorted(known))}; in the input: {', '.join(sorted(present)) or 'none'}")
        return langs

    @classmethod
    def from_config(cls, cfg, world=None) -> "LaionSource":
        return cls.at(cfg.input, cfg)

    @classmethod
    def at(cls, root: str, cfg) -> "LaionSource":
        """The tars under `root`, with the languages, taxonomy, label map and split fractions of `cfg`."""
        if cfg.split_by != "key":
            raise LakeError(f"--split-by {cfg.split_by}: LAION's clips have no speaker ids; its splits are hash "
                            "splits of the clip key")
        taxonomy = load_taxonomy_file(cfg.taxonomy) if cfg.taxonomy else None
        return cls(root, languages=cfg.languages.split(","), taxonomy=taxonomy,
                   label_overrides=load_label_map(cfg.label_map),
                   split_policy=SplitPolicy("hash", cfg.val_fraction, cfg.test_fraction))

    def units(self) -> list[Unit]:
        return list(self._units)

    def plan(self) -> dict:
        return {"languages": list(self.languages), **({"revision": self.revision} if self.revision else {})}

    def taxonomy(self) -> list[str]:
        return list(self._taxonomy)

    def notes(self) -> list[str]:
        notes = []
        if self.revision:
            notes.append(f"read {self.root} (revision {self.revision})")
        if self.ignored:
            notes.append(f"ignored {len(self.ignored)} tar(s) that are not emotion prompts: "
                         + ", ".join(self.ignored[:5]) + (" ..." if len(self.ignored) > 5 else ""))
        if self.other_language:
            notes.append(f"skipped {self.other_language} tar(s) in languages other than {', '.join(self.languages)}")
        if self.unknown_prompts:
            lines = [f"  {prompt}: {', '.join(tars)}" for prompt, tars in sorted(self.unknown_prompts.items())]
            notes.append(f"{len(self.unknown_prompts)} emotion prompt(s) map to no class (extend lake.taxonomy or "
                         "pass --label-map FILE); their tars were not read:\n" + "\n".join(lines))
        return notes

    def _open(self, rel: str):
        if storage.is_url(self.root):
            return RemoteStream(storage.join(self.root, rel))
        return open(os.path.join(self.root, rel), "rb")

    def read(self, unit: Unit) -> Iterator[Clip | Skip]:
        parsed, label, prefix = self._tars[unit.id]
        path = storage.join(self.root, unit.id)
        unusable = (f"unknown emotion prompt: {parsed.prompt}" if label is None else
                    f"label not in taxonomy: {label}" if label not in self._taxonomy else None)
        if unusable and storage.is_url(self.root):
            yield Skip(key=f"{prefix}/*", reason=f"{unusable} (tar not fetched)", source_uri=path)
            return
        pending: dict[str, dict] = {}  # member path without extension -> {"audio"/"json": bytes, "*_name": member}
        used: set[str] = set()  # keys given out in this tar

        def uri(member: str) -> str:
            return f"{path}#{member}"

        try:
            with self._open(unit.id) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for info in tar:
                    name = info.name[2:] if info.name.startswith("./") else info.name
                    kind = _member_kind(name) if info.isreg() else None
                    if kind is None:
                        continue
                    data = tar.extractfile(info).read()  # a tar torn here is the tar's fault (below)
                    item = one_clip(lambda: self._member(name, kind, data, pending, prefix, parsed, used, uri),
                                    lambda why: Skip(key=self._unique(f"{prefix}/{printable(name)}", used),
                                                     reason=why, source_uri=uri(printable(name))))
                    if isinstance(item, Skip):
                        yield item
                    elif item is not None:  # a complete pair: its clip
                        key, entry = item
                        yield (Skip(key=key, reason=unusable, source_uri=uri(entry["audio_name"])) if unusable
                               else one_clip(lambda: self._clip(parsed, key, entry, label, uri),
                                             lambda why: Skip(key=key, reason=why, source_uri=uri(entry["json_name"]))))
        except SourceReadError as e:
            raise LakeError(f"{e}; the units finished so far are kept: re-run the same command to resume") from None
        except FileNotFoundError as e:
            raise LakeError(f"{path}: listed when the run started, gone now ({e}); re-run to resume") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            yield Skip(key=f"{prefix}/*", reason=f"damaged tar: {type(e).__name__}: {e} (clips after this point lost)",
                       source_uri=path)
        for stem, entry in sorted(pending.items()):
            member = entry.get("audio_name") or entry.get("json_name")
            missing = "json" if "audio" in entry else "audio"
            yield Skip(key=self._key(prefix, parsed.stem, stem, used),
                       reason=f"unpaired: {posixpath.basename(member)} has no {missing} member", source_uri=uri(member))

    def _member(self, name: str, kind: str, data: bytes, pending: dict, prefix: str, parsed, used: set[str],
                uri) -> Skip | tuple[str, dict] | None:
        """Take one member: a Skip (a second member of the same name), (key, entry) once both halves of a
        clip are in, else None (its pair is still to come). Runs in `one_clip`."""
        if name != printable(name):
            raise BadClip(f"bad member name: {printable(name)} is not UTF-8 (a name in another encoding)")
        stem = posixpath.splitext(name)[0]
        entry = pending.setdefault(stem, {})
        if kind in entry:  # keyed by the member's own name: no clip's key, nor another skip's
            return Skip(key=self._unique(f"{prefix}/{name}", used),
                        reason=f"duplicate member: {name} (a {kind} member for {entry[kind + '_name']} came first "
                               "and is used)", source_uri=uri(name))
        entry[kind], entry[kind + "_name"] = data, name
        if "json" in entry and "audio" in entry:
            return self._key(prefix, parsed.stem, stem, used), pending.pop(stem)
        return None

    @classmethod
    def _key(cls, prefix: str, tar_stem: str, member_stem: str, used: set[str]) -> str:
        """`{prefix}/{id}` for members at the top of the tar or in its `{tar stem}/` folder (the hub's
        layouts, and the keys of existing sets); `{prefix}/{member path}` for any other folder, or
        when the short key is taken (the same id both at the top and in the folder)."""
        folder, cid = posixpath.split(member_stem)
        key = f"{prefix}/{cid}" if folder in ("", tar_stem) else f"{prefix}/{member_stem}"
        return cls._unique(f"{prefix}/{member_stem}" if key in used else key, used)

    @staticmethod
    def _unique(key: str, used: set[str]) -> str:
        """`key`, or `key~2`, `key~3`, ... if it is taken (the same member path twice in one tar); claimed."""
        out, n = key, 1
        while out in used:
            n += 1
            out = f"{key}~{n}"
        used.add(out)
        return out

    def _clip(self, parsed, key: str, entry: dict, label: str, uri) -> Clip:
        """The clip of a complete pair. Runs in `one_clip`: JSON that does not parse (or nests too deep to)
        is that clip's quarantine reason."""
        try:
            meta = json.loads(entry["json"].decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise BadClip(f"malformed json: {type(e).__name__}: {str(e)[:120]}") from None
        if not isinstance(meta, dict):
            raise BadClip("malformed json: the top level is not an object")
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
            extra[SOFT_LABELS] = scores
        declared = None
        if isinstance(meta.get("duration"), (int, float)) and not isinstance(meta["duration"], bool):
            declared = float(meta["duration"])
            extra["json_duration"] = declared
        return Clip(key=key, transcript=transcript, label=label, source_uri=uri(entry["audio_name"]),
                    audio=entry["audio"],
                    caption=caption if isinstance(caption, str) else "", extra=extra, declared_s=declared)
