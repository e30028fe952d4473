"""A corpus's own labels -> the class names of the set's taxonomy, fixed before any clip is read.

`--label-map FILE` maps source labels to class names (EmoBox's `label_map.json`:
`{"neu": "Neutral", "exc": "Happy", ...}`); with a map, a label it does not name is not
used. `--taxonomy FILE` fixes the classes and their order; without one the classes are
the map's names, else the labels the corpus has, sorted (ids never depend on read order).
"""

from __future__ import annotations

import json

from lake import storage
from lake.errors import LakeError
from lake.taxonomy import load_taxonomy_file


def load_label_map(path: str) -> dict[str, str] | None:
    """The JSON object of a label map file (source label -> class name); None for ""."""
    if not path:
        return None
    try:
        mapping = json.loads(storage.read_bytes(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LakeError(f"{path}: cannot read the label map ({e})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise LakeError(f"{path}: a label map is a JSON object of source label -> class name")
    return {str(k): v for k, v in mapping.items()}


class Labels:
    def __init__(self, taxonomy: list[str], label_map: dict[str, str] | None = None):
        self.taxonomy, self.label_map = list(taxonomy), label_map
        self._known = set(self.taxonomy)

    @classmethod
    def fixed(cls, taxonomy_file: str, label_map: dict[str, str] | None, present=None) -> "Labels":
        """The taxonomy of `--taxonomy`, else of the label map's names, else of the labels `present`."""
        if taxonomy_file:
            names = load_taxonomy_file(taxonomy_file)
        elif label_map:
            names = sorted(set(label_map.values()))
        else:
            names = sorted({str(x).strip() for x in present or () if str(x).strip()})
        if not names:
            raise LakeError("no labels: the corpus has no rows with a label (or pass --taxonomy FILE)")
        return cls(names, label_map)

    def resolve(self, raw) -> tuple[str | None, str | None]:
        """(class name, None), or (None, the quarantine reason)."""
        label = "" if raw is None else str(raw).strip()
        if not label:
            return None, "no label"
        if self.label_map is not None:
            if label not in self.label_map:
                return None, f"label not in label map: {label!r}"
            label = self.label_map[label]
        if label not in self._known:
            return None, f"label not in taxonomy: {label!r}"
        return label, None
