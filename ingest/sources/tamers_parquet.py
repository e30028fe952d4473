"""The previous tooling's precomputed parquet (vano04/TAMERSv2), read as it is: no audio, no encoders.

A local folder or any fsspec URL of one (hf://datasets/..., s3://...), searched recursively for
`*.parquet`, in one of the reference's two layouts:

  {emotion}.rank{RR}.parquet  embed_ddp.py: one file per emotion folder and rank; the schema
                              metadata names its `emotion`, every row has that folder's label_id
  shard_{idx:04d}.parquet     reshard.py: a shuffled mix (100k rows, 4,096-row groups, zstd) that
                              keeps only label_id; its schema metadata is copied from the first
                              input file, so its `emotion` says nothing about its rows

Columns: path, transcript, label_id (int32), audio_embedding and text_embedding (fixed-size
float32 lists); schema metadata: text_model, audio_quantizer, audio_model, projection_shape,
audio/text_embedding_dim, target_sr, world_size, decode_backend, token_cache_mode, manifest,
emotion, rank. What the vectors are: lake.tamers.

Keys come from `path` (`tamers_key`), so splits are this project's hash splits of the key and a
re-import gives the same set. A path seen twice (a file of an earlier run with another rank count
left beside the new one) is kept once, at its first place in file order. Class ids stay the
reference's label_ids (so its checkpoints' logits line up): names come from the per-emotion files,
or from --taxonomy; a resharded set without one is refused rather than guessed.
"""

from __future__ import annotations

import os
import posixpath
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from lake import storage
from lake.errors import LakeError
from lake.tamers import LAYERS, reference_encoders
from lake.taxonomy import MELD_CLASSES, load_taxonomy_file
from ingest.sources.base import Skip, SplitPolicy, Unit, one_clip, printable
from ingest.sources.location import list_files

COLUMNS = ("path", "transcript", "label_id", "audio_embedding", "text_embedding")
BATCH_ROWS = 4096
_PER_EMOTION = re.compile(r"^(?P<emotion>.+)\.rank(?P<rank>\d+)\.parquet$")
_RESHARDED = re.compile(r"^shard_\d+\.parquet$")
MELD_SPLITS = {"train": "train", "eval": "dev", "dev": "dev", "test": "test"}
"""The reference's MELD folder names (eval = MELD's dev) -> this project's split names."""

KEY_RULE = ("the path with '\\' as '/' and no extension; from its last 'audio' folder on, the parts after it "
            "(LAION: en/anger/0001) or the split before it plus the parts after it (MELD: train/00001); "
            "a path with no 'audio' folder keeps its last three parts")


def tamers_key(path: str, kind: str = "laion") -> str:
    """The clip key of a reference row: machine-independent (no absolute prefix), stable across imports."""
    parts = [p for p in posixpath.splitext(path.replace("\\", "/"))[0].split("/") if p]
    if "audio" in parts[:-1]:
        i = len(parts) - 1 - parts[::-1].index("audio", 1)
        return "/".join(parts[i + 1:] if kind == "laion" or i == 0 else [parts[i - 1]] + parts[i + 1:])
    return "/".join(parts[-3:])


def meld_split(key: str) -> str | None:
    return MELD_SPLITS.get(key.split("/", 1)[0])


@dataclass
class RowBatch:
    """Up to BATCH_ROWS rows of one file, ready to pack (fp16 vectors of the float32 input)."""

    keys: list[str]
    splits: list[str | None]  # official (MELD), or None = hash split of the key
    labels: np.ndarray  # int64 [n], the reference's label_id
    audio: np.ndarray  # float16 [n, 1, Da]
    text: np.ndarray  # float16 [n, Dt]
    transcripts: list[str]
    source_uris: list[str]  # the reference's `path`
    rows: list[int]  # row numbers in the file
    skips: list[Skip] = field(default_factory=list)


