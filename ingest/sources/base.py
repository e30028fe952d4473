"""What a source reader yields: clips, or skip records for clips that cannot be used.

A source is split into *units* (a LAION tar, a chunk of a MELD split): ingest ranks
share the units, and a unit is the granularity at which a finished part of a killed
run is recognised. Reading a unit never extracts anything to disk: LAION audio comes
out of the tar as bytes, MELD audio is read from its mp4 path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from lake.splits import assign_split, check_fractions


@dataclass
class Clip:
    key: str  # unique in the source and stable across runs (a re-ingest finds the same key)
    transcript: str
    label: str  # a class name of the source's taxonomy
    source_uri: str  # where the audio came from, e.g. "path/x.tar#id.mp3" or "path/dia0_utt0.mp4"
    audio: bytes | None = None  # encoded audio (mp3, ...) read from a container, or
    path: str | None = None  # a file FFmpeg opens itself
    caption: str | None = None
    split: str | None = None  # an official split (MELD); None = hash split from lake.splits
    extra: dict[str, Any] = field(default_factory=dict)  # goes to the block meta (soft_labels, language, ...)


@dataclass
class Skip:
    """A clip that cannot be used, and why: it ends up in quarantine.jsonl."""

    key: str
    reason: str  # a short category first ("malformed json: ..."), counted in the summary
    source_uri: str = ""
    split: str | None = None  # an official split (MELD); None = hash split from lake.splits


@dataclass(frozen=True)
class Unit:
    id: str  # stable name, e.g. the tar's file name or "train:0000"
    size: int  # a cost estimate (bytes) for balancing units over ranks


@dataclass(frozen=True)
class SplitPolicy:
    """How a source's clips get their split: the split the source gives a clip (MELD's official
    train/dev/test, a manifest's split column), else a hash of the clip's key (lake.splits).
    `official`: every clip must come with its split."""

    method: str  # "official" or "hash"
    val_fraction: float = 0.0
    test_fraction: float = 0.0

    def __post_init__(self):
        if self.method not in ("official", "hash"):
            raise ValueError(f"split method {self.method!r}")
        if self.method == "hash":
            check_fractions(self.val_fraction, self.test_fraction)

    def split_of(self, item: "Clip | Skip") -> str:
        if item.split or self.method == "official":
            return item.split or "-"
        return self.split_of_key(item.key)

    def split_of_key(self, key: str) -> str:
        """The hash split of a key (a clip the source gave no split)."""
        return assign_split(key, self.val_fraction, self.test_fraction)

    def record(self) -> dict:
        """What the plan (and the manifest) records: a resume must split the same way."""
        if self.method == "official":
            return {"method": "official"}
        return {"method": "hash", "val_fraction": self.val_fraction, "test_fraction": self.test_fraction}


class Source(Protocol):
    name: str
    has_captions: bool
    split_policy: SplitPolicy

    def units(self) -> list[Unit]: ...

    def taxonomy(self) -> list[str]:
        """Ordered class names; fixed before any clip is read so ids never depend on read order."""
        ...

    def read(self, unit: Unit) -> Iterator[Clip | Skip]: ...

    def notes(self) -> list[str]:
        """Things to report at the end (ignored tars, unknown prompts with their tars, ...)."""
        ...

    def plan(self) -> dict:
        """What else about the source decides which rows a set holds (e.g. LAION's languages):
        recorded in the ingest plan, so a resume with other values is refused."""
        ...


def reason_category(reason: str) -> str:
    """The part of a skip reason before ':' (what the summary counts)."""
    return reason.split(":", 1)[0].strip()
