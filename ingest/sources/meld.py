"""MELD (MELD.Raw): `{train,dev,test}_sent_emo.csv` + `dia{D}_utt{U}.mp4` clips.

Splits are MELD's own: train (`train_splits/`), dev (`dev_splits_complete/`), test
(`output_repeated_splits_test/`). In the test folder some clips were re-cut and carry
a `final_videos_test` prefix (`final_videos_testdia108_utt0.mp4`); their plain-named
twins are the wrong cut, so the prefixed file wins. Each CSV row is matched to its
own file by (Dialogue_ID, Utterance_ID), never by position, so a missing clip drops
exactly its own row. Utterances carry cp1252 punctuation stored as C1 control
characters (U+0092 for an apostrophe): they are mapped back to readable text. A CSV row
that cannot be read (a file cut mid-row) is quarantined with its file and line; the
other rows are ingested (ingest.sources.table).
"""

from __future__ import annotations

import os
import re
from typing import Iterator

from lake.errors import LakeError
from lake.taxonomy import MELD_CLASSES
from ingest.sources.base import Clip, Skip, SplitPolicy, Unit, one_clip
from ingest.sources.table import Row, read_csv as read_table_csv

SPLITS = {
    "train": ("train_sent_emo.csv", "train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
TEST_PREFIX = "final_videos_test"
COLUMNS = ("Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
           "Season", "Episode", "StartTime", "EndTime")
_CLIP_NAME = re.compile(r"^(?:final_videos_test)?dia(\d+)_utt(\d+)\.mp4$")

# cp1252 punctuation that MELD's CSVs carry as C1 control characters (declare-lab/MELD PR #28)
_C1 = {"\x85": "...", "\x91": "'", "\x92": "'", "\x93": '"', "\x94": '"', "\x96": "-", "\x97": "--", "\xa0": " "}
_TYPOGRAPHIC = {"’": "'", "‘": "'", "“": '"', "”": '"', "–": "-", "—": "--", "…": "..."}


def fix_text(text: str) -> str:
    """Readable utterance text: undo cp1252-as-UTF-8 mojibake and map cp1252 controls to ASCII."""
    if "â€" in text or "Â" in text:
        try:
            text = text.encode("cp1252").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            text = text.replace("Â", "")
    for bad, good in {**_C1, **_TYPOGRAPHIC}.items():
        text = text.replace(bad, good)
    return text.strip()


def read_csv(path: str) -> list[Row]:
    """The rows of a MELD CSV; a row that cannot be read is kept as an error row (see table.Row)."""
    return read_table_csv(path, COLUMNS, what="MELD CSV")[1]


class MeldSource:
    name = "meld"
    has_captions = False
    split_policy = SplitPolicy("official")

    def __init__(self, root: str, unit_rows: int = 1024, splits=tuple(SPLITS)):
        if not os.path.isdir(root):
            raise LakeError(f"{root}: not a MELD directory (extract MELD.Raw.tar.gz and its train/dev/test "
                            "archives; expected *_sent_emo.csv and the clip folders)")
        self.root, self.unit_rows = root, unit_rows
        self._rows: dict[str, list[Row]] = {}
        self._first_row: dict[str, dict[tuple[int, int], int]] = {}  # split -> (dia, utt) -> first CSV row
        self._files: dict[str, dict[tuple[int, int], str]] = {}  # split -> (dia, utt) -> path
        self._orphans: dict[str, list[str]] = {}
        self._units: list[Unit] = []
        folders = self._find_folders(root)
        for split in splits:
            csv_name, folder_name = SPLITS[split]
            csv_path = self._find_file(root, csv_name)
            if csv_path is None:
                raise LakeError(f"{root}: no {csv_name} (the MELD CSVs sit at the top of MELD.Raw)")
            self._rows[split] = read_csv(csv_path)
            self._first_row[split] = {}
            for n, r in enumerate(self._rows[split]):
                du = self._du(r)
                if du is not None:
                    self._first_row[split].setdefault(du, n)
            folder = folders.get(folder_name)
            files: dict[tuple[int, int], str] = {}
            prefixed: dict[tuple[int, int], str] = {}
            if folder is not None:
                for name in sorted(os.listdir(folder)):
                    m = _CLIP_NAME.match(name)
                    if m:
                        target = prefixed if name.startswith(TEST_PREFIX) else files
                        target[(int(m.group(1)), int(m.group(2)))] = os.path.join(folder, name)
            files.update(prefixed)  # the re-cut clip wins over its plain-named twin
            self._files[split] = files
            wanted = {du for du in map(self._du, self._rows[split]) if du is not None}
            self._orphans[split] = sorted(p for du, p in files.items() if du not in wanted)
            n = len(self._rows[split])
            for i, start in enumerate(range(0, n, unit_rows)):
                rows = self._rows[split][start:start + unit_rows]
                size = sum(os.path.getsize(p) for p in (files.get(self._du(r)) for r in rows) if p)
                self._units.append(Unit(id=f"{split}:{i:04d}", size=size))
            if self._orphans[split]:
                self._units.append(Unit(id=f"{split}:orphans", size=0))

    @staticmethod
    def _find_folders(root: str) -> dict[str, str]:
        """Clip folders by name, wherever the archive put them (some mirrors nest them)."""
        names = {folder for _, folder in SPLITS.values()}
        found = {}
        for d, subdirs, _ in os.walk(root):
            for s in subdirs:
                if s in names and s not in found:
                    found[s] = os.path.join(d, s)
        return found

    @staticmethod
    def _find_file(root: str, name: str) -> str | None:
        for d, _, files in os.walk(root):
            if name in files:
                return os.path.join(d, name)
        return None

    @staticmethod
    def _du(row: Row) -> tuple[int, int] | None:
        try:
            return int(row.values["Dialogue_ID"]), int(row.values["Utterance_ID"])
        except (KeyError, ValueError, TypeError):
            return None

    @classmethod
    def from_config(cls, cfg, world=None) -> "MeldSource":
        if cfg.split_by != "key":
            raise LakeError(f"--split-by {cfg.split_by}: MELD keeps its official train/dev/test splits")
        return cls(cfg.input)

    def units(self) -> list[Unit]:
        return list(self._units)

    def plan(self) -> dict:
        return {}

    def taxonomy(self) -> list[str]:
        return list(MELD_CLASSES)

    def notes(self) -> list[str]:
        notes = []
        for split, orphans in self._orphans.items():
            if orphans:
                notes.append(f"{split}: {len(orphans)} clip file(s) have no CSV row (skipped): "
                             + ", ".join(os.path.basename(p) for p in orphans[:5]))
        return notes

    def read(self, unit: Unit) -> Iterator[Clip | Skip]:
        split, part = unit.id.split(":")
        if part == "orphans":
            for path in self._orphans[split]:
                m = _CLIP_NAME.match(os.path.basename(path))
                yield Skip(key=f"meld/{split}/dia{m.group(1)}_utt{m.group(2)}", reason="no csv row: clip has no label",
                           source_uri=path, split=split)
            return
        start = int(part) * self.unit_rows
        for n, r in enumerate(self._rows[split][start:start + self.unit_rows], start):
            yield one_clip(lambda: self._row(split, n, r),
                           lambda why: Skip(key=f"meld/{split}/line{r.line}", reason=why, split=split))

    def _row(self, split: str, n: int, r) -> Clip | Skip:
        """One CSV row: its clip, or the reason it cannot be used (run inside `one_clip`: any fault is the row's)."""
        if r.error:
            return Skip(key=f"meld/{split}/line{r.line}", reason=f"bad csv row: {r.error}", split=split)
        row, du = r.values, self._du(r)
        if du is None:
            return Skip(key=f"meld/{split}/line{r.line}",
                        reason=f"bad csv row: {SPLITS[split][0]} line {r.line}: no dialogue/utterance id", split=split)
        key = f"meld/{split}/dia{du[0]}_utt{du[1]}"
        emotion = (row.get("Emotion") or "").strip().lower()
        if self._first_row[split][du] != n:  # a (dialogue, utterance) listed twice, possibly in another unit
            return Skip(key=key, reason="duplicate csv row", split=split)
        path = self._files[split].get(du)
        if path is None:
            return Skip(key=key, reason=f"missing clip: no dia{du[0]}_utt{du[1]}.mp4 in {SPLITS[split][1]}/",
                        split=split)
        if emotion not in MELD_CLASSES:
            return Skip(key=key, reason=f"unknown emotion: {emotion!r}", source_uri=path, split=split)
        extra = {"speaker": fix_text(row.get("Speaker", "")), "sentiment": row.get("Sentiment", "").strip(),
                 "season": row.get("Season", "").strip(), "episode": row.get("Episode", "").strip(),
                 "start": row.get("StartTime", "").strip(), "end": row.get("EndTime", "").strip(),
                 "sr_no": row.get("Sr No.", "").strip()}
        return Clip(key=key, transcript=fix_text(row.get("Utterance", "")), label=emotion, source_uri=path,
                    path=path, split=split, extra=extra)
