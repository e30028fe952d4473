"""What a source reader yields: clips, or skip records for clips that cannot be used.

A source is split into *units* (a LAION tar, a chunk of a MELD split): ingest ranks
share the units, and a unit is the granularity at which a finished part of a killed
run is recognised. Reading a unit never extracts anything to disk: LAION audio comes
out of the tar as bytes, MELD audio is read from its mp4 path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol


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


class Source(Protocol):
    name: str
    has_captions: bool

    def units(self) -> list[Unit]: ...

    def taxonomy(self) -> list[str]:
        """Ordered class names; fixed before any clip is read so ids never depend on read order."""
        ...

    def read(self, unit: Unit) -> Iterator[Clip | Skip]: ...

    def notes(self) -> list[str]:
        """Things to report at the end (ignored tars, unknown prompts with their tars, ...)."""
        ...


def reason_category(reason: str) -> str:
    """The part of a skip reason before ':' (what the summary counts)."""
    return reason.split(":", 1)[0].strip()
