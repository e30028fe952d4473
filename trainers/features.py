"""Input conventions shared by the stage models: unit-norm inputs, per-feature standardisation
before them where the encoder asks for it, and the audio layer they read.

Both reference trainers only ever saw L2-normalised audio and text vectors; the
models here normalise their inputs themselves, so a checkpoint works on any set
with the same encoders. For encoders whose features live on different scales (the
set's manifest records the train split's statistics: shards.stats), each feature is
first standardised with those statistics, held as buffers in the model: the checkpoint
carries them, so evaluation and prediction apply what training applied, whatever set
they read. Sets without statistics keep exactly the reference's numerics.
"""

from __future__ import annotations

import torch
import torch.nn as nn
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


class Standardize(nn.Module):
    """x -> (x - mean) / std per feature (the last dims of `shape`), in fp32.

    The statistics are buffers, set from the manifest when a model is first built and
    restored from its state_dict after: a trained model never reads another set's."""

    def __init__(self, shape):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def set(self, mean, std) -> "Standardize":
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(self.mean.shape))
            self.std.copy_(torch.as_tensor(std, dtype=torch.float32).reshape(self.std.shape))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def field_stats(feature_stats: dict, field: str, layers: list[str] | None = None):
    """(mean, std) of a field from a manifest's `feature_stats` ([len(layers), D] for audio), or None
    when the set records none for it (its encoder is on a common scale, or the set predates them)."""
    got = feature_stats.get(field)
    if not got:
        return None
    if field != "audio":
        return got["mean"], got["std"]
    missing = [x for x in layers if x not in got]
    if missing:
        raise LakeError(f"the set's feature statistics lack audio layer(s) {', '.join(missing)}; re-ingest the set")
    return [got[x]["mean"] for x in layers], [got[x]["std"] for x in layers]
