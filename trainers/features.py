"""Input conventions shared by the stage models: unit-norm inputs and the audio layer they read.

Both reference trainers only ever saw L2-normalised audio and text vectors; the
models here normalise their inputs themselves, so a checkpoint works on any set
with the same encoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lake.errors import LakeError
from lake.layers import resolve_layers

LAYER_HELP = ("audio layer: a stored layer name or index, 'last' (the last raw hidden layer, as the reference "
              "run), or 'weighted' (learned softmax weights over all stored layers; SLM prosody branch only)")


def l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1, eps=1e-6)


def resolve_layer(spec: str, stored: list[str]) -> str:
    """The one stored layer `spec` names (lake.layers: the rule ingest uses too)."""
    chosen = resolve_layers(spec, stored, what="--audio-layer (of the layers this set stores)")
    if len(chosen) != 1:
        raise LakeError(f"--audio-layer {spec}: names {len(chosen)} layers; give one (a name, an index or 'last')")
    return chosen[0]
