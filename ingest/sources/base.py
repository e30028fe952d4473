"""What a source reader yields: clips, or skip records for clips that cannot be used.

A source is split into *units* (a LAION tar, a chunk of a MELD split): ingest ranks
share the units, and a unit is the granularity at which a finished part of a killed
run is recognised. Reading a unit never extracts anything to disk: LAION audio comes
out of the tar as bytes (from a local folder or streamed from an object store or the hub),
MELD and manifest audio is read from its path, a Hugging Face dataset's from its stored bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Protocol, TypeVar

from lake.errors import LakeError
from lake.splits import assign_split, check_fractions, unit_interval
from ingest.sources.location import SourceReadError

T = TypeVar("T")


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
    start: float | None = None  # a segment of a longer recording: decode only [start, end) seconds
    end: float | None = None
    declared_s: float | None = None  # the duration the source's metadata states (LAION JSON, EmoBox `length`)


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
    by: str = "key"  # "speaker": the source sets each clip's split from `speaker_splits`

    def __post_init__(self):
        if self.method not in ("official", "hash"):
            raise ValueError(f"split method {self.method!r}")
        if self.by not in ("key", "speaker"):
            raise ValueError(f"split by {self.by!r}")
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
        return {"method": "hash", "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                **({"by": self.by} if self.by != "key" else {})}


def speaker_splits(speakers, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Speaker -> split, so no speaker's voice is in two splits (emotion results leak across speakers).

    Corpora have few speakers (IEMOCAP 10, RAVDESS 24), so each speaker is not hashed on its own
    (with 10 speakers a 10% split would often get none): speakers are ordered by a hash of their
    name and the first round(fraction x speakers), at least one, go to test, the next to val.
    """
    check_fractions(val_fraction, test_fraction)
    order = sorted(set(speakers), key=lambda s: (unit_interval(f"speaker:{s}"), s))
    n = len(order)
    k_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    k_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if k_test + k_val >= n:
        raise LakeError(f"{n} speaker(s) are too few for speaker-independent splits with val {val_fraction} and "
                        f"test {test_fraction}: lower the fractions or split by key")
    return {s: "test" if i < k_test else "val" if i < k_test + k_val else "train" for i, s in enumerate(order)}


class TableSource:
    """What sources of labelled rows (a manifest table, a Hugging Face dataset) share: made from the flags alone,
    their units and classes fixed when they are opened (`_units`, `labels`)."""

    _units: list[Unit]

    @classmethod
    def from_config(cls, cfg, world=None):
        return cls(cfg)

    def units(self) -> list[Unit]:
        return list(self._units)

    def taxonomy(self) -> list[str]:
        return list(self.labels.taxonomy)


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


# -- one clip's faults: quarantined, never the run's ----------------------------------------------

class BadClip(ValueError):
    """Raised by a source's per-clip parse when it knows what is wrong: the message is the whole
    quarantine reason, "category: detail"."""


def printable(text: str) -> str:
    """`text` as valid UTF-8: bytes that are not (a tar member name of another encoding arrives with
    them as lone surrogates) shown as `\\xNN`, the same on every run."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (a JSON "\\ud800")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(what: str, value) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadClip(f"not UTF-8: the {what} holds {value[e.start:e.end]!a}, which is no text "
                          "(bytes of another encoding, or a lone \\u escape)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(what, k)
            _check_text(f"{what} {printable(str(k))}", v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_text(what, v)
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadClip(f"not a number: the {what} is {value}")


def check_clip(clip: Clip) -> Clip:
    """A clip whose every text is UTF-8 and every number finite: what the shards, the index and the
    encoders can take (a lone surrogate fails the parquet index; a NaN duration passes every check)."""
    for f in fields(clip):
        if f.name != "audio":
            _check_text({"declared_s": "duration", "source_uri": "source path"}.get(f.name, f.name),
                        getattr(clip, f.name))
    return clip


def one_clip(parse: Callable[[], T], skip: Callable[[str], T]) -> T:
    """The one guard every per-clip parse of a source runs in (its name, its JSON, its row's numbers):
    a Clip that comes out is checked (`check_clip`), whatever goes wrong becomes `skip(reason)`, that
    clip's quarantine record, and a Skip's key and path leave as `printable` text; the run goes on.
    Only what concerns the whole source (a `LakeError`, a remote read that failed after its retries)
    leaves it.

    Why a guard and not a try/except per field: a corpus holds defects nobody listed (a name in
    another encoding, JSON nested 100,000 deep, `end=inf`), and each used to stop the whole ingest,
    on every re-run."""
    try:
        item = parse()
        if isinstance(item, Clip):
            check_clip(item)
    except (LakeError, SourceReadError):
        raise
    except BadClip as e:
        item = skip(str(e))
    except Exception as e:  # noqa: BLE001 - any fault of one clip is that clip's, with its reason
        detail = " ".join(str(e).split())
        item = skip(f"bad clip: {type(e).__name__}" + (f": {detail[:160]}" if detail else ""))
    if isinstance(item, Skip):  # its key and path go to the quarantine file and the split hash as they are
        item.key, item.source_uri = printable(item.key), printable(item.source_uri)
    return item
