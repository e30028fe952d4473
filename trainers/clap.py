"""Stage 2, CLAP: contrastive linear projectors aligning audio and text embeddings.

    python -m trainers.clap --data-root SET [--text-field transcript|caption] ...
    python -m trainers.clap export --checkpoint CKPT --out clap_projectors.pt

Per modality Linear(d, P) -> Dropout 0.1 -> L2-normalise on unit-norm inputs (standardised
per feature first for encoders on mixed scales: trainers.features); a
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
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lake.cli import run_cli
from lake.cliargs import HelpFormatter, arg, at_least, between
from lake.errors import LakeError
from trainers.checkpoint import load_checkpoint, read_checkpoint_file, save_atomic
from trainers.config import TrainConfig
from trainers.features import LAYER_HELP, Standardize, field_stats, l2, resolve_layer
from trainers.cli import parse_stage_args, run_stage, stage_parser
from trainers.loop import Task

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
    """[Standardise ->] L2-normalise -> Linear -> Dropout -> L2-normalise. Parameter names (fc.weight,
    fc.bias) match the reference's; `standardize`: per-feature statistics first (trainers.features),
    for encoders on mixed scales, held as `standardize.mean` / `standardize.std` buffers."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.1, standardize: bool = False):
        super().__init__()
        self.standardize = Standardize(d_in) if standardize else None
        self.fc = nn.Linear(d_in, d_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize is not None:
            x = self.standardize(x)
        return F.normalize(self.drop(self.fc(l2(x))), dim=-1)


class Clap(nn.Module):
    def __init__(self, audio_dim: int, text_dim: int, proj_dim: int, dropout: float = 0.1,
                 logit_scale_init: float = CLIP_SCALE_INIT, max_logit_scale: float = 5.0,
                 standardize: dict | None = None):
        super().__init__()
        std = standardize or {}
        self.audio_proj = ProjHead(audio_dim, proj_dim, dropout, bool(std.get("audio")))
        self.text_proj = ProjHead(text_dim, proj_dim, dropout, bool(std.get("text")))
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.max_logit_scale = max_logit_scale

    def forward(self, audio: torch.Tensor, text: torch.Tensor):
        """Unit-norm projections [B, P] of both, and the (clamped) scale."""
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

    def __init__(self, cfg: ClapConfig, shards, ckpt: dict | None = None):
        super().__init__(cfg, shards)
        m = shards.manifest
        text_field = ckpt["arch"]["text_field"] if ckpt else cfg.text_field
        self.text_key = "text" if text_field == "transcript" else "caption"
        if self.text_key not in m.fields:
            raise LakeError(f"{shards.root}: --text-field {text_field}, but the set has no caption embeddings "
                            f"(fields: {', '.join(m.fields)})")
        self.text_field = text_field
        self.layer = ckpt["arch"]["audio_layer"] if ckpt else resolve_layer(cfg.audio_layer, m.audio_layers)
        if self.layer not in m.audio_layers:
            raise LakeError(f"{shards.root}: does not store {self.layer!r}, the audio layer the CLAP model reads")
        self.layers = [self.layer]
        self.fields = ("audio", self.text_key, "label")
        self.dims = dict(ckpt["arch"]["dims"]) if ckpt else {"audio": m.audio_dim, "text": m.text_dim,
                                                              "proj": cfg.proj_dim or m.text_dim}
        if (self.dims["audio"], self.dims["text"]) != (m.audio_dim, m.text_dim):
            raise LakeError(f"CLAP projectors for audio {self.dims['audio']} / text {self.dims['text']} dims, but "
                            f"{shards.root} stores audio {m.audio_dim} / text {m.text_dim}")
        # per-feature statistics of the train split, for encoders on mixed scales; a trained model has its own
        self.stats = {} if ckpt else {k: v for k, v in (("audio", field_stats(m.feature_stats, "audio", self.layers)),
                                                         ("text", field_stats(m.feature_stats, self.text_key))) if v}
        self.standardize = dict(ckpt["arch"].get("standardize", {})) if ckpt else {k: True for k in self.stats}

    def build(self) -> nn.Module:
        c = self.cfg
        model = Clap(self.dims["audio"], self.dims["text"], self.dims["proj"], c.dropout, c.logit_scale_init,
                     c.max_logit_scale, self.standardize)
        for k, head in (("audio", model.audio_proj), ("text", model.text_proj)):
            if k in self.stats:
                head.standardize.set(*self.stats[k])
        return model

    def arch(self) -> dict:
        arch = {"dims": self.dims, "audio_layer": self.layer, "text_field": self.text_field}
        if self.standardize:  # absent for sets without statistics: their checkpoints stay as they were
            arch["standardize"] = self.standardize
        return arch

    def loss(self, model, batch):
        a, t, scale = model(batch["audio"][:, 0], batch[self.text_key])
        return contrastive_loss(a, t, scale), {"logit_scale": scale.detach()}

    def outputs(self, model, batch):
        a, t, _ = model(batch["audio"][:, 0], batch[self.text_key])
        return {"audio": a, "text": t, "label": batch["label"]}

    def metrics(self, out):
        from trainers.metrics import retrieval_both_directions

        return retrieval_both_directions(torch.from_numpy(out["audio"]), torch.from_numpy(out["text"]))

    def headline(self, m):
        zs = m.get("zero_shot")
        return (f"mean R@1 {m['mean_R@1']:.4f} (a->t {m['audio_to_text']['R@1']:.3f}, "
                f"t->a {m['text_to_audio']['R@1']:.3f}, MRR {m['audio_to_text']['MRR']:.3f})"
                + (f"  zero-shot acc {zs['accuracy']:.4f}" if zs else ""))

    @classmethod
    def from_projectors(cls, path: str, shards) -> tuple["ClapTask", nn.Module]:
        """The task and model of exported projectors (clap_projectors.pt, ours or the reference's), eval mode."""
        proj = load_projectors(path)
        m = shards.manifest
        if proj["data"] and proj["data"]["encoders"] != m.encoders:
            raise LakeError(f"{path}: trained on embeddings of other encoders than {shards.root}'s; evaluate on a set "
                            "ingested with the same encoders")
        arch = {"dims": proj["dims"], "audio_layer": proj["audio_layer"] or resolve_layer("last", m.audio_layers),
                "text_field": proj.get("text_field") or "transcript"}
        if projector_standardize(proj):
            arch["standardize"] = projector_standardize(proj)
        cfg = ClapConfig(data_root=shards.root, dropout=0.0)
        task = cls(cfg, shards, ckpt={"arch": arch})
        model = task.build()
        projectors_into(model.audio_proj, model.text_proj, proj)
        with torch.no_grad():
            model.logit_scale.copy_(torch.as_tensor(proj["logit_scale"], dtype=torch.float32))
        return task, model.eval()


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
        "text_field": ckpt["arch"]["text_field"],
        "data": {k: ckpt["data"][k] for k in ("name", "fingerprint", "encoders", "audio_layers")},
        "checkpoint": {"path": checkpoint, "epoch": ckpt["train"]["epoch"], "best": ckpt["train"]["best"]},
    }
    save_atomic(proj, out)
    return proj


