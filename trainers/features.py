"""Input conventions shared by the stage models: unit-norm inputs and audio layer choice.

Both reference trainers only ever saw L2-normalised audio and text vectors; the
models here normalise their inputs themselves, so a checkpoint works on any set
with the same encoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lake.errors import LakeError

LAYER_HELP = ("audio layer: a stored layer name or index, 'last' (the last raw hidden layer, as the reference "
              "run), or 'weighted' (learned softmax weights over all stored layers; SLM prosody branch only)")


def l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1, eps=1e-6)


def resolve_layer(spec: str, stored: list[str], allow_weighted: bool = False) -> str:
    """One stored layer name for `spec`, or 'weighted'."""
    spec = str(spec).strip()
    if spec == "weighted":
        if not allow_weighted:
            raise LakeError("'weighted' audio layers are only for the SLM's prosody branch")
        return spec
    if spec == "last":
        raw = [n for n in stored if n != "final_norm"]
        return (raw or stored)[-1]
    if spec.lstrip("-").isdigit():
        i = int(spec)
        if not -len(stored) <= i < len(stored):
            raise LakeError(f"audio layer index {i} out of range: the set stores {len(stored)} ({', '.join(stored)})")
        return stored[i]
    if spec not in stored:
        raise LakeError(f"audio layer {spec!r} is not stored in this set (stored: {', '.join(stored)})")
    return spec
