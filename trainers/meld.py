"""Stage 4, MELD: a head on the frozen SLM for MELD's 7 emotions, selected by dev weighted F1.

    python -m trainers.meld --data-root MELDSET --stage3-ckpt slm_stage3_best.pt --clap-ckpt clap_projectors.pt \
        --mode A --epochs 60 --batch-size 128 --lr 1e-3 --weight-decay 0.01 --num-workers 4 --save-dir D --seed 17

Mode A: LayerNorm(5P) -> Linear(5P, 1024) -> SiLU -> Dropout 0.2 -> Linear(1024, 7) on the
SLM's fused vector. Mode B: Linear(N, 7) on the L2-normalised SLM logits (N read from
the SLM checkpoint). Last layers Xavier-uniform with zero bias. The loss is
cross-entropy with label smoothing 0.1 and class weights w_c = sqrt(n_max / n_c)
counted on this set's train split (the same weights in the dev loss). It reads
precomputed MELD shards: no audio model, little GPU memory.

The audio layers are the SLM's: the loader reads those it reads, and its layer mixes (the CLAP
head's and the prosody branch's, where they were trained with `--audio-layer weighted`) stay
frozen with the rest of it. So MELD has no `--audio-layer` of its own: re-learning the weights
under the frozen CLAP head and prosody projection would feed them mixtures they were never fitted
to, and a mix of its own inside the new head would make mode A another model than the reference's.
The stage-4 report shows the frozen weights.
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
from trainers.checkpoint import read_checkpoint_file
from trainers.clap import check_same_projectors
from trainers.cli import parse_stage_args, stage_parser
from trainers.config import TrainConfig
from trainers.loop import Task, check_encoders, check_layers
from trainers.metrics import classification_metrics_from
from trainers.reference import is_reference_meld, meld_checkpoint
from trainers.slm import ProsodySLM, SlmTask, build_slm


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

    @classmethod
    def new(cls, cfg: MeldConfig, data) -> "MeldTask":
        slm_task, slm = SlmTask.load(cfg.stage3_ckpt)
        trained_on = slm_task.checkpoint["data"]
        check_encoders(trained_on["encoders"], data, f"{cfg.stage3_ckpt} (the SLM; ingest MELD with the same encoders)")
        if cfg.clap_ckpt:
            check_same_projectors(cfg.clap_ckpt, slm.clap_audio, cfg.stage3_ckpt)
        arch = {"mode": cfg.mode, "num_classes": data.num_classes, "taxonomy": data.taxonomy,
                "hidden_dim": cfg.hidden_dim, "slm_arch": slm_task.arch()}
        extras = {"slm": {"path": cfg.stage3_ckpt, "data": trained_on},
                  "class_weights": class_weights(data.train_labels(), data.num_classes).tolist()}
        return cls(cfg, data, arch, extras, init={"slm": slm.state_dict()})

    def setup(self) -> None:
        a = self._arch
        self.prefix = f"meld_slm_{a['mode']}"
        self.taxonomy = a["taxonomy"]
        self.weights = torch.tensor(self.extras["class_weights"], dtype=torch.float32)
        self.layers = list(a["slm_arch"]["layers"])
        check_layers(self.layers, self.data, "the SLM")

    def make_model(self) -> nn.Module:
        a = self._arch
        return MeldHead(build_slm(a["slm_arch"]), a["mode"], a["num_classes"], a["hidden_dim"], self.cfg.dropout)

    def initialise(self, model: nn.Module) -> None:
        model.slm.load_state_dict(self.init["slm"])

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

    @classmethod
    def checkpoint_from(cls, obj, path: str, data, stage3_ckpt: str = "", **files) -> dict | None:
        """Ours, or the reference tooling's MELD layout: a head alone, so its SLM comes from `stage3_ckpt`."""
        if not is_reference_meld(obj):
            return super().checkpoint_from(obj, path, data)
        if not stage3_ckpt:
            raise LakeError(f"{path}: a reference-layout MELD head, which holds no SLM; pass the stage-3 checkpoint it "
                            "was trained on with --stage3-ckpt")
        if data is None:
            raise LakeError(f"{path}: a reference-layout MELD head names no classes; it is read with the set it is "
                            "evaluated on")
        slm_ckpt = SlmTask.checkpoint_from(read_checkpoint_file(stage3_ckpt), stage3_ckpt, None)
        if slm_ckpt is None:
            raise LakeError(f"{stage3_ckpt}: not an SLM checkpoint (--stage3-ckpt)")
        ckpt = meld_checkpoint(obj, path, slm_ckpt, data.taxonomy,
                               lambda arch: MeldHead(build_slm(arch["slm_arch"]), arch["mode"], arch["num_classes"],
                                                     arch["hidden_dim"]).state_dict())
        ckpt["class_weights"] = class_weights(data.train_labels(), data.num_classes).tolist()
        return ckpt

    @classmethod
    def parse(cls, argv) -> MeldConfig:
        parser = stage_parser("python -m trainers.meld", MeldConfig, __doc__.split("\n\n")[0] + ".", DEFAULTS,
                              PRESETS)
        return parse_stage_args(parser, MeldConfig, PRESETS, argv)


main = MeldTask.main

if __name__ == "__main__":
    sys.exit(main())
