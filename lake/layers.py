"""Which stored audio layers a spec names: one rule for ingest (what to store) and the trainers
(what to read).

    all        every layer of the list
    last       the last raw hidden layer: the last name that is not `final_norm` (AuriStream's
               `h{n_layer}`, what the reference run used; `logmel_stats` for fbank)
    a,b,...    names or indices into the list (negative indices count from the end)

Ingest applies it to the encoder's layers, the trainers to the layers a set stores, so with
`--audio-layers all` (or `last`) at ingest, `last` names the same layer at both ends.
"""

from __future__ import annotations

from lake.errors import LakeError

FINAL_NORM = "final_norm"


def resolve_layers(spec: str, names: list[str], what: str = "--audio-layers") -> list[str]:
    """The layer names `spec` picks out of `names`, in the order given, without repeats."""
    spec = str(spec).strip()
    if spec == "all":
        return list(names)
    if spec == "last":
        raw = [n for n in names if n != FINAL_NORM]
        return [(raw or names)[-1]]
    chosen = []
    for part in spec.split(","):
        part = part.strip()
        if part.lstrip("-").isdigit():
            i = int(part)
            if not -len(names) <= i < len(names):
                raise LakeError(f"{what}: index {i} out of range; there are {len(names)} layers ({', '.join(names)})")
            part = names[i]
        if part not in names:
            raise LakeError(f"{what}: no layer {part!r}; the layers are {', '.join(names)}")
        if part not in chosen:
            chosen.append(part)
    if not chosen:
        raise LakeError(f"{what}: empty list")
    return chosen