@dataclass
class _File:
    unit: Unit
    uri: str
    rows: int
    meta: dict[str, str]
    audio_dim: int
    text_dim: int
    layout: str  # "per-emotion", "resharded" or "other"
    emotion: str | None = None
    label_ids: set[int] = field(default_factory=set)
    duplicates: dict[int, str] = field(default_factory=dict)  # row -> where the key was first seen


def _list_files(root: str) -> list[tuple[str, str, int]]:
    """(unit id = path relative to root, uri, size) of every .parquet file, sorted (listings only)."""
    if root.endswith(".parquet"):
        if not storage.exists(root):
            raise LakeError(f"{root}: no such file")
        return [(posixpath.basename(root), root, storage.size(root))]
    if not storage.is_url(root) and not os.path.isdir(storage.local_path(root)):
        raise LakeError(f"{root}: not a directory of the reference's parquet files (download them with `hf download "
                        "Vano04/laions-got-talent-enhanced-precomputed-en --repo-type dataset --local-dir DIR`)")
    return [(rel.replace(os.sep, "/"), storage.join(root, rel), size) for rel, size in list_files(root, (".parquet",))]


@contextmanager
def _parquet(uri: str):
    """A ParquetFile of a local path (arrow reads it directly) or a URL (through fsspec)."""
    import pyarrow.parquet as pq

    with ExitStack() as stack:
        source = stack.enter_context(storage.open_file(uri)) if storage.is_url(uri) else storage.local_path(uri)
        try:
            # no pre-buffering (it holds whole row groups of every column: ~330 MB for 4,096-row groups of
            # 768-d vectors); a 1 MiB read buffer keeps a stream of any size at ~100 MB
            pf = pq.ParquetFile(source, pre_buffer=False, buffer_size=1 << 20)
        except Exception as e:  # noqa: BLE001 - arrow raises several types for a file that is not parquet
            raise LakeError(f"{uri}: not a readable parquet file ({type(e).__name__}: {e})") from None
        yield pf


def _vector_dim(uri: str, schema, column: str, declared: str | None) -> int:
    import pyarrow as pa

    t = schema.field(column).type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)) \
            or not pa.types.is_floating(t.value_type):
        raise LakeError(f"{uri}: column {column} is {t}, not a list of floats (the reference writes "
                        "fixed_size_list<float32>)")
    dim = t.list_size if pa.types.is_fixed_size_list(t) else (int(declared) if declared and declared.isdigit() else 0)
    if not dim:
        raise LakeError(f"{uri}: column {column} has no fixed length and the metadata declares none")
    if declared and declared.isdigit() and int(declared) != dim:
        raise LakeError(f"{uri}: {column} holds {dim} values per row, but the file's metadata says {declared}")
    return dim


