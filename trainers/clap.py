"""Stage 2, CLAP: contrastive linear projectors aligning audio and text embeddings.

    python -m trainers.clap --data-root SET [--text-field transcript|caption] ...
    python -m trainers.clap export --checkpoint CKPT --out clap_projectors.pt

Per modality Linear(d, P) -> Dropout 0.1 -> L2-normalise on unit-norm inputs (standardised
per feature first for encoders on mixed scales: trainers.features); the audio one reads a stored
layer or, with `--audio-layer weighted`, a learned mix of all of them (trainers.features.LayerMix,
part of the audio head: exported with it, and frozen with it in the SLM); a
learnable logit scale clamped to at most 5 (scale <= e^5); the loss is the mean of
the audio->text and text->audio cross-entropies over the GLOBAL batch, gathered
across ranks with the differentiable all_gather of torch.distributed.nn (a plain
dist.all_gather would pass no gradient to the other ranks' embeddings).

Defaults are working ones (CLIP's scale init, lr 5e-4 with warmup and cosine decay);
`--preset reference` gives the reference run's (lr 3e-6, batch 4096, 20 epochs, scale
init 0), with which the projectors barely move. The best checkpoint is chosen by the
validation mean R@1 of both retrieval directions.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lake.cli import run_cli
from lake.cliargs import HelpFormatter, arg, at_least, between
from lake.errors import LakeError
from trainers.checkpoint import is_checkpoint, load_checkpoint, save_atomic, stage_checkpoint
from trainers.cli import parse_stage_args, stage_parser
from trainers.config import TrainConfig
from trainers.features import LAYER_HELP, WEIGHTED, LayerMix, Standardize, audio_layers, field_stats, l2, resolve_layer
from trainers.loop import Task, check_layers
from trainers.metrics import retrieval_both_directions
from trainers.reference import is_projectors, linear_state

CLIP_SCALE_INIT = math.log(1 / 0.07)


@dataclass(kw_only=True)
class ClapConfig(TrainConfig):
    text_field: str = arg("transcript", "which text to align audio with", choices=["transcript", "caption"])
    audio_layer: str = arg("last", LAYER_HELP)
    proj_dim: int = arg(0, "projection width (0 = the text embedding width, as the reference's 768 -> 768)",
                        range=at_least(0))
    dropout: float = arg(0.1, "dropout after each projection", range=between(0, 1, hi_open=True))
    logit_scale_init: float = arg(CLIP_SCALE_INIT, "initial log logit scale (CLIP: log(1/0.07); the reference: 0)")
    max_logit_scale: float = arg(5.0, "clamp of the log logit scale (the reference's 5)")


PRESETS = {
    "reference": dict(lr=3e-6, weight_decay=0.01, batch_size=4096, epochs=20, logit_scale_init=0.0, warmup_steps=0,
                      schedule="constant", _help="the reference run: lr 3e-6, batch 4096, 20 epochs, scale init 0"),
    "debug": dict(epochs=2, batch_size=64, eval_batch_size=256, num_workers=0, log_every=5, _help="seconds on a CPU"),
}
DEFAULTS = dict(epochs=20, batch_size=1024, lr=5e-4, warmup_steps=100, schedule="cosine")


class ProjHead(nn.Module):
    """[Standardise ->] [mix layers ->] L2-normalise -> Linear -> Dropout -> L2-normalise. Parameter names
    (fc.weight, fc.bias) match the reference's; `standardize`: per-feature statistics first
    (trainers.features), for encoders on mixed scales, held as `standardize.mean` / `standardize.std`
    buffers; `mix`: the names of the layers it mixes (`mix.logits`), its input then [B, L, D], else [B, D]."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.1, standardize: bool = False,
                 mix: list[str] | None = None):
        super().__init__()
        self.standardize = Standardize((len(mix), d_in) if mix else d_in) if standardize else None
        self.mix = LayerMix(mix, "CLAP audio head") if mix else None
        self.fc = nn.Linear(d_in, d_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize is not None:
            x = self.standardize(x)
        if self.mix is not None:
            x = self.mix(x)
        return F.normalize(self.drop(self.fc(l2(x))), dim=-1)


class Clap(nn.Module):
    def __init__(self, audio_dim: int, text_dim: int, proj_dim: int, dropout: float = 0.1,
                 logit_scale_init: float = CLIP_SCALE_INIT, max_logit_scale: float = 5.0,
                 standardize: dict | None = None, mix: list[str] | None = None):
        super().__init__()
        std = standardize or {}
        self.audio_proj = ProjHead(audio_dim, proj_dim, dropout, bool(std.get("audio")), mix)
        self.text_proj = ProjHead(text_dim, proj_dim, dropout, bool(std.get("text")))
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.max_logit_scale = max_logit_scale

    def forward(self, audio: torch.Tensor, text: torch.Tensor):
        """Unit-norm projections [B, P] of both (audio [B, D], or [B, L, D] with a layer mix), and the (clamped)
        scale."""
        return self.audio_proj(audio), self.text_proj(text), self.logit_scale.clamp(max=self.max_logit_scale).exp()


def contrastive_loss(a: torch.Tensor, t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of this rank's rows against the global batch."""
    import torch.distributed as dist

    offset = 0
    all_a, all_t = a, t
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather

        all_a, all_t = torch.cat(all_gather(a)), torch.cat(all_gather(t))
        offset = dist.get_rank() * a.shape[0]
    labels = torch.arange(a.shape[0], device=a.device) + offset
    # fp32 scores even under AMP: autocast would run these matmuls in bf16, whose ~0.5-1.0 steps at a
    # scale of up to e^5 blur the ranking the loss is about
    with torch.autocast(a.device.type, enabled=False):
        logits_a = scale.float() * a.float() @ all_t.float().T
        logits_t = scale.float() * t.float() @ all_a.float().T
        return 0.5 * (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_t, labels))


class ClapTask(Task):
    stage, prefix, selection = "clap", "clap", "mean_R@1"
    config_cls = ClapConfig

    @classmethod
    def new(cls, cfg: ClapConfig, data) -> "ClapTask":
        layers = audio_layers(cfg.audio_layer, data.audio_layers)
        text_key = text_member(cfg.text_field)
        # per-feature statistics of the train split, for encoders on mixed scales (a trained model has its own)
        stats = {k: v for k, v in (("audio", field_stats(data.feature_stats, "audio", layers)),
                                   ("text", field_stats(data.feature_stats, text_key))) if v}
        arch = {"dims": {"audio": data.audio_dim, "text": data.text_dim, "proj": cfg.proj_dim or data.text_dim},
                "audio_layer": WEIGHTED if cfg.audio_layer == WEIGHTED else layers[0], "text_field": cfg.text_field}
        if cfg.audio_layer == WEIGHTED:  # absent for one layer: those checkpoints stay as they were
            arch["mix"] = layers
        if stats:  # absent for sets without statistics: their checkpoints stay as they were
            arch["standardize"] = {k: True for k in stats}
        return cls(cfg, data, arch, init={"stats": stats})

    def setup(self) -> None:
        a = self._arch
        self.text_field, self.layer, self.dims = a["text_field"], a["audio_layer"], dict(a["dims"])
        self.text_key = text_member(self.text_field)
        self.mix = list(a.get("mix") or [])  # the layers the audio head mixes (none: it reads `layer`)
        self.layers = self.mix or [self.layer]
        self.fields = ("audio", self.text_key, "label")
        d = self.data
        if d is None:
            return
        if self.text_key not in d.fields:
            raise LakeError(f"{d.root}: --text-field {self.text_field}, but the set has no caption embeddings "
                            f"(fields: {', '.join(d.fields)})")
        check_layers(self.layers, d, "the CLAP model")
        if (self.dims["audio"], self.dims["text"]) != (d.audio_dim, d.text_dim):
            raise LakeError(f"CLAP projectors for audio {self.dims['audio']} / text {self.dims['text']} dims, but "
                            f"{d.root} stores audio {d.audio_dim} / text {d.text_dim}")

    def make_model(self) -> nn.Module:
        c, d = self.cfg, self.dims
        return Clap(d["audio"], d["text"], d["proj"], c.dropout, c.logit_scale_init, c.max_logit_scale,
                    self._arch.get("standardize"), self.mix or None)

    def initialise(self, model: nn.Module) -> None:
        for k, head in (("audio", model.audio_proj), ("text", model.text_proj)):
            if k in self.init["stats"]:
                head.standardize.set(*self.init["stats"][k])

    def audio(self, batch) -> torch.Tensor:
        """The audio head's input: every loaded layer [B, L, D] for a mix, the one layer [B, D] otherwise."""
        return batch["audio"] if self.mix else batch["audio"][:, 0]

    def loss(self, model, batch):
        a, t, scale = model(self.audio(batch), batch[self.text_key])
        return contrastive_loss(a, t, scale), {"logit_scale": scale.detach()}

    def outputs(self, model, batch):
        a, t, _ = model(self.audio(batch), batch[self.text_key])
        return {"audio": a, "text": t, "label": batch["label"]}

    def metrics(self, out):
        return retrieval_both_directions(torch.from_numpy(out["audio"]), torch.from_numpy(out["text"]))

    def headline(self, m):
        zs = m.get("zero_shot")
        return (f"mean R@1 {m['mean_R@1']:.4f} (a->t {m['audio_to_text']['R@1']:.3f}, "
                f"t->a {m['text_to_audio']['R@1']:.3f}, MRR {m['audio_to_text']['MRR']:.3f})"
                + (f"  zero-shot acc {zs['accuracy']:.4f}" if zs else ""))

    @classmethod
    def checkpoint_from(cls, obj, path: str, data, **files) -> dict | None:
        """A CLAP training checkpoint, or exported projectors (ours or the reference's) as one."""
        if not is_projectors(obj) or is_checkpoint(obj):
            return super().checkpoint_from(obj, path, data)
        return projector_checkpoint(obj, path, data)

    @classmethod
    def parse(cls, argv) -> ClapConfig:
        parser = stage_parser(
            "python -m trainers.clap", ClapConfig,
            "Train CLAP projectors on a shard set (stage 2). `python -m trainers.clap export --help` for writing "
            "clap_projectors.pt.", DEFAULTS, PRESETS,
            epilog="Then: python -m trainers.clap export --checkpoint SAVE_DIR/clap_best.pt --out clap_projectors.pt")
        return parse_stage_args(parser, ClapConfig, PRESETS, argv)

    @classmethod
    def main(cls, argv=None) -> int:
        argv = sys.argv[1:] if argv is None else argv
        if argv and argv[0] == "export":
            return export_main(argv[1:])
        return super().main(argv)


def text_member(text_field: str) -> str:
    """The block member a --text-field reads."""
    return "text" if text_field == "transcript" else "caption"


# -- the exported projectors ---------------------------------------------------------

def export_projectors(checkpoint: str, out: str) -> dict:
    """clap_projectors.pt: the two heads, the scale, the dims and what they were trained on."""
    ckpt = load_checkpoint(checkpoint, "clap")
    sd = ckpt["model"]
    proj = {
        "audio_proj": {k[len("audio_proj."):]: v for k, v in sd.items() if k.startswith("audio_proj.")},
        "text_proj": {k[len("text_proj."):]: v for k, v in sd.items() if k.startswith("text_proj.")},
        "logit_scale": sd["logit_scale"].clone(),
        "dims": ckpt["arch"]["dims"],
        "audio_layer": ckpt["arch"]["audio_layer"],
        **({"mix": ckpt["arch"]["mix"]} if ckpt["arch"].get("mix") else {}),  # the layers audio_proj's mix.logits weigh
        "text_field": ckpt["arch"]["text_field"],
        "data": {k: ckpt["data"][k] for k in ("name", "fingerprint", "encoders", "audio_layers")},
        "checkpoint": {"path": checkpoint, "epoch": ckpt["train"]["epoch"], "best": ckpt["train"]["best"]},
    }
    save_atomic(proj, out)
    return proj


def projector_checkpoint(obj: dict, path: str, data) -> dict:
    """Projectors (ours: {audio_proj, text_proj, logit_scale, dims, audio_layer, [mix,] data}; the reference's:
    {audio_proj: {fc.weight, fc.bias} or bare {weight, bias}, text_proj: ...}) as a CLAP checkpoint dict."""
    heads = {k: linear_state(obj[k]) for k in ("audio_proj", "text_proj")}
    for k, head in heads.items():  # ours may carry the input statistics they were trained with, and a layer mix
        head.update({n: v for n, v in obj[k].items() if isinstance(n, str) and n.startswith(("standardize.", "mix."))})
    mix = list(obj.get("mix") or [])
    logits = heads["audio_proj"].get("mix.logits")
    if len(mix) != (0 if logits is None else logits.numel()):
        raise LakeError(f"{path}: projectors whose audio head mixes {0 if logits is None else logits.numel()} layers, "
                        f"but name {len(mix)} (mix); export them again with `python -m trainers.clap export`")
    a, t = heads["audio_proj"]["fc.weight"], heads["text_proj"]["fc.weight"]
    if a.shape[0] != t.shape[0]:
        raise LakeError(f"{path}: audio and text projections have different widths ({a.shape[0]} vs {t.shape[0]})")
    layer = obj.get("audio_layer")  # the reference's: none recorded, its last hidden state
    if layer is None and data is not None:
        layer = resolve_layer("last", data.audio_layers)
    arch = {"dims": obj.get("dims") or {"audio": int(a.shape[1]), "text": int(t.shape[1]), "proj": int(a.shape[0])},
            "audio_layer": layer, "text_field": obj.get("text_field") or "transcript"}
    if mix:
        arch["mix"] = mix
    standardize = {k: True for k in ("audio", "text") if "standardize.mean" in heads[f"{k}_proj"]}
    if standardize:
        arch["standardize"] = standardize
    model = {f"{k}.{n}": v for k, head in heads.items() for n, v in head.items()}
    model["logit_scale"] = torch.as_tensor(obj.get("logit_scale", 0.0), dtype=torch.float32)
    data = obj.get("data") or {"name": None, "fingerprint": None, "encoders": None, "audio_layers": None}
    return stage_checkpoint(stage="clap", arch=arch, config={"dropout": 0.0}, data=data, model=model,
                            train={"epoch": (obj.get("checkpoint") or {}).get("epoch", 0)},
                            projectors={"path": path})


def check_same_projectors(clap_ckpt: str, clap_audio: nn.Module, trained: str) -> None:
    """`clap_ckpt` must hold the CLAP audio head that the model of `trained` carries (`clap_audio`, frozen): the same
    weights, statistics and layer mix."""
    _, clap = ClapTask.load(clap_ckpt)
    ours, inside = clap.audio_proj.state_dict(), clap_audio.state_dict()
    if set(ours) != set(inside) or any(ours[k].shape != inside[k].shape or not torch.equal(ours[k], inside[k])
                                       for k in ours):
        raise LakeError(f"{clap_ckpt}: not the CLAP projectors {trained} was trained with")


# -- command line -------------------------------------------------------------------

def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.clap export",
                                description="Write the projectors of a CLAP checkpoint alone (audio_proj, text_proj, "
                                            "logit_scale, dims, audio layer, data fingerprint).",
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a CLAP checkpoint, e.g. checkpoints/clap_best.pt")
    p.add_argument("--out", default="clap_projectors.pt", help="where to write them")
    return p


def export_main(argv) -> int:
    args = _export_parser().parse_args(argv)

    def work() -> int:
        proj = export_projectors(args.checkpoint, args.out)
        mix = ""
        if proj.get("mix"):
            weights = torch.softmax(proj["audio_proj"]["mix.logits"].float(), 0).tolist()
            mix = " (" + ", ".join(f"{n} {w:.2f}" for n, w in zip(proj["mix"], weights)) + ")"
        print(f"wrote {args.out}: audio {proj['dims']['audio']} -> {proj['dims']['proj']}, text "
              f"{proj['dims']['text']} -> {proj['dims']['proj']}, audio layer {proj['audio_layer']}{mix}, "
              f"scale {math.exp(float(proj['logit_scale'])):.2f}")
        return 0

    return run_cli(work)


main = ClapTask.main

if __name__ == "__main__":
    sys.exit(main())
