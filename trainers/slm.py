"""Stage 3, SLM: the prosody-aware emotion classifier on the frozen CLAP projectors.

    python -m trainers.slm --data-root SET --clap-ckpt clap_projectors.pt [--num-emotions N] \
        [--preset reference --epochs 50] [--checkpoint C --resume]

    s_a = L2(audio_proj(x_a)), s_t = L2(text_proj(x_t))     frozen CLAP heads (x_a: the CLAP's layer or layer mix)
    p   = Linear(Da, P)(x_p)                                  prosody: raw audio (a layer, or its own learned layer mix)
    g   = sigmoid((W_q s_t) . (W_k s_a) / sqrt(P))            one gate per clip: do text and audio agree?
    fused = [g * W_v p, s_a, s_t, s_a * s_t, |s_a - s_t|]     5P
    logits = Linear(5P, H) -> GELU -> Dropout 0.1 -> Linear(H, N)      H: --hidden-dim (the reference's 1024)

`--audio-layer` is the prosody branch's: a stored layer, `clap` (the CLAP's: its layer, or for a CLAP
trained with `--audio-layer weighted` a mix of the same layers, learned afresh here), or `weighted`
(a learned mix of all stored layers, trainers.features.LayerMix). The CLAP audio head's mix, if it
has one, is the CLAP's and stays frozen with it: the projections s_a are the ones CLAP aligned.

The defaults are the recipe measured for sets of a few hundred to a few thousand clips: global
batch 64, AdamW lr 1e-3 wd 0.01 at a constant rate, 40 epochs, H = 256, cross-entropy with label
smoothing 0.1. `--preset reference` is the reference run's (plain cross-entropy, AdamW lr 1e-4
wd 0.01, the global batch 512, H = 1024; 150 epochs trained as 50 + 50 + 50 with --resume);
`--preset small` the demo's (batch 128, cosine decay, H = 1024). Selection: validation macro-F1.

For encoders whose features live on different scales (fbank, openSMILE: the set records
its train statistics), x_a and x_p are standardised per feature before their L2
normalisation (trainers.features.Standardize): the CLAP heads with the statistics they
were trained with, the prosody branch with this set's. Measured on a synthetic corpus
(BENCHMARKS.md), this took the SLM from below a linear probe of its own inputs to above it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lake.cliargs import REQUIRED, arg, at_least, between
from lake.errors import LakeError
from trainers.clap import ClapTask, ProjHead
from trainers.cli import parse_stage_args, stage_parser
from trainers.config import TrainConfig
from trainers.features import LAYER_HELP, WEIGHTED, LayerMix, Standardize, field_stats, l2, resolve_layer
from trainers.loop import Task, check_layers
from trainers.metrics import classification_metrics_from
from trainers.reference import is_reference_slm, slm_checkpoint


@dataclass(kw_only=True)
class SlmConfig(TrainConfig):
    clap_ckpt: str = arg(REQUIRED, "the CLAP projectors (clap_projectors.pt from `python -m trainers.clap export`)")
    num_emotions: int = arg(0, "class count; must equal the set's taxonomy (0 = read it from the manifest)",
                            range=at_least(0))
    audio_layer: str = arg("clap", "the prosody branch's " + LAYER_HELP + "; 'clap' = the layer the CLAP "
                           "projectors were trained on (for projectors trained on 'weighted': a mix of their layers, "
                           "learned here)")
    hidden_dim: int = arg(1024, "width of the classifier MLP", range=at_least(1))
    dropout: float = arg(0.1, "dropout in the classifier MLP", range=between(0, 1, hi_open=True))
    label_smoothing: float = arg(0.0, "label smoothing of the cross-entropy", range=between(0, 1, hi_open=True))


# The reference run's recipe (vano04/TAMERSv2 train_slm.py): every setting below that the defaults change.
REFERENCE = dict(epochs=150, batch_size=512, lr=1e-4, weight_decay=0.01, grad_clip=0.0, warmup_steps=0,
                 schedule="constant", hidden_dim=1024, dropout=0.1, label_smoothing=0.0)
# Measured on held-out synthesised speech of a few hundred clips (BENCHMARKS.md, "SLM against the linear probe"):
# the reference's batch of 512 gives such a set one step an epoch (150 steps in all: undertrained); at batch 64 and
# lr 1e-3 the 1024-wide MLP memorises the train rows within 25 epochs (loss 0.007), a 256-wide one with label
# smoothing 0.1 does not, and scores best of the variants measured against the probe.
DEFAULTS = dict(REFERENCE, epochs=40, batch_size=64, lr=1e-3, hidden_dim=256, label_smoothing=0.1)
PRESETS = {
    "reference": dict(REFERENCE, _help="the reference run: batch 512, lr 1e-4, constant rate, 150 epochs, the "
                                       "1024-wide MLP, plain cross-entropy, the prosody input L2-normalised"),
    "debug": dict(epochs=2, batch_size=64, eval_batch_size=256, num_workers=0, log_every=5, _help="seconds on a CPU"),
    # the reference's batch of 512 gives a set of ~1,000 train clips one or two steps an epoch: 150 steps in all,
    # measured to undertrain (BENCHMARKS.md, "SLM against the linear probe")
    "small": dict(epochs=40, batch_size=128, lr=1e-3, schedule="cosine", warmup_steps=20, hidden_dim=1024,
                  label_smoothing=0.0,
                  _help="sets of a few thousand clips (the demo's): batch 128, lr 1e-3 with 20 warmup steps and "
                        "cosine decay, 40 epochs, the 1024-wide MLP, plain cross-entropy"),
}


class ProsodySLM(nn.Module):
    """audio [B, L, Da] (the loaded layers, named by `layers`), text [B, Dt] -> logits [B, N].

    `clap_index`: which loaded layer the CLAP audio head reads, or (a list) the ones its layer mix
    reads, in the mix's order; `prosody_index`: which one the prosody branch reads, or None for its
    own learned softmax mix of all of them (`prosody_mix`).
    """

    def __init__(self, audio_dim: int, text_dim: int, proj_dim: int, num_classes: int, layers: list[str],
                 clap_index: int | list[int], prosody_index: int | None, hidden_dim: int = 1024, dropout: float = 0.1,
                 standardize: dict | None = None):
        super().__init__()
        std = standardize or {}
        self.clap_index, self.prosody_index = clap_index, prosody_index
        clap_mix = [layers[i] for i in clap_index] if isinstance(clap_index, list) else None
        self.clap_audio = ProjHead(audio_dim, proj_dim, 0.0, bool(std.get("clap_audio")), clap_mix)
        self.clap_text = ProjHead(text_dim, proj_dim, 0.0, bool(std.get("clap_text")))
        # the prosody branch's own statistics (of this SLM's training set, all loaded layers)
        self.prosody_standardize = Standardize((len(layers), audio_dim)) if std.get("prosody") else None
        for p in list(self.clap_audio.parameters()) + list(self.clap_text.parameters()):
            p.requires_grad_(False)
        self.prosody_mix = LayerMix(layers, "prosody branch") if prosody_index is None else None
        self.register_load_state_dict_pre_hook(_renamed_mix)
        self.prosody = nn.Linear(audio_dim, proj_dim)
        self.w_q = nn.Linear(proj_dim, proj_dim)
        self.w_k = nn.Linear(proj_dim, proj_dim)
        self.w_v = nn.Linear(proj_dim, proj_dim)
        self.head = nn.Sequential(nn.Linear(5 * proj_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden_dim, num_classes))

    def train(self, mode: bool = True):
        super().train(mode)
        self.clap_audio.eval()  # frozen features: no dropout, ever
        self.clap_text.eval()
        return self

    def fused(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        s_a = self.clap_audio(audio[:, self.clap_index])
        s_t = self.clap_text(text)
        if self.prosody_standardize is not None:
            audio = self.prosody_standardize(audio)
        x_p = self.prosody_mix(audio) if self.prosody_mix is not None else l2(audio[:, self.prosody_index])
        p = self.prosody(x_p)
        q, k, v = self.w_q(s_t), self.w_k(s_a), self.w_v(p)
        gate = torch.sigmoid((q * k).sum(-1, keepdim=True) / math.sqrt(q.shape[-1]))
        return torch.cat([gate * v, s_a, s_t, s_a * s_t, (s_a - s_t).abs()], dim=-1)

    def forward(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.head(self.fused(audio, text))


def _renamed_mix(module, state_dict, prefix, *_) -> None:
    """SLM checkpoints written before trainers.features.LayerMix held the prosody mix's logits as `layer_logits`."""
    if prefix + "layer_logits" in state_dict:
        state_dict[prefix + "prosody_mix.logits"] = state_dict.pop(prefix + "layer_logits")