class TamersParquetSource:
    """The reference's parquet files as units (one per file), with the taxonomy and encoders they imply.

    `kind`: "laion" (vectors through the reference's random projection), "meld" (its MELD features,
    without it) or "auto" (laion when every file records a `projection_shape`; otherwise refuse).
    Opening reads every file's footer and its `path` and `label_id` columns (cheap next to the
    vectors): that settles the taxonomy, the kind and the duplicates before anything is written.
    """

    name = "tamers-parquet"
    has_captions = False
    precomputed = True  # rows arrive as vectors: no decoding, no encoders (ingest.precomputed)

    def __init__(self, root: str, taxonomy: list[str] | None = None, kind: str = "auto",
                 split_policy: SplitPolicy | None = None):
        if kind not in ("auto", "laion", "meld"):
            raise LakeError(f"--tamers-kind {kind}: choose auto, laion or meld")
        self.root = root
        listed = _list_files(root)
        if not listed:
            raise LakeError(f"{root}: no .parquet files")
        self._files = {uid: self._inspect(uid, uri, size) for uid, uri, size in listed}
        files = list(self._files.values())
        dims = {(f.audio_dim, f.text_dim) for f in files}
        if len(dims) > 1:
            odd = next(f for f in files if (f.audio_dim, f.text_dim) != (files[0].audio_dim, files[0].text_dim))
            raise LakeError(f"{odd.uri}: audio/text vectors of {odd.audio_dim}/{odd.text_dim} dims, but "
                            f"{files[0].uri} has {files[0].audio_dim}/{files[0].text_dim}: not one export")
        self.kind = self._kind(kind, files)
        self.split_policy = SplitPolicy("official") if self.kind == "meld" else (split_policy or SplitPolicy("hash"))
        self.duplicate_rows = self._scan(files)
        self._taxonomy = self._decide_taxonomy(files, taxonomy)
        m = files[0].meta
        self._encoders = reference_encoders(
            self.kind, files[0].audio_dim, files[0].text_dim,
            **{k: m[k] for k in ("audio_model", "audio_quantizer", "text_model") if m.get(k)},
            **({"sample_rate": int(m["target_sr"])} if m.get("target_sr", "").isdigit() else {}))

    # -- opening -----------------------------------------------------------------
    def _inspect(self, uid: str, uri: str, size: int) -> _File:
        with _parquet(uri) as pf:
            schema, rows = pf.schema_arrow, pf.metadata.num_rows
        meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (schema.metadata or {}).items()}
        missing = [c for c in COLUMNS if c not in schema.names]
        if missing:
            raise LakeError(f"{uri}: not a reference embedding file: missing column(s) {', '.join(missing)} "
                            f"(it has {', '.join(schema.names)})")
        import pyarrow as pa

        if not pa.types.is_integer(schema.field("label_id").type):
            raise LakeError(f"{uri}: label_id is {schema.field('label_id').type}, not an integer")
        audio_dim = _vector_dim(uri, schema, "audio_embedding", meta.get("audio_embedding_dim"))
        text_dim = _vector_dim(uri, schema, "text_embedding", meta.get("text_embedding_dim"))
        name = posixpath.basename(uid)
        named = _PER_EMOTION.match(name)
        if _RESHARDED.match(name):
            layout, emotion = "resharded", None
        elif named or meta.get("emotion"):
            layout, emotion = "per-emotion", meta.get("emotion") or named.group("emotion")
        else:
            layout, emotion = "other", None
        return _File(Unit(id=uid, size=size), uri, rows, meta, audio_dim, text_dim, layout, emotion)

    def _kind(self, kind: str, files: list[_File]) -> str:
        projected = [f for f in files if f.meta.get("projection_shape")]
        if kind == "meld" and projected:
            f = projected[0]
            raise LakeError(f"{f.uri}: records projection_shape {f.meta['projection_shape']}: these are the "
                            "reference's LAION vectors (through its random projection), not MELD features; "
                            "use --tamers-kind laion")
        if kind == "auto":
            if len(projected) != len(files):
                f = next(f for f in files if not f.meta.get("projection_shape"))
                raise LakeError(f"{f.uri}: no projection_shape in its metadata, so it cannot be told whether its audio "
                                "went through the reference's random projection (its LAION export) or not (MELD "
                                "features); pass --tamers-kind laion or --tamers-kind meld")
            return "laion"
        return kind

    def _scan(self, files: list[_File]) -> int:
        """Label ids per file, and rows whose key an earlier row (in file order) already has."""
        import pyarrow.compute as pc

        seen: dict[str, int] = {}  # key -> file number << 32 | row (an int: 1.2M keys stay ~150 MB)
        duplicates = 0
        for n, f in enumerate(files):
            with _parquet(f.uri) as pf:
                row = 0
                for batch in pf.iter_batches(batch_size=65536, columns=["path", "label_id"]):
                    labels = batch.column("label_id")
                    if labels.null_count < len(labels):
                        f.label_ids.update(int(x) for x in pc.unique(labels.drop_null()).to_pylist())
                    for i, p in enumerate(batch.column("path").to_pylist()):
                        if p:
                            key = tamers_key(p, self.kind)
                            if key in seen:
                                first = seen[key]
                                f.duplicates[row + i] = f"{files[first >> 32].unit.id} row {first & 0xFFFFFFFF}"
                                duplicates += 1
                            else:
                                seen[key] = n << 32 | (row + i)
                    row += len(batch)
        return duplicates

    def _decide_taxonomy(self, files: list[_File], given: list[str] | None) -> list[str]:
        ids = sorted(set().union(*(f.label_ids for f in files)))
        if ids and ids[0] < 0:
            f = next(f for f in files if min(f.label_ids, default=0) < 0)
            raise LakeError(f"{f.uri}: negative label_id {min(f.label_ids)}")
        names = list(given) if given else (list(MELD_CLASSES) if self.kind == "meld" else None)
        if names is not None:
            if ids and ids[-1] >= len(names):
                f = next(f for f in files if f.label_ids and max(f.label_ids) >= len(names))
                raise LakeError(f"{f.uri}: label_id {max(f.label_ids)}, but the taxonomy names only {len(names)} "
                                f"classes ({names[0]}, ...); pass --taxonomy FILE with the reference's class names "
                                "in label_id order")
            return names
        by_id: dict[int, dict[str, str]] = {}  # label id -> {emotion: file}
        for f in files:
            if f.layout == "resharded" or f.emotion is None or len(f.label_ids) > 1:
                why = ("a resharded file (reshard.py keeps only label_id, not the class names)"
                       if f.layout != "per-emotion" else f"holds {len(f.label_ids)} label ids, not one emotion's")
                raise LakeError(f"{f.uri}: {why}; pass --taxonomy FILE with the reference's class names in "
                                "label_id order (its TARGET_LABELS)")
            for i in f.label_ids:
                by_id.setdefault(i, {}).setdefault(f.emotion, f.unit.id)
        for i, emotions in sorted(by_id.items()):
            if len(emotions) > 1:
                raise LakeError(f"label_id {i} comes from files of {len(emotions)} emotions ("
                                + ", ".join(f"{e} in {u}" for e, u in sorted(emotions.items()))
                                + "); pass --taxonomy FILE to name the classes")
        gaps = [i for i in range(ids[-1] + 1) if i not in by_id] if ids else []
        if gaps or not ids:
            raise LakeError(f"{self.root}: no rows carry label_id {', '.join(map(str, gaps[:5])) or 'any'}, so "
                            "those classes have no name here; pass --taxonomy FILE with the reference's class "
                            "names in label_id order")
        return [next(iter(by_id[i])) for i in range(ids[-1] + 1)]

    # -- the Source interface ------------------------------------------------------
    @classmethod
    def from_config(cls, cfg, world=None) -> "TamersParquetSource":
        taxonomy = load_taxonomy_file(cfg.taxonomy) if cfg.taxonomy else None
        return cls(cfg.input, taxonomy=taxonomy, kind=cfg.tamers_kind,
                   split_policy=SplitPolicy("hash", cfg.val_fraction, cfg.test_fraction))

    def units(self) -> list[Unit]:
        return [f.unit for f in self._files.values()]

    def taxonomy(self) -> list[str]:
        return list(self._taxonomy)

    def encoders(self) -> dict:
        return {k: dict(v) for k, v in self._encoders.items()}

    @property
    def layer(self) -> str:
        return LAYERS[self.kind]

    def plan(self) -> dict:
        """What the plan records about the input (a resume against changed files is refused)."""
        layouts = sorted({f.layout for f in self._files.values()})
        return {"tamers_kind": self.kind, "layout": layouts, "files": {uid: f.rows for uid, f in self._files.items()},
                "keys": KEY_RULE, "durations": "unknown: the reference's parquet has none (stored as 0)"}

    def notes(self) -> list[str]:
        notes = []
        if self.duplicate_rows:
            f = next(f for f in self._files.values() if f.duplicates)
            row, first = next(iter(f.duplicates.items()))
            notes.append(f"{self.duplicate_rows} row(s) repeat the path of an earlier row and were kept once "
                         f"(e.g. {f.unit.id} row {row} = {first}): files of two reference runs side by side?")
        if self.kind == "laion":
            notes.append("audio vectors are the reference's (through its untrained random projection): models "
                         "trained on them work only with sets imported the same way; re-ingest the audio to leave it")
        return notes

    def read_rows(self, unit: Unit) -> Iterator[RowBatch]:
        """The file's rows in batches, streamed (memory stays at one batch); bad rows become Skips."""
        f = self._files[unit.id]
        with _parquet(f.uri) as pf:
            row = 0
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=list(COLUMNS)):
                yield self._rows(f, batch, row)
                row += batch.num_rows

    def _name(self, path: str | None, f: _File, row: int) -> tuple[str, str | None]:
        """A row's key and (MELD features) split, from its path (run inside `one_clip`: a path it cannot parse
        is the row's fault)."""
        key = tamers_key(path, self.kind) if path else f"{f.unit.id}#row{row}"
        return key, meld_split(key) if self.kind == "meld" else None

    def _rows(self, f: _File, batch, first_row: int) -> RowBatch:
        import pyarrow.compute as pc

        n = batch.num_rows
        paths = batch.column("path").to_pylist()
        labels_col = batch.column("label_id")
        labels = pc.fill_null(labels_col, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        audio, audio_ok = _vectors(f, batch.column("audio_embedding"), f.audio_dim)
        text, text_ok = _vectors(f, batch.column("text_embedding"), f.text_dim)
        transcripts = batch.column("transcript").to_pylist()
        out = RowBatch([], [], labels, audio[:, None, :], text, [], [], [])
        keep = []
        for i in range(n):
            row = first_row + i
            if row in f.duplicates:
                continue
            uri = paths[i] or f"{f.uri}#row{row}"
            named = one_clip(lambda: self._name(paths[i], f, row),
                             lambda why: Skip(key=f"{f.unit.id}#row{row}", reason=why, source_uri=printable(uri)))
            if isinstance(named, Skip):
                out.skips.append(named)
                continue
            key, split = named
            reason = None
            if not paths[i]:
                reason = "malformed row: no path"
            elif labels[i] < 0:
                reason = "malformed row: no label_id"
            elif not (audio_ok[i] and text_ok[i]):
                reason = "bad embedding: missing or non-finite in float16 (" + \
                         ", ".join(m for m, ok in (("audio", audio_ok[i]), ("text", text_ok[i])) if not ok) + ")"
            elif self.kind == "meld" and split is None:
                reason = f"no MELD split: the path has no {'/'.join(MELD_SPLITS)} folder before audio/"
            if reason:
                out.skips.append(Skip(key=key, reason=reason, source_uri=uri,
                                      split=split if self.kind == "meld" else None))
                continue
            keep.append(i)
            out.keys.append(key)
            out.splits.append(split)
            out.transcripts.append(transcripts[i] or "")
            out.source_uris.append(uri)
            out.rows.append(row)
        out.labels, out.audio, out.text = out.labels[keep], out.audio[keep], out.text[keep]
        return out


def _vectors(f: _File, col, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 [n, dim] and a per-row ok mask (not null, every value finite after the cast to float16)."""
    import pyarrow as pa

    if not pa.types.is_fixed_size_list(col.type):
        try:
            col = col.cast(pa.list_(col.type.value_type, dim))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise LakeError(f"{f.uri}: a {col.type} column with rows of other lengths than {dim} ({e})") from None
    values = col.values.slice(col.offset * dim, len(col) * dim)
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: caught below
        arr = values.to_numpy(zero_copy_only=False).astype(np.float16).reshape(len(col), dim)
    ok = np.isfinite(arr).all(axis=1)
    if col.null_count:
        ok &= ~col.is_null().to_numpy(zero_copy_only=False)
    return arr, ok