def load_projectors(path: str) -> dict:
    """Read clap_projectors.pt: ours, or the reference's {audio_proj: {fc.weight, fc.bias} (or bare
    {weight, bias}), text_proj: {...}}. Loaded as data only (weights_only): a downloaded file runs no code."""
    from trainers.reference import linear_state

    if not os.path.exists(path):
        raise LakeError(f"{path}: no such file (make it with `python -m trainers.clap export`)")
    obj = read_checkpoint_file(path)
    heads = {k: linear_state(obj.get(k)) if isinstance(obj, dict) else None for k in ("audio_proj", "text_proj")}
    if not all(heads.values()):
        raise LakeError(f"{path}: not CLAP projectors (expected audio_proj and text_proj with fc.weight/fc.bias)")
    for k, head in heads.items():  # ours may carry the input statistics they were trained with
        head.update({n: v for n, v in obj[k].items() if isinstance(n, str) and n.startswith("standardize.")})
    a, t = heads["audio_proj"]["fc.weight"], heads["text_proj"]["fc.weight"]
    if a.shape[0] != t.shape[0]:
        raise LakeError(f"{path}: audio and text projections have different widths ({a.shape[0]} vs {t.shape[0]})")
    out = {**obj, **heads}
    out.setdefault("dims", {"audio": int(a.shape[1]), "text": int(t.shape[1]), "proj": int(a.shape[0])})
    out.setdefault("logit_scale", torch.tensor(0.0))
    out.setdefault("audio_layer", None)  # the reference's: the last hidden state
    out.setdefault("data", None)
    return out


def projector_standardize(proj: dict) -> dict:
    """{"audio": True, "text": True} for the heads of `proj` that standardise their inputs (none: {})."""
    return {k: True for k, head in (("audio", proj["audio_proj"]), ("text", proj["text_proj"]))
            if "standardize.mean" in head}


def projectors_into(head_a: ProjHead, head_t: ProjHead, proj: dict) -> None:
    """Load the heads (strictly: a head built with standardisation needs the statistics, and vice versa)."""
    head_a.load_state_dict(proj["audio_proj"])
    head_t.load_state_dict(proj["text_proj"])


# -- command line -------------------------------------------------------------------

def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.clap export",
                                description="Write the projectors of a CLAP checkpoint alone (audio_proj, text_proj, "
                                            "logit_scale, dims, audio layer, data fingerprint).",
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a CLAP checkpoint, e.g. checkpoints/clap_best.pt")
    p.add_argument("--out", default="clap_projectors.pt", help="where to write them")
    return p


def parse_train_args(argv) -> ClapConfig:
    parser = stage_parser(
        "python -m trainers.clap", ClapConfig,
        "Train CLAP projectors on a shard set (stage 2). `python -m trainers.clap export --help` for writing "
        "clap_projectors.pt.", DEFAULTS, PRESETS,
        epilog="Then: python -m trainers.clap export --checkpoint SAVE_DIR/clap_best.pt --out clap_projectors.pt")
    return parse_stage_args(parser, ClapConfig, PRESETS, argv)


def export_main(argv) -> int:
    args = _export_parser().parse_args(argv)

    def work() -> int:
        proj = export_projectors(args.checkpoint, args.out)
        print(f"wrote {args.out}: audio {proj['dims']['audio']} -> {proj['dims']['proj']}, text "
              f"{proj['dims']['text']} -> {proj['dims']['proj']}, audio layer {proj['audio_layer']}, "
              f"scale {math.exp(float(proj['logit_scale'])):.2f}")
        return 0

    return run_cli(work)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    return run_stage(ClapTask, parse_train_args, argv)


if __name__ == "__main__":
    sys.exit(main())
