"""EmoBox's published layout (github.com/emo-box/EmoBox, 32 emotion corpora), read as a manifest:

    data/<dataset>/<dataset>.jsonl                              every clip of the corpus
    data/<dataset>/fold_<k>/<dataset>_train_fold_<k>.jsonl      the fold's train part
    data/<dataset>/fold_<k>/<dataset>_test_fold_<k>.jsonl       its test part
    data/<dataset>/fold_<k>/<dataset>_valid_fold_<k>.jsonl      an official val part, where a corpus has one
    data/<dataset>/label_map.json                               `emo` code -> class name

A row is `{"key", "dataset", "wav", "emo", "length", "sample_rate", "channel"[, "start_time",
"end_time"]}`; `wav` is relative to the folder that holds `data/` (where EmoBox's
instructions put `downloads/<dataset>/`). The folds are EmoBox's speaker-independent
splits; without an official val part, val is carved out of the fold's train part.
"""

from __future__ import annotations

import posixpath

from lake import storage
from lake.errors import LakeError

FIELDS = {"wav": "path", "emo": "label", "start_time": "start", "end_time": "end"}  # EmoBox name -> manifest name


def _name(root: str) -> str:
    return posixpath.basename(storage.local_path(root).rstrip("/"))


def is_emobox(root: str) -> bool:
    """A `data/<dataset>` folder: it holds `<dataset>.jsonl`, `label_map.json` or `fold_<k>/`."""
    try:
        names = storage.listdir(root)
    except (OSError, NotADirectoryError):
        return False
    name = _name(root)
    return f"{name}.jsonl" in names or "label_map.json" in names or any(n.startswith("fold_") for n in names)


def tables(root: str, fold: int) -> list[tuple[str, str | None]]:
    """(table path, the split its rows are in) to read: the fold's parts, or the whole corpus (split None)."""
    name = _name(root)
    if not fold:
        path = storage.join(root, f"{name}.jsonl")
        if not storage.exists(path):
            raise LakeError(f"{root}: no {name}.jsonl (an EmoBox data/<dataset> folder); pass --fold K to read "
                            "fold_K/ instead")
        return [(path, None)]
    folder = storage.join(root, f"fold_{fold}")
    if not storage.exists(folder):
        folds = sorted(n for n in storage.listdir(root) if n.startswith("fold_"))
        raise LakeError(f"{root}: no fold_{fold}/ (it has {', '.join(folds) or 'no folds'})")
    out = []
    for part, split in (("train", "train"), ("valid", "val"), ("test", "test")):
        path = storage.join(folder, f"{name}_{part}_fold_{fold}.jsonl")
        if storage.exists(path):
            out.append((path, split))
        elif part != "valid":
            raise LakeError(f"{folder}: no {name}_{part}_fold_{fold}.jsonl")
    return out


def default_audio_root(root: str) -> str:
    """The folder that holds `data/`, which EmoBox's `wav` paths start from (else `root` itself)."""
    parent = posixpath.dirname(storage.local_path(root).rstrip("/"))
    if posixpath.basename(parent) == "data":
        return posixpath.dirname(parent) or "."
    return storage.local_path(root)


def label_map_path(root: str) -> str | None:
    path = storage.join(root, "label_map.json")
    return path if storage.exists(path) else None


def to_manifest(values: dict) -> dict:
    """An EmoBox row in the manifest's column names (`length` becomes the declared duration)."""
    out = {FIELDS.get(k, k): v for k, v in values.items()}
    if "length" in values:
        out["declared_s"] = out.pop("length")
    return out
