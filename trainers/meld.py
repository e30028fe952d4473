"""Stage 4, MELD: a head on the frozen SLM for MELD's 7 emotions, selected by dev weighted F1.

    python -m trainers.meld --data-root MELDSET --stage3-ckpt slm_stage3_best.pt --clap-ckpt clap_projectors.pt \
        --mode A --epochs 60 --batch-size 128 --lr 1e-3 --weight-decay 0.01 --num-workers 4 --save-dir D --seed 17

Mode A: LayerNorm(5P) -> Linear(5P, 1024) -> SiLU -> Dropout 0.2 -> Linear(1024, 7) on the
SLM's fused vector. Mode B: Linear(N, 7) on the L2-normalised SLM logits (N read from
the SLM checkpoint). Last layers Xavier-uniform with zero bias. The loss is
cross-entropy with label smoothing 0.1 and class weights w_c = sqrt(n_max / n_c)
counted on this set's train split (the same weights in the dev loss). It reads
precomputed MELD shards: no audio model, little GPU memory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lake.cliargs import REQUIRED, arg, at_least, between
from lake.errors import LakeError
from trainers.config import TrainConfig
from trainers.cli import parse_stage_args, run_stage, stage_parser
from trainers.loop import Task
from trainers.metrics import classification_metrics_from
from trainers.slm import ProsodySLM, build_slm, load_slm


@dataclass(kw_only=True)
class MeldConfig(TrainConfig):
    stage3_ckpt: str = arg(REQUIRED, "the trained SLM checkpoint (e.g. slm_stage3_best.pt); frozen")
    clap_ckpt: str = arg("", "the CLAP projectors the SLM was trained with; checked against the copy inside the "
                         "SLM checkpoint (optional)")
    mode: str = arg("A", "A: a new head on the SLM's fused features; B: an adapter from its emotion logits",
                    choices=["A", "B"])
    hidden_dim: int = arg(1024, "mode A: hidden width of the head", range=at_least(1))
    dropout: float = arg(0.2, "mode A: dropout in the head", range=between(0, 1, hi_open=True))
    label_smoothing: float = arg(0.1, "label smoothing of the cross-entropy", range=between(0, 1, hi_open=True))


DEFAULTS = dict(epochs=60, batch_size=128, lr=1e-3, weight_decay=0.01, num_workers=4, seed=17)
PRESETS = {"debug": dict(epochs=2, batch_size=32, eval_batch_size=256, num_workers=0, log_every=5, _help="seconds on a CPU")}


class MeldHead(nn.Module):
    def __init__(self, slm: ProsodySLM, mode: str, num_classes: int, hidden_dim: int = 1024, dropout: float = 0.2):
        super().__init__()
        self.slm, self.mode = slm, mode
        for p in slm.parameters():
            p.requires_grad_(False)
        if mode == "A":
            width = slm.head[0].in_features
            self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden_dim), nn.SiLU(),
                                      nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes))
        else:
            self.head = nn.Sequential(nn.Linear(slm.head[-1].out_features, num_classes))
        nn.init.xavier_uniform_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def train(self, mode: bool = True):
        super().train(mode)
        self.slm.eval()  # frozen: no dropout
        return self

    def forward(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.slm.fused(audio, text) if self.mode == "A" else F.normalize(self.slm(audio, text), dim=-1)
        return self.head(feats.float())


def class_weights(label_ids: np.ndarray, num_classes: int) -> torch.Tensor:
    """w_c = sqrt(n_max / n_c) over the train split (a class with no rows gets weight 0)."""
    counts = np.bincount(label_ids, minlength=num_classes).astype(np.float64)
    w = np.zeros(num_classes)
    present = counts > 0
    w[present] = np.sqrt(counts.max() / counts[present])
    return torch.tensor(w, dtype=torch.float32)


class MeldTask(Task):
    stage, selection = "meld", "weighted_f1"
    config_cls = MeldConfig

    def __init__(self, cfg: MeldConfig, shards, ckpt: dict | None = None):
        super().__init__(cfg, shards)
        m = shards.manifest
        self.prefix = f"meld_slm_{cfg.mode}"
        self.taxonomy = m.taxonomy
        if ckpt is not None:  # a trained head: the SLM's weights are inside the checkpoint's model
            self._arch = dict(ckpt["arch"])
            self.slm = build_slm(self._arch["slm_arch"])
            self.slm_info = ckpt.get("slm", {})
            self.weights = torch.tensor(ckpt["class_weights"], dtype=torch.float32)
        else:
            self.slm, slm_ckpt = load_slm(cfg.stage3_ckpt)
            self._check_slm(slm_ckpt)
            self._arch = {"mode": cfg.mode, "num_classes": len(self.taxonomy), "taxonomy": self.taxonomy,
                          "hidden_dim": cfg.hidden_dim, "slm_arch": slm_ckpt["arch"]}
            self.slm_info = {"path": cfg.stage3_ckpt, "data": slm_ckpt["data"]}
            self.weights = class_weights(_train_labels(shards), m.num_classes)
        self.layers = list(self._arch["slm_arch"]["layers"])
        missing = [x for x in self.layers if x not in m.audio_layers]
        if missing:
            raise LakeError(f"{shards.root}: lacks audio layer(s) {', '.join(missing)} that the SLM reads")

    def _check_slm(self, slm_ckpt: dict) -> None:
        cfg, m = self.cfg, self.shards.manifest
        data = slm_ckpt["data"]
        if data["encoders"] != m.encoders:
            raise LakeError(f"{cfg.stage3_ckpt}: the SLM was trained on embeddings of other encoders than "
                            f"{self.shards.root}'s (audio {data['encoders']['audio'].get('id')} vs "
                            f"{m.encoders['audio'].get('id')}, text {data['encoders']['text'].get('id')} vs "
                            f"{m.encoders['text'].get('id')}); ingest MELD with the same encoders")
        if cfg.clap_ckpt:
            from trainers.clap import load_projectors

            proj = load_projectors(cfg.clap_ckpt)
            inside = self.slm.clap_audio.fc.weight
            if proj["audio_proj"]["fc.weight"].shape != inside.shape or not torch.equal(proj["audio_proj"]["fc.weight"], inside):
                raise LakeError(f"{cfg.clap_ckpt}: not the CLAP projectors {cfg.stage3_ckpt} was trained with")

    def arch(self) -> dict:
        return self._arch

    def build(self) -> nn.Module:
        a = self._arch
        return MeldHead(self.slm, a["mode"], a["num_classes"], a["hidden_dim"], self.cfg.dropout)

    def loss(self, model, batch):
        logits = model(batch["audio"], batch["text"])
        w = self.weights.to(logits.device)
        return F.cross_entropy(logits.float(), batch["label"], weight=w, label_smoothing=self.cfg.label_smoothing), {}

    def outputs(self, model, batch):
        return {"logits": model(batch["audio"], batch["text"]), "label": batch["label"]}

    def metrics(self, out):
        # the dev/test loss weighted like the training loss
        return classification_metrics_from(out, self.taxonomy, self.weights, self.cfg.label_smoothing)

    def headline(self, m):
        return f"weighted-F1 {m['weighted_f1']:.4f}  acc {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}"

    def extra_state(self):
        return {"slm": self.slm_info, "class_weights": self.weights.tolist()}

    @classmethod
    def read_checkpoint(cls, path: str, shards, stage3_ckpt: str = "", **files) -> dict:
        """Ours, or the reference tooling's MELD layout: a head alone, so its SLM comes from `stage3_ckpt`."""
        from trainers.checkpoint import read_checkpoint_file, validate_checkpoint
        from trainers.reference import is_reference_meld, meld_checkpoint
        from trainers.slm import read_slm_checkpoint

        obj = read_checkpoint_file(path)
        if not is_reference_meld(obj):
            return validate_checkpoint(obj, path, "meld")
        if not stage3_ckpt:
            raise LakeError(f"{path}: a reference-layout MELD head, which holds no SLM; pass the stage-3 checkpoint it "
                            "was trained on with --stage3-ckpt")
        ckpt = meld_checkpoint(obj, path, read_slm_checkpoint(stage3_ckpt), shards.taxonomy)
        ckpt.setdefault("class_weights", class_weights(_train_labels(shards), shards.manifest.num_classes).tolist())
        return ckpt


def _train_labels(shards) -> np.ndarray:
    """The label ids of the set's train split (from index.parquet: no shard is read)."""
    import pyarrow.compute as pc

    index = shards.index
    return np.asarray(index.filter(pc.equal(index["split"], "train")).column("label_id").to_numpy(), dtype=np.int64)


def load_meld(path: str) -> tuple[MeldHead, dict]:
    """A trained MELD head on its frozen SLM (eval mode) and its checkpoint, for prediction."""
    from trainers.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, "meld")
    arch = ckpt["arch"]
    model = MeldHead(build_slm(arch["slm_arch"]), arch["mode"], arch["num_classes"], arch["hidden_dim"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def parse_args(argv) -> MeldConfig:
    parser = stage_parser("python -m trainers.meld", MeldConfig, __doc__.split("\n\n")[0] + ".", DEFAULTS, PRESETS)
    return parse_stage_args(parser, MeldConfig, PRESETS, argv)


def main(argv=None) -> int:
    return run_stage(MeldTask, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
