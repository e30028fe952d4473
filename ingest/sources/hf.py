"""`--source hf`: any Hugging Face dataset with an audio column, streamed with
`datasets.load_dataset(ID_OR_PATH, streaming=True)` (a hub id, or a local folder of parquet
files or an `audiofolder` with a metadata CSV).

Audio is taken as the bytes (or the file) the dataset stores and decoded by ingest.decode,
the one decoder of every source: `datasets` 5 decodes its `Audio` feature with torchcodec,
which needs system FFmpeg libraries its wheel does not carry. `Audio(decode=False)` avoids
that for parquet data, but a folder-based dataset (audiofolder) still encodes each file path
through torchcodec's import, so the column is cast to `StoredAudio`, which keeps the stored
`{"bytes", "path"}` as they are.

A unit is one data file (a shard of the streamed split), so a killed run resumes per file.
Keys are the `--key-column`'s values, else `{split}/{shard}/{row}`: stable for a pinned
revision, and a hub dataset is read at the commit its revision names when the run starts
(recorded in the plan). Labels are a ClassLabel's names, else the label strings, whose set
(like the speakers for --split-by speaker) is read from the label column alone first.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Iterator

from lake import storage
from lake.errors import LakeError
from ingest.sources.base import Clip, Skip, SplitPolicy, TableSource, Unit, one_clip, speaker_splits
from ingest.sources.labels import Labels, load_label_map
from ingest.sources.location import hub_message, read_remote

SPLIT_NAMES = {"validation": "val", "valid": "val"}


def _stored_audio():
    import datasets

    @dataclass
    class StoredAudio(datasets.Audio):
        """`Audio(decode=False)` whose encoding of a path or bytes needs no torchcodec."""

        def encode_example(self, value):
            if isinstance(value, str):
                return {"bytes": None, "path": value}
            if isinstance(value, (bytes, bytearray)):
                return {"bytes": bytes(value), "path": None}
            if isinstance(value, dict) and set(value) <= {"bytes", "path"}:
                return {"bytes": value.get("bytes"), "path": value.get("path")}
            return super().encode_example(value)

    return StoredAudio(decode=False)


def parse_splits(spec: str, available: list[str]) -> tuple[dict[str, str], bool]:
    """({dataset split: lake split}, official?) from `--splits` (see the flag's help)."""
    items = [x.strip() for x in spec.split(",") if x.strip()]
    if not items:
        if len(available) == 1:
            return {available[0]: ""}, False
        return {s: SPLIT_NAMES.get(s.lower(), s.lower()) for s in available}, True
    pairs = [x.split("=", 1) for x in items]
    if len(items) == 1 and len(pairs[0]) == 1:
        out, official = {pairs[0][0]: ""}, False
    elif all(len(p) == 2 and p[0].strip() and p[1].strip() for p in pairs):
        out, official = {ds.strip(): lake.strip() for lake, ds in pairs}, True
    else:
        raise LakeError(f"--splits {spec}: give LAKE=DATASET pairs (train=train,val=validation,test=test), or one "
                        "dataset split to hash-split")
    unknown = [s for s in out if s not in available]
    if unknown:
        raise LakeError(f"--splits: the dataset has no split {', '.join(unknown)} (it has {', '.join(available)})")
    return out, official


class HfSource(TableSource):
    name = "hf"
    has_captions = False

    def __init__(self, cfg):
        import datasets

        self.cfg = cfg
        self.path = storage.local_path(cfg.input)
        if self.path.startswith("hf://datasets/"):  # the hub's URL form of a dataset id
            self.path = self.path[len("hf://datasets/"):].rstrip("/")
        self.local = os.path.isdir(self.path)
        if not self.local and (self.path.startswith((".", "/", "~")) or self.path.count("/") > 1):
            raise LakeError(f"{self.path}: no such folder (a local dataset folder, or a hub id OWNER/NAME)")
        if self.local and cfg.revision:
            raise LakeError(f"--revision {cfg.revision}: {self.path} is a local folder, not a hub dataset")
        self.revision = None if self.local else self._pin_revision(self.path, cfg.revision)
        self._load_kw = {"name": cfg.config or None, "revision": self.revision, "streaming": True}
        try:
            available = datasets.get_dataset_split_names(self.path, config_name=cfg.config or None,
                                                         revision=self.revision)
        except Exception as e:  # noqa: BLE001 - datasets raises many types for a missing or private dataset
            raise LakeError(self._load_error(e)) from None
        self.split_map, official = parse_splits(cfg.splits, list(available))
        self._datasets = {s: self._load(s) for s in self.split_map}
        self._check_columns(cfg)
        features = next(iter(self._datasets.values())).features or {}
        label_feature = features.get(cfg.label_column)
        self.class_names = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
        need_speakers = cfg.split_by == "speaker"
        if need_speakers and official:
            raise LakeError("--split-by speaker: the dataset's own splits are used; pass --splits with one "
                            "dataset split to hash-split it by speaker")
        label_map = load_label_map(cfg.label_map)
        present, speakers = None, None
        if (self.class_names is None and not cfg.taxonomy and not label_map) or need_speakers:
            present, speakers = self._column_pass(cfg, need_speakers)
        if self.class_names is not None and not cfg.taxonomy and not label_map:
            self.labels = Labels(self.class_names)  # the ClassLabel's own order
        else:
            self.labels = Labels.fixed(cfg.taxonomy, label_map, present=present)
        self.label_map = label_map
        self.split_policy = (SplitPolicy("official") if official else
                             SplitPolicy("hash", cfg.val_fraction, cfg.test_fraction, by=cfg.split_by))
        self.speaker_split = (speaker_splits(speakers, cfg.val_fraction, cfg.test_fraction)
                              if need_speakers else None)
        self._units = []
        for split, ds in self._datasets.items():
            n = ds.n_shards
            sizes = self._shard_sizes(split, n)
            self._units += [Unit(id=f"{split}:{i:04d}", size=sizes[i]) for i in range(n)]

    # -- opening ---------------------------------------------------------------------------------
    @staticmethod
    def _pin_revision(dataset: str, revision: str) -> str:
        from huggingface_hub import HfApi

        try:
            return HfApi().dataset_info(dataset, revision=revision or None).sha
        except Exception as e:  # noqa: BLE001 - hub errors of every kind: one line
            raise LakeError(hub_message(f"{dataset}" + (f"@{revision}" if revision else ""), e)) from None

    def _load_error(self, e: Exception) -> str:
        if self.local:
            return f"{self.path}: not a dataset folder `datasets` can read ({type(e).__name__}: {str(e)[:200]})"
        return hub_message(self.path, e)

    def _load(self, split: str, columns: list[str] | None = None):
        import datasets

        kw = dict(self._load_kw, split=split)
        try:
            if columns is not None:
                try:  # parquet reads only these columns; other builders take no `columns`
                    return datasets.load_dataset(self.path, columns=columns, **kw)
                except ValueError:
                    return datasets.load_dataset(self.path, **kw).select_columns(columns)
            ds = datasets.load_dataset(self.path, **kw)
        except Exception as e:  # noqa: BLE001
            raise LakeError(self._load_error(e)) from None
        audio = (ds.features or {}).get(self.cfg.audio_column)
        if isinstance(audio, datasets.Audio):
            ds = ds.cast_column(self.cfg.audio_column, _stored_audio())
        return ds

    def _check_columns(self, cfg) -> None:
        """A named column the dataset lacks stops the run here, before any work, listing the columns it has."""
        for split, ds in self._datasets.items():
            columns = ds.column_names
            if columns is None:  # features unknown until a row is read
                columns = list(next(iter(ds), {}).keys())
            wanted = {"--audio-column": cfg.audio_column, "--label-column": cfg.label_column,
                      "--text-column": cfg.text_column, "--key-column": cfg.key_column}
            if cfg.split_by == "speaker":
                wanted["--speaker-column"] = cfg.speaker_column
            for flag, col in wanted.items():
                if col and col not in columns:
                    raise LakeError(f"{self.path} ({split}): no column {col!r} for {flag}; it has "
                                    f"{', '.join(columns)}")
            self.has_speaker = cfg.speaker_column in columns

    def _column_pass(self, cfg, speakers: bool) -> tuple[list, list]:
        """The labels (and speakers) of every row, from those columns alone, to fix the taxonomy (and
        the speaker splits) before any clip is read."""
        print(f"reading the label{' and speaker' if speakers else ''} column of {self.path} first "
              "(--taxonomy FILE skips this for labels)", file=sys.stderr)
        cols = [cfg.label_column] + ([cfg.speaker_column] if speakers else [])
        labels, spk = [], []
        for split in self.split_map:
            for row in self._load(split, cols):
                labels.append(row[cfg.label_column])
                if speakers and row.get(cfg.speaker_column) not in (None, ""):
                    spk.append(str(row[cfg.speaker_column]))
        if self.class_names is not None:
            labels = [self.class_names[x] for x in labels if isinstance(x, int) and 0 <= x < len(self.class_names)]
        return labels, spk

    def _shard_sizes(self, split: str, n: int) -> list[int]:
        """Bytes per shard where the data files are local (an even share of the split's), else 1 MB each."""
        try:
            import datasets

            builder = datasets.load_dataset_builder(self.path, **{k: v for k, v in self._load_kw.items()
                                                                 if k != "streaming"})
            files = list(builder.config.data_files.get(split, [])) if builder.config.data_files else []
            if files and all(os.path.isfile(f) for f in files):
                if len(files) == n:
                    return [os.path.getsize(f) for f in files]
                return [sum(os.path.getsize(f) for f in files) // n] * n
        except Exception:  # noqa: BLE001 - only an estimate
            pass
        return [2**20] * n


    # -- the source ------------------------------------------------------------------------------
    def plan(self) -> dict:
        cfg = self.cfg
        columns = {k: v for k, v in (("audio", cfg.audio_column), ("label", cfg.label_column), ("text", cfg.text_column),
                                     ("key", cfg.key_column)) if v}
        if self.speaker_split is not None or self.has_speaker:
            columns["speaker"] = cfg.speaker_column
        return {"dataset": self.path if not self.local else os.path.abspath(self.path), "config": cfg.config or None,
                "revision": self.revision, "columns": columns, "split_map": self.split_map,
                **({"label_map": self.label_map} if self.label_map else {})}

    def notes(self) -> list[str]:
        return [f"read {self.path} at revision {self.revision}"] if self.revision else []

    def read(self, unit: Unit) -> Iterator[Clip | Skip]:
        split, shard = unit.id.rsplit(":", 1)
        ds = self._datasets[split]
        part = ds.shard(num_shards=ds.n_shards, index=int(shard), contiguous=True)
        lake_split = self.split_map[split] or None
        done = 0  # rows of this data file read
        try:
            for row in part:
                key = f"{split}/{shard}/{done:06d}"
                yield one_clip(lambda: self._item(row, key, lake_split),
                               lambda why: Skip(key=key, reason=why, source_uri=f"{self.path}#{key}", split=lake_split))
                done += 1
        except Exception as e:  # noqa: BLE001 - a dropped connection or a damaged data file
            raise LakeError(f"{self.path}: reading split {split} data file {int(shard)} failed after {done} rows "
                            f"({type(e).__name__}: {str(e)[:200]}); the units finished so far are kept: re-run "
                            "the same command to resume (if it fails at the same row again, that file is damaged)"
                            ) from None

    def _item(self, row: dict, default_key: str, split: str | None) -> Clip | Skip:
        """One row's clip, or why it cannot be used. Runs in `one_clip`: a row that breaks it is that row's fault."""
        cfg = self.cfg
        key = str(row.get(cfg.key_column) or "").strip() if cfg.key_column else ""
        key = key or default_key
        audio = row.get(cfg.audio_column)
        data, path = (audio.get("bytes"), audio.get("path")) if isinstance(audio, dict) else (
            (audio, None) if isinstance(audio, (bytes, bytearray)) else (None, audio))
        source_uri = f"{self.path}#{default_key}" + (f":{path}" if path else "")
        speaker = row.get(cfg.speaker_column) if self.has_speaker else None
        speaker = None if speaker in (None, "") else str(speaker)
        if self.speaker_split is not None:
            if speaker is None:
                return Skip(key=key, reason="no speaker: --split-by speaker needs one on every row",
                            source_uri=source_uri)
            split = self.speaker_split[speaker]
        raw = row.get(cfg.label_column)
        if self.class_names is not None and isinstance(raw, int):
            raw = self.class_names[raw] if 0 <= raw < len(self.class_names) else None
        label, why = self.labels.resolve(raw)
        if why:
            return Skip(key=key, reason=why, source_uri=source_uri, split=split)
        if not data and not path:
            return Skip(key=key, reason="no audio: the audio column is empty", source_uri=source_uri, split=split)
        clip = Clip(key=key, transcript=" ".join(str(row.get(cfg.text_column) or "").split()) if cfg.text_column else "",
                    label=label, source_uri=source_uri, split=split,
                    extra={"speaker": speaker} if speaker is not None else {})
        if data:
            clip.audio = bytes(data)
        elif storage.is_url(path):
            try:
                clip.audio = read_remote(path)
            except FileNotFoundError:
                return Skip(key=key, reason=f"missing file: {path}", source_uri=source_uri, split=split)
        elif not os.path.isfile(path):
            return Skip(key=key, reason=f"missing file: {path}", source_uri=source_uri, split=split)
        else:
            clip.path = path
        return clip