def slm_layers(clap: list[str], clap_mixes: bool, spec: str, stored: list[str]) -> tuple[list[str], int | list[int],
                                                                                          int | None]:
    """(layers to load; where the CLAP audio head reads among them: an index, or the list its mix reads; the prosody
    layer's index, or None for the prosody branch's own mix of all of them). `clap`: the CLAP's layer(s)."""
    if spec == WEIGHTED or (spec == "clap" and clap_mixes):
        layers, prosody = list(stored), None
    else:
        name = clap[0] if spec == "clap" else resolve_layer(spec, stored)
        layers = list(clap) + ([name] if name not in clap else [])
        prosody = layers.index(name)
    return layers, [layers.index(x) for x in clap] if clap_mixes else layers.index(clap[0]), prosody


class SlmTask(Task):
    stage, prefix, selection = "slm", "slm_stage3", "macro_f1"
    config_cls = SlmConfig

    @classmethod
    def new(cls, cfg: SlmConfig, data) -> "SlmTask":
        n = data.num_classes
        if cfg.num_emotions and cfg.num_emotions != n:
            raise LakeError(f"--num-emotions {cfg.num_emotions}, but {data.root} has {n} classes in its taxonomy "
                            f"({', '.join(data.taxonomy[:6])}{', ...' if n > 6 else ''}); pass --num-emotions {n}")
        clap_task, clap = ClapTask.load(cfg.clap_ckpt, data)  # checks its encoders, dims and layer against the sets
        layers, clap_index, prosody_index = slm_layers(clap_task.layers, bool(clap_task.mix), cfg.audio_layer,
                                                       data.audio_layers)
        d = clap_task.dims
        arch = {"audio_dim": d["audio"], "text_dim": d["text"], "proj_dim": d["proj"], "num_classes": n,
                "taxonomy": data.taxonomy, "layers": layers, "clap_index": clap_index, "prosody_index": prosody_index,
                "hidden_dim": cfg.hidden_dim}
        # the CLAP heads standardise as they were trained to; the prosody branch with these sets' statistics
        prosody_stats = field_stats(data.feature_stats, "audio", layers)
        standardize = {f"clap_{k}": True for k in clap_task.arch().get("standardize", {})}
        if prosody_stats:
            standardize["prosody"] = True
        if standardize:  # absent for sets without statistics: their checkpoints stay as they were
            arch["standardize"] = standardize
        clap_info = {"dims": d, "audio_layer": clap_task.layer, "data": clap_task.checkpoint["data"],
                     **({"mix": clap_task.mix} if clap_task.mix else {})}
        init = {"clap_audio": clap.audio_proj.state_dict(), "clap_text": clap.text_proj.state_dict(),
                "prosody_stats": prosody_stats}
        return cls(cfg, data, arch, {"clap": clap_info}, init)

    def setup(self) -> None:
        self.layers = list(self._arch["layers"])
        self.taxonomy = self._arch["taxonomy"]
        check_layers(self.layers, self.data, "the SLM")

    def make_model(self) -> nn.Module:
        return build_slm(self._arch, self.cfg.dropout)

    def initialise(self, model: nn.Module) -> None:
        model.clap_audio.load_state_dict(self.init["clap_audio"])
        model.clap_text.load_state_dict(self.init["clap_text"])
        if self.init["prosody_stats"]:
            model.prosody_standardize.set(*self.init["prosody_stats"])

    def loss(self, model, batch):
        logits = model(batch["audio"], batch["text"])
        return F.cross_entropy(logits.float(), batch["label"], label_smoothing=self.cfg.label_smoothing), {}

    def outputs(self, model, batch):
        return {"logits": model(batch["audio"], batch["text"]), "label": batch["label"]}

    def metrics(self, out):
        return classification_metrics_from(out, self.taxonomy, label_smoothing=self.cfg.label_smoothing)

    def headline(self, m):
        return f"macro-F1 {m['macro_f1']:.4f}  acc {m['accuracy']:.4f}  top3 {m['top3_accuracy']:.4f}"

    @classmethod
    def checkpoint_from(cls, obj, path: str, data, **files) -> dict | None:
        """Ours, or the reference tooling's stage-3 layout (its class names are the set's, when a set is given)."""
        if not is_reference_slm(obj):
            return super().checkpoint_from(obj, path, data)
        return slm_checkpoint(obj, path, lambda arch: build_slm(arch).state_dict(),
                              data.taxonomy if data is not None else None)

    @classmethod
    def parse(cls, argv) -> SlmConfig:
        parser = stage_parser("python -m trainers.slm", SlmConfig, __doc__.split("\n\n")[0] + ".", DEFAULTS, PRESETS,
                              epilog="The reference's 150 epochs: --preset reference --epochs 50, then the same "
                                     "with --epochs 100 --resume, then --epochs 150 --resume.")
        return parse_stage_args(parser, SlmConfig, PRESETS, argv)


def build_slm(arch: dict, dropout: float = 0.1) -> ProsodySLM:
    return ProsodySLM(arch["audio_dim"], arch["text_dim"], arch["proj_dim"], arch["num_classes"],
                      arch["layers"], arch["clap_index"], arch["prosody_index"], arch["hidden_dim"], dropout,
                      arch.get("standardize"))


main = SlmTask.main

if __name__ == "__main__":
    sys.exit(main())
