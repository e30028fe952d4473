"""`--source manifest`: any corpus described by a table, one row per clip (IEMOCAP, CREMA-D, ...).

A CSV or JSON Lines file with the columns
    path        the audio file: absolute, relative to the table's folder (or --audio-root), or a URL
    label       the emotion (mapped by --label-map, checked against --taxonomy)
and optionally `key` (else the path, and the span for a segment), `transcript`, `split`
(the corpus' own; else hash splits of the key, or of the speaker with --split-by speaker),
`start`/`end` (seconds: a segment of a longer recording, of which only the span is
decoded) and `speaker`. An EmoBox `data/<dataset>` folder is read the same way
(ingest.sources.emobox), with `--fold K` for its fold's train/test split.

Nothing about a row is guessed from read order: keys, splits and units come from the
table alone (its hash is in the plan, so a resume with another table is refused), and
each bad row (unreadable, missing file, unknown label, duplicate key, bad segment) is
quarantined with its file and line while the others are ingested.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
from dataclasses import dataclass, field
from typing import Iterator

from lake import storage
from lake.errors import LakeError
from ingest.sources import emobox
from ingest.sources.base import Clip, Skip, SplitPolicy, TableSource, Unit, one_clip, speaker_splits
from ingest.sources.labels import Labels, load_label_map
from ingest.sources.location import SourceReadError, read_remote
from ingest.sources.table import Row, read_table
from lake.splits import assign_split

REQUIRED = ("path", "label")
SPLIT_NAMES = {"validation": "val", "valid": "val"}
UNIT_ROWS = 512
_PCM_BYTES_PER_S = 32000  # 16 kHz 16-bit: a size estimate for balancing units over ranks


@dataclass
class Entry:
    """One row of the table, checked: a clip to read, or the reason it cannot be used."""

    key: str
    where: str  # "FILE line N"
    line_key: str  # "TABLE/lineN": the key of a row that has no usable key of its own
    label: str | None = None
    path: str = ""  # resolved: a local path or a URL
    split: str | None = None
    start: float | None = None
    end: float | None = None
    transcript: str = ""
    declared_s: float | None = None
    extra: dict = field(default_factory=dict)
    reason: str | None = None  # set: quarantined
    size: int = 0


def _seconds(value, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number of seconds") from None
    if math.isnan(x):
        raise ValueError(f"{name} {value!r} is not a number")
    if math.isinf(x):
        raise ValueError(f"{name} {value!r} is not a finite number of seconds")
    if x < 0:
        raise ValueError(f"{name} {value!r} is negative")
    return x


def _key_from_path(path: str, start, end) -> str:
    base = posixpath.splitext(path.replace("\\", "/"))[0].lstrip("/")
    if start is None and end is None:
        return base
    return f"{base}@{start or 0:.3f}-{'' if end is None else f'{end:.3f}'}"


class ManifestSource(TableSource):
    name = "manifest"
    has_captions = False

    def __init__(self, cfg):
        source = storage.local_path(cfg.input)
        self.layout = "emobox" if emobox.is_emobox(source) else "table"
        parts, self.audio_root, self.label_map = self._tables(cfg, source)
        self.fold = cfg.fold
        rows = self._read_rows(parts)
        self.split_policy = self._split_policy(cfg, source, rows)
        self.entries = [self._guarded_entry(path, r, split) for path, r, split in rows]
        good = [e for e in self.entries if e.reason is None]
        self.labels = Labels.fixed(cfg.taxonomy, self.label_map, present=[e.label for e in good])
        self._check_keys_and_labels(good)
        self._assign_splits(cfg)
        self.missing = [e for e in self.entries if e.reason is None and not storage.is_url(e.path)
                        and not os.path.exists(e.path)]
        self._units = [Unit(id=f"rows:{i // UNIT_ROWS:04d}", size=sum(e.size for e in self.entries[i:i + UNIT_ROWS]))
                       for i in range(0, len(self.entries), UNIT_ROWS)]
        if not self._units:
            raise LakeError(f"{source}: the table has no rows")

    def _tables(self, cfg, source: str) -> tuple[list[tuple[str, str | None]], str, dict | None]:
        """(the tables to read with the split of each, the folder relative audio paths start from, the label map)."""
        if self.layout == "emobox":
            return (emobox.tables(source, cfg.fold), cfg.audio_root or emobox.default_audio_root(source),
                    load_label_map(cfg.label_map or emobox.label_map_path(source) or ""))
        if cfg.fold:
            raise LakeError(f"--fold {cfg.fold}: {source} is not an EmoBox data/<dataset> folder")
        if not storage.is_url(source) and not os.path.isfile(source):
            raise LakeError(f"{source}: no such manifest (a .csv or .jsonl table, or an EmoBox data/<dataset> folder)")
        return [(source, None)], cfg.audio_root or posixpath.dirname(source) or ".", load_label_map(cfg.label_map)

    def _read_rows(self, parts) -> list[tuple[str, Row, str | None]]:
        """Every row as (table, row, split of its table part); the tables' hash goes to the plan (`sha256`)."""
        digest = hashlib.sha256()
        rows: list[tuple[str, Row, str | None]] = []
        for path, split in parts:
            table = read_table(path, required=REQUIRED if self.layout == "table" else ("key", "wav", "emo"))
            digest.update(storage.read_bytes(path))
            rows += [(path, r, split) for r in table]
        self.sha256 = digest.hexdigest()
        return rows

    def _split_policy(self, cfg, source: str, rows) -> SplitPolicy:
        """The table's own split column, EmoBox's fold parts, or hash splits of the key or the speaker."""
        has = {k for _, r, _ in rows for k in r.values}
        has_split = self.layout == "table" and "split" in has
        if cfg.split_by == "speaker":
            if "speaker" not in has:
                raise LakeError(f"--split-by speaker: {source} has no speaker column (it has "
                                f"{', '.join(sorted(has))})")
            if has_split:
                raise LakeError(f"--split-by speaker: {source} has its own split column; drop one of the two")
        fold_split = self.layout == "emobox" and cfg.fold
        if has_split or (fold_split and any(s == "val" for _, _, s in rows)):
            return SplitPolicy("official")
        if fold_split:  # val carved out of the fold's train part
            return SplitPolicy("hash", cfg.val_fraction, 0.0, by=cfg.split_by)
        return SplitPolicy("hash", cfg.val_fraction, cfg.test_fraction, by=cfg.split_by)

    def _check_keys_and_labels(self, good: list[Entry]) -> None:
        """A key seen before, or a label the taxonomy lacks, quarantines its row."""
        seen: dict[str, str] = {}
        for e in good:
            if e.key in seen:  # quarantined under its line: the key is the first row's
                e.reason = f"duplicate key: {e.key!r} of {seen[e.key]} again ({e.where})"
                e.key = e.line_key
                continue
            seen[e.key] = e.where
            e.label, why = self.labels.resolve(e.label)
            if why:
                e.reason = f"{why} ({e.where})"

    def _guarded_entry(self, table: str, row: Row, split: str | None) -> Entry:
        """`_entry` in the sources' one guard: whatever a row holds, it is quarantined under its line, not the run
        stopped (this runs before any work)."""
        where = f"{table} line {row.line}"
        line_key = f"{posixpath.splitext(posixpath.basename(table))[0]}/line{row.line}"
        return one_clip(lambda: self._entry(table, row, split),
                        lambda why: Entry(key=line_key, where=where, line_key=line_key, reason=f"{why} ({where})"))

    def _entry(self, table: str, row: Row, split: str | None) -> Entry:
        where = f"{table} line {row.line}"
        line_key = f"{posixpath.splitext(posixpath.basename(table))[0]}/line{row.line}"
        if row.error:
            return Entry(key=line_key, where=where, line_key=line_key, reason=f"bad row: {row.error}")
        v = emobox.to_manifest(row.values) if self.layout == "emobox" else row.values
        path = str(v.get("path") or "").strip()
        try:
            start, end = _seconds(v.get("start"), "start"), _seconds(v.get("end"), "end")
            if start is not None and end is not None and end <= start:
                raise ValueError(f"end {end} is not after start {start}")
            declared = _seconds(v.get("declared_s"), "length")
        except ValueError as e:
            return Entry(key=line_key, where=where, line_key=line_key, reason=f"bad segment: {e} ({where})")
        key = str(v.get("key") or "").strip() or _key_from_path(path, start, end)
        if start is not None or end is not None:
            declared = (end - start if end is not None else None) if start is not None else end
        resolved = path if storage.is_url(path) or os.path.isabs(path) else storage.join(self.audio_root, path)
        if split is None and v.get("split") not in (None, ""):
            split = SPLIT_NAMES.get(str(v["split"]).strip().lower(), str(v["split"]).strip().lower())
        extra = {k: str(v[k]).strip() for k in ("speaker", "dataset") if v.get(k) not in (None, "")}
        e = Entry(key=key, where=where, line_key=line_key, label=v.get("label"), path=resolved, split=split, start=start, end=end,
                  transcript=" ".join(str(v.get("transcript") or "").split()), declared_s=declared, extra=extra)
        if start is not None or end is not None:
            e.size = int(((end or start + 10.0) - (start or 0.0)) * _PCM_BYTES_PER_S)
        elif not storage.is_url(resolved) and os.path.isfile(resolved):
            e.size = os.path.getsize(resolved)
        else:
            e.size = int((declared or 2.0) * _PCM_BYTES_PER_S)
        return e

    def _assign_splits(self, cfg) -> None:
        """Every good row's split: its own, the fold part's, or from the key or speaker (`split_policy`)."""
        good = [e for e in self.entries if e.reason is None]
        policy = self.split_policy
        if policy.method == "official":
            for e in good:
                if not e.split:
                    e.reason = f"no split ({e.where}): the table's split column is empty here"
            return
        carve = [e for e in good if e.split in (None, "train")]  # the rows a hash split applies to
        if policy.by == "speaker":
            for e in carve:
                if not e.extra.get("speaker"):
                    e.reason = f"no speaker ({e.where}): --split-by speaker needs one on every row"
            carve = [e for e in carve if e.reason is None]
            by_speaker = speaker_splits([e.extra["speaker"] for e in carve], policy.val_fraction, policy.test_fraction)
            for e in carve:
                e.split = by_speaker[e.extra["speaker"]]
        elif self.layout == "emobox" and cfg.fold:
            for e in carve:
                e.split = assign_split(e.key, policy.val_fraction, 0.0)

    def plan(self) -> dict:
        root = self.audio_root if storage.is_url(self.audio_root) else os.path.abspath(self.audio_root)
        return {"layout": self.layout, "table_sha256": self.sha256, "audio_root": root,
                **({"fold": self.fold} if self.fold else {}),
                **({"label_map": self.label_map} if self.label_map else {})}

    def notes(self) -> list[str]:
        notes = []
        if self.missing:
            notes.append(f"{len(self.missing)} audio file(s) are not where the table says (first: "
                         f"{self.missing[0].path}); if the corpus lives elsewhere, pass --audio-root DIR")
        if self.layout == "emobox" and not self.fold:
            notes.append("read the whole EmoBox table with hash splits; --fold K takes EmoBox's fold K split")
        return notes

    def read(self, unit: Unit) -> Iterator[Clip | Skip]:
        i = int(unit.id.split(":")[1]) * UNIT_ROWS
        for e in self.entries[i:i + UNIT_ROWS]:
            yield one_clip(lambda: self._item(e),
                           lambda why: Skip(key=e.key, reason=f"{why} ({e.where})", source_uri=e.path, split=e.split))

    def _item(self, e: Entry) -> Clip | Skip:
        """The clip of one row, or why it cannot be used. Runs in `one_clip`."""
        if e.reason:
            return Skip(key=e.key, reason=e.reason, source_uri=e.path, split=e.split)
        clip = Clip(key=e.key, transcript=e.transcript, label=e.label, source_uri=e.path, split=e.split,
                    start=e.start, end=e.end, declared_s=e.declared_s, extra=dict(e.extra))
        if storage.is_url(e.path):
            try:
                clip.audio = read_remote(e.path)
            except FileNotFoundError:
                return Skip(key=e.key, reason=f"missing file: {e.path} ({e.where})", source_uri=e.path, split=e.split)
            except SourceReadError as err:
                raise LakeError(f"{err}; the units finished so far are kept: re-run the same command to "
                                "resume") from None
        elif not os.path.isfile(e.path):
            return Skip(key=e.key, reason=f"missing file: {e.path} ({e.where})", source_uri=e.path, split=e.split)
        elif not os.access(e.path, os.R_OK):
            return Skip(key=e.key, reason=f"unreadable file: {e.path} (permission denied; {e.where})",
                        source_uri=e.path, split=e.split)
        else:
            clip.path = e.path
        return clip
