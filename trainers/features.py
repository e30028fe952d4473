"""Input conventions shared by the stage models: unit-norm inputs, per-feature standardisation
before them where the encoder asks for it, and the audio layer(s) they read.

Both reference trainers only ever saw L2-normalised audio and text vectors; the
models here normalise their inputs themselves, so a checkpoint works on any set
with the same encoders. For encoders whose features live on different scales (the
set's manifest records the train split's statistics: shards.stats), each feature is
first standardised with those statistics, held as buffers in the model: the checkpoint
carries them, so evaluation and prediction apply what training applied, whatever set
they read. Sets without statistics keep exactly the reference's numerics.

An audio input reads one stored layer, or (`--audio-layer weighted`) a learned mix of all of
them: `LayerMix`, SUPERB's featurizer (s3prl's `Featurizer`: softmax over one learned logit per
layer, logits initialised to zero = equal weights, the weighted sum of the layers). s3prl can
layer-normalise each layer before the sum, so that a layer's share is decided by its weight and
not by the scale of its activations (late transformer layers are often many times larger).
Here each layer is first standardised per feature where the set records statistics (as a single
layer is), then L2-normalised: the inputs every model of this project already reads, and the
same equalisation of scales (without layer norm's centring over features, which would mix the
per-feature standardisation back up). The mix of unit vectors is not unit-norm; the model
normalises it again as it does any input.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lake.errors import LakeError
from lake.layers import resolve_layers

WEIGHTED = "weighted"
LAYER_HELP = ("audio layer: a stored layer name or index, 'last' (the last raw hidden layer, as the reference "
              "run), or 'weighted' (a learned softmax weighting of all stored layers, SUPERB's featurizer: weights "
              "start equal, are saved in the checkpoint and shown in the stage reports; the loader then reads every "
              "stored layer)")


def l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1, eps=1e-6)


def resolve_layer(spec: str, stored: list[str]) -> str:
    """The one stored layer `spec` names (lake.layers: the rule ingest uses too)."""
    chosen = resolve_layers(spec, stored, what="--audio-layer (of the layers this set stores)")
    if len(chosen) != 1:
        raise LakeError(f"--audio-layer {spec}: names {len(chosen)} layers; give one (a name, an index or 'last')")
    return chosen[0]


def audio_layers(spec: str, stored: list[str]) -> list[str]:
    """The stored layers an --audio-layer reads: all of them for 'weighted', else the one it names."""
    return list(stored) if spec == WEIGHTED else [resolve_layer(spec, stored)]


class LayerMix(nn.Module):
    """[B, L, D] -> [B, D]: sum_l softmax(logits)_l * L2(x_l), the logits learned (zeros at first: equal weights).

    `names`: the stored layers, in the order of the input's L axis (kept for reports, not in the state dict);
    `what`: which input of the model it feeds, as reports name it."""

    def __init__(self, names: list[str], what: str):
        super().__init__()
        self.names, self.what = list(names), what
        self.logits = nn.Parameter(torch.zeros(len(self.names)))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits.detach().float(), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != len(self.names):
            raise ValueError(f"a mix of {len(self.names)} layers got input of shape {tuple(x.shape)}")
        w = torch.softmax(self.logits.float(), 0)
        return (w[None, :, None] * l2(x)).sum(1)


def layer_weights(model: nn.Module) -> dict[str, dict[str, float]]:
    """{what: {layer: weight}} of every layer mix in `model` (a frozen one, from the previous stage, marked so)."""
    return {f"{m.what}{'' if m.logits.requires_grad else ' (frozen)'}": dict(zip(m.names, m.weights().tolist()))
            for m in model.modules() if isinstance(m, LayerMix)}


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
