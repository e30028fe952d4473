"""Settings every trainer shares; each trainer's config extends this dataclass.

Every numeric field declares its range; `__post_init__` checks them (and the few
cross-field rules), so a bad value fails at parse time or at construction with one
line naming the flag, never later inside torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lake.catalog import SetReading
from lake.cliargs import REQUIRED, above, arg, at_least, check_ranges
from lake.errors import LakeError

@dataclass(kw_only=True)
class TrainConfig(SetReading):
    data_root: list[str] = arg(REQUIRED, "the shard set(s) to train on: directories or fsspec URLs holding "
                               "manifest.json; several are read as one (same encoders and stored layers)", nargs="+",
                               metavar="SET")
    proportions: list[float] = arg((), "with several sets: the share of each epoch's rows drawn from each, in "
                                   "--data-root order (normalised to sum to 1; a set asked for more rows than it has "
                                   "is repeated, every row once before any twice; one asked for fewer is subsampled "
                                   "afresh each epoch); default: by train rows, i.e. plain concatenation",
                                   range=above(0), nargs="+", metavar="P")
    epoch_rows: int = arg(0, "rows per epoch drawn from the sets (0: the sum of their train splits)", range=at_least(0))
    label_map: str = arg("", "JSON file mapping each set's labels to the run's classes: {label: class} for every "
                         "set, or {set name: {label: class}}; rows whose label maps to nothing are left out. "
                         "Without it, the sets must have the same taxonomy")
    taxonomy: str = arg("", "with --label-map: a file of the run's class names in order (a JSON list or one per "
                        "line); default: the mapped classes, sorted")
    select_on: str = arg("", "with several sets: choose the best checkpoint on this set's validation split (its "
                         "manifest name) instead of all of them pooled")
    save_dir: str = arg("checkpoints", "where checkpoints (epoch, best, last) and TensorBoard logs go")
    epochs: int = arg(10, "total epochs; resuming with a larger value continues the run", range=at_least(1))
    batch_size: int = arg(512, "GLOBAL batch size, split evenly across ranks", range=at_least(1))
    lr: float = arg(1e-4, "AdamW learning rate (peak, after warmup)", range=above(0))
    weight_decay: float = arg(0.01, "AdamW weight decay", range=at_least(0))
    warmup_steps: int = arg(0, "linear warmup steps", range=at_least(0))
    schedule: str = arg("constant", "learning-rate schedule after warmup", choices=["constant", "cosine"])
    grad_clip: float = arg(1.0, "clip the gradient norm to this (0 = off)", range=at_least(0))
    amp: str = arg("auto", "mixed precision of the training steps: auto (bf16 on CUDA, off on CPU), bf16, fp16 "
                   "or off; validation and test passes always run in fp32", choices=["auto", "bf16", "fp16", "off"])
    num_workers: int = arg(0, "loader worker processes per rank; 0 gathers rows in the training process, fastest "
                           "for a local set (~1M rows/s here; processes pay a shared-memory copy per batch), "
                           "workers help for sets behind a URL", range=at_least(0))
    data_on_device: str = arg("auto", "hold the train and validation splits on the training device and gather batches "
                              "there (no host-to-device copy per batch): on, off, or auto (on for CUDA when the "
                              "fields read take at most half of its memory)", choices=["auto", "on", "off"])
    eval_batch_size: int = arg(1024, "global batch size for validation and test passes", range=at_least(1))
    seed: int = arg(0, "seed of the model init, the data order and dropout", range=at_least(0))
    device: str = arg("auto", "auto, cuda or cpu", choices=["auto", "cuda", "cpu"])
    checkpoint: str = arg("", "a checkpoint to start from: with --resume, the run to continue; without, "
                          "weights only (a warm start with a fresh optimizer); empty: a fresh start")
    resume: str = arg("", "continue an interrupted run: --resume alone takes --checkpoint or the last checkpoint "
                      "in --save-dir; --resume PATH takes PATH", nargs="?", const="last", metavar="CKPT")
    save_every_steps: int = arg(0, "also save the last checkpoint every N steps inside an epoch (0 = epoch ends only)",
                                range=at_least(0))
    keep_epochs: int = arg(3, "per-epoch checkpoints to keep, newest first (0 = all); best and last are always kept",
                           range=at_least(0))
    max_steps: int = arg(0, "stop after this many optimizer steps in total, without saving (0 = no limit); "
                         "for tests of interrupted runs", range=at_least(0))
    log_every: int = arg(20, "print and log the training loss every N steps", range=at_least(1))
    test_at_end: bool = arg(True, "evaluate the best checkpoint on the test split at the end, if there is one")
    progress: bool = arg(True, "show progress (a bar on a terminal; a line every 30 s in a log file)")

    def __post_init__(self):
        if isinstance(self.data_root, str):  # one set, as library callers pass it
            self.data_root = [self.data_root]
        self.data_root, self.proportions = list(self.data_root), list(self.proportions or ())
        check_ranges(self)
        if self.proportions and len(self.proportions) != len(self.data_root):
            raise LakeError(f"--proportions: {len(self.proportions)} value(s) for {len(self.data_root)} set(s) in "
                            "--data-root; give one per set")
        if self.taxonomy and not self.label_map:
            raise LakeError("--taxonomy orders the classes of --label-map; pass --label-map too")



# -- what a resumed run may change ---------------------------------------------------------------------------

APPLIED_ON_RESUME = {
    "lr", "weight_decay", "epochs", "warmup_steps", "schedule", "grad_clip", "dropout", "label_smoothing",
    "max_logit_scale", "select_on", "amp", "device", "num_workers", "data_on_device", "eval_batch_size",
    "cache_dir", "cache_limit", "storage_options", "save_dir", "save_every_steps", "keep_epochs", "max_steps",
    "log_every", "test_at_end", "progress",
}
"""Flags a resumed run takes as given (the optimizer's rate and decay are set anew, the schedule is recomputed)."""

CHECKED_ELSEWHERE = {"data_root", "proportions", "epoch_rows", "label_map", "taxonomy", "clap_ckpt", "stage3_ckpt",
                     "checkpoint", "resume"}
"""The data (checked by content: every set's fingerprint, share and label map), the earlier stage's file (by its
bytes), not by how they are spelled; and the flags that say what to resume."""

REFUSED_BECAUSE = {
    "seed": "it decides the run's initialisation and the order of every epoch; a resumed run keeps its own",
    "batch_size": "the global batch decides which rows every step holds; resume with the same --batch-size (on "
                  "any number of ranks it divides by)",
    "logit_scale_init": "it only sets how a run starts",
}
ARCH_REASON = "it changes the model the checkpoint holds; start a new run (or --checkpoint without --resume)"


def resume_changes(old: dict, new) -> tuple[dict, dict]:
    """({flag: (was, now)} applied, {flag: reason} refused) between a checkpoint's config and a resumed run's."""
    applied, refused = {}, {}
    for name, value in asdict(new).items():
        if name in CHECKED_ELSEWHERE or name not in old:
            continue
        was = old[name]
        if (list(was) if isinstance(was, (list, tuple)) else was) == (list(value) if isinstance(value, (list, tuple))
                                                                     else value):
            continue
        if name in APPLIED_ON_RESUME:
            applied[name] = (was, value)
        else:
            refused[name] = REFUSED_BECAUSE.get(name, ARCH_REASON)
    return applied, refused
