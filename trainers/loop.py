"""The one training loop every stage shares (CLAP, SLM, MELD), and the evaluation pass.

A stage supplies a `Task`: its model, `loss(model, batch)`, per-row outputs, metrics and
selection metric, its checkpoint prefix, and how to rebuild itself from a checkpoint. The
loop does the rest, the same for all: distributed init (NCCL on GPU, gloo on CPU), AdamW,
warmup/schedule, optional AMP, gradient clipping, the streaming loader, per-epoch
validation, checkpoints (epoch/best/last, resumable mid-epoch), preemption, logs.

    train(task_cls, cfg):  build -> restore -> for each epoch: steps, validate, save -> finish

`evaluate` is the one evaluation pass: validation during training, the test pass at its
end and `python -m evaluation` all call it, in fp32, so their numbers are the same numbers.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import MISSING, asdict, fields
from typing import Any

import numpy as np
import torch

from torch.nn.parallel import DistributedDataParallel as DDP

from lake.cli import run_cli
from lake.distributed import World, barrier, close_distributed, init_distributed
from lake.errors import LakeError, Preempted
from lake.progress import Progress
from lake.signals import preemption_signals
from lake.splits import validation_split
from shards.device_loader import DeviceLoader
from shards.loader import ShardLoader
from trainers.checkpoint import (Checkpointer, RNGPart, is_checkpoint, read_checkpoint_file, resume_path,
                                 validate_checkpoint)
from trainers.config import TrainConfig, resume_changes
from trainers.data import TrainingData
from trainers.logs import RunLog
from trainers.reference import layout_name, refuse_resume
from trainers.state import LossWatch, TrainState


class Task:
    """What a stage plugs into the loop. Subclasses set the class attributes and the methods.

    One construction path: `Task(cfg, data, arch, extras, init)`. `arch` says what the model is (its
    shapes, classes, layers); `extras` what a checkpoint carries beside it (returned by `extra_state`);
    `init` what a new model starts from (statistics, frozen weights of the previous stage), None for a
    trained one, whose weights are loaded. `new` makes them from the command line's flags (a fresh
    run), `from_checkpoint` from a checkpoint dict; `load` is a stage's door from a file. `data` (the
    sets the task reads, trainers.data) may be None where no set is read (prediction).
    """

    stage = ""  # "clap", "slm", "meld": recorded in checkpoints
    prefix = ""  # checkpoint file prefix
    selection = ""  # metric maximised for the best checkpoint
    config_cls = TrainConfig
    fields: tuple[str, ...] = ("audio", "text", "label")
    layers: list[str] | None = None  # stored audio layers the loader reads (None: all)

    def __init__(self, cfg: TrainConfig, data: TrainingData | None, arch: dict, extras: dict | None = None,
                 init: dict | None = None):
        self.cfg, self.data, self._arch = cfg, data, arch
        self.extras, self.init = dict(extras or {}), init
        self.checkpoint: dict | None = None  # the checkpoint a trained task was loaded from
        self.setup()

    # -- what a stage defines -------------------------------------------------------------
    @classmethod
    def new(cls, cfg: TrainConfig, data: TrainingData) -> "Task":
        """A task for a fresh run, from the flags (and the files they name)."""
        raise NotImplementedError

    def setup(self) -> None:
        """Derive what the loop needs from the arch (fields, layers, ...) and check the set holds it."""

    def make_model(self) -> torch.nn.Module:
        """The model of this arch, freshly initialised."""
        raise NotImplementedError

    def initialise(self, model: torch.nn.Module) -> None:
        """Put `self.init` into a new model (statistics, the frozen weights of the previous stage)."""

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and any other scalars to log, as tensors (read with .item() only at log steps)."""
        raise NotImplementedError

    def outputs(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Per-row outputs of an evaluation batch (logits, embeddings, labels)."""
        raise NotImplementedError

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def parse(cls, argv) -> TrainConfig:
        """The stage's command line, parsed into its config."""
        raise NotImplementedError

    @classmethod
    def checkpoint_from(cls, obj: Any, path: str, data: TrainingData | None, **files) -> dict | None:
        """This stage's checkpoint dict from a loaded file: this project's format, or another layout the
        stage accepts (exports, the reference tooling's files; `files`: other checkpoints such a layout needs);
        None when the file is none of them."""
        return validate_checkpoint(obj, path, cls.stage) if is_checkpoint(obj) and obj.get("stage") == cls.stage \
            else None

    # -- the same for every stage ---------------------------------------------------------
    def arch(self) -> dict:
        """What defines the model's shapes; must match to resume."""
        return self._arch

    def build(self) -> torch.nn.Module:
        model = self.make_model()
        if self.init is not None:
            self.initialise(model)
        return model

    def headline(self, metrics: dict) -> str:
        return f"{self.selection} {metrics[self.selection]:.4f}"

    def extra_state(self) -> dict:
        """Anything else a checkpoint must carry for evaluation or the next stage."""
        return self.extras

    def loader(self, split: str, batch_size: int, world: World, training: bool = False, num_workers: int = 0,
               pin_memory: bool = False) -> ShardLoader:
        """The split of every set the task reads, as one loader (training: mixed; evaluation: set after set)."""
        return self.data.loader(split, batch_size, world, training, self.cfg.seed, self.layers, self.fields,
                                num_workers, pin_memory)

    def split_loaders(self, split: str | None, batch_size: int, world: World, num_workers: int = 0,
                      pin_memory: bool = False) -> dict[str, ShardLoader]:
        """{set name: loader}: the split (None: the validation split) of each set on its own."""
        return self.data.split_loaders(split, batch_size, world, self.cfg.seed, self.layers, self.fields,
                                       num_workers, pin_memory)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, data: TrainingData | None, path: str,
                        same_classes: bool = True) -> tuple["Task", torch.nn.Module]:
        """The task and its trained model (eval mode, CPU) from a checkpoint dict of this stage. `data`: the sets it
        is used on (checked: the same embedding space; the same classes unless `same_classes` is False, as in a
        cross-corpus evaluation through a label map)."""
        given = {k: v for k, v in ckpt["config"].items() if k in {f.name for f in fields(cls.config_cls)}}
        needed = {f.name: "" for f in fields(cls.config_cls) if f.default is MISSING}  # files not read here
        roots = [s.root for s in data.sets] if data is not None else [""]
        cfg = cls.config_cls(**{**needed, **given, "data_root": roots})
        if data is not None:
            check_data(ckpt, data, path, same_classes)
        extras = {k: v for k, v in ckpt.items() if k not in CHECKPOINT_CORE}
        task = cls(cfg, data, ckpt["arch"], extras)
        model = task.build()
        model.load_state_dict(ckpt["model"])
        task.checkpoint = ckpt
        return task, model.eval()

    @classmethod
    def load(cls, path: str, data: TrainingData | None = None, same_classes: bool = True,
             **files) -> tuple["Task", torch.nn.Module]:
        """The task and its trained model from any file this stage accepts (trainers.models picks the stage)."""
        obj = read_checkpoint_file(path)
        ckpt = cls.checkpoint_from(obj, path, data, **files)
        if ckpt is None:
            what = layout_name(obj)
            raise LakeError(f"{path}: {'a ' + what if what else 'not a checkpoint of this project'}; a "
                            f"{cls.stage} checkpoint is needed here")
        return cls.from_checkpoint(ckpt, data, path, same_classes)

    @classmethod
    def main(cls, argv=None) -> int:
        """`python -m trainers.<stage>`: parse, train; failures and stop signals end in one line (lake.cli)."""
        args = sys.argv[1:] if argv is None else argv

        def work() -> int:
            train(cls, cls.parse(args))
            return 0

        return run_cli(work, kept="the checkpoints written so far are kept (--resume continues from the last one)")


CHECKPOINT_CORE = ("format", "stage", "arch", "config", "data", "model", "train", "optimizer", "scheduler", "scaler",
                   "loader", "rng", "reference")
"""A checkpoint's keys that are not a stage's extras."""


def check_data(ckpt: dict, data: TrainingData, path: str, same_classes: bool = True) -> None:
    """The sets must hold what the model was trained on: the same embedding space, the same classes."""
    trained = ckpt["arch"].get("taxonomy")
    if same_classes and trained is not None and list(trained) != list(data.taxonomy):
        raise LakeError(f"{path}: trained on classes {trained[:5]}...; {data.root} has {data.taxonomy[:5]}...; "
                        "evaluate on a set with the same taxonomy (or map its labels with --label-map)")
    check_encoders(ckpt["data"]["encoders"], data, path)


def check_encoders(trained: dict | None, data: TrainingData, what: str) -> None:
    """`what` (a checkpoint, projectors) was trained on embeddings of `trained` encoders: the sets must hold the same
    (None: not recorded, as in the reference tooling's projector files)."""
    if trained is None or trained == data.encoders:
        return
    ids = ", ".join(f"{k} {trained.get(k, {}).get('id')} vs {data.encoders.get(k, {}).get('id')}"
                    for k in ("audio", "text"))
    raise LakeError(f"{what}: trained on embeddings of other encoders than {data.root}'s ({ids}); use a set "
                    "ingested with the same encoders")


def check_layers(layers: list[str], data: TrainingData | None, what: str) -> None:
    """The sets must store every audio layer the model reads."""
    missing = [x for x in layers if data is not None and x not in data.audio_layers]
    if missing:
        raise LakeError(f"{data.root}: lacks audio layer(s) {', '.join(missing)} that {what} reads (stored: "
                        f"{', '.join(data.audio_layers)})")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def amp_dtype(amp: str, device: torch.device):
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def lr_lambda(cfg: TrainConfig, total_steps: int):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            t = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0
    return f


def evaluate(task: Task, model: torch.nn.Module, loader: ShardLoader, device, world: World,
             desc: str = "eval", progress: bool = False) -> dict:
    """Metrics of `model` on the loader's whole split, in fp32: every row once, gathered from all ranks."""
    return task.metrics(gather_outputs(task, model, loader, device, world, desc, progress))


@torch.no_grad()
def gather_outputs(task: Task, model: torch.nn.Module, loader: ShardLoader, device, world: World,
                   desc: str = "eval", progress: bool = False, stop=None) -> dict[str, np.ndarray]:
    """`task.outputs` of every row of the loader's split (fp32, in row order), from all ranks. `stop()`: called
    before each batch, may raise to end the pass (a stop signal)."""
    was_training = model.training
    model.eval()
    outs: dict[str, list] = defaultdict(list)
    bar = Progress(desc, total=len(loader), unit="batch", enabled=progress and world.is_main)
    for batch in loader:
        if stop is not None:
            stop()
        batch = to_device(batch, device)
        for k, v in task.outputs(model, batch).items():
            outs[k].append(v.float().cpu() if v.is_floating_point() else v.cpu())
        outs["row"].append(batch["row"].cpu())
        bar.update()
    bar.close()
    local = {k: torch.cat(v).numpy() for k, v in outs.items()}
    if world.distributed:
        import torch.distributed as dist

        parts = [None] * world.world_size
        dist.all_gather_object(parts, local)  # rank chunks are contiguous, in rank order
        parts = [p for p in parts if len(p.get("row", ()))]  # a rank may have had no rows
        local = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    model.train(was_training)
    return local


def on_device(loader: ShardLoader, choice: str, device: torch.device):
    """The loader, or its split held on the training device (--data-on-device): the same batches either way."""
    if choice == "on" or (choice == "auto" and device.type == "cuda" and DeviceLoader.fits(loader, device)):
        return DeviceLoader(loader, device)
    return loader


def duration_quantiles(data: TrainingData, split: str) -> dict:
    """Clip durations of a split (seconds, from index.parquet): min, 1/50/99th percentile, max."""
    d = data.durations(split)
    if not len(d):
        return {}
    q = np.percentile(d, [1, 50, 99])
    return {"min": float(d.min()), "p1": float(q[0]), "p50": float(q[1]), "p99": float(q[2]), "max": float(d.max())}


def resumable(path: str, stage: str) -> dict:
    """A checkpoint of this project's `stage` to continue from or start with (--resume, --checkpoint); the
    reference tooling's files are refused with what they can be used for."""
    obj = read_checkpoint_file(path)
    refuse_resume(obj, path)
    return validate_checkpoint(obj, path, stage)


def same_data(ckpt: dict, data: TrainingData, path: str) -> None:
    """--resume continues on the data the run was trained on: every set (name, fingerprint, share, label map)."""
    theirs = ckpt["data"]
    if theirs["fingerprint"] == data.fingerprint:
        return
    was = {r["name"]: r for r in theirs.get("sets") or [{"name": theirs["name"], "fingerprint": theirs["fingerprint"]}]}
    now = {r["name"]: r for r in data.record()}
    diffs = [f"{n}: not in this run" for n in was if n not in now] + [f"{n}: not in the checkpoint's run" for n in now
                                                                        if n not in was]
    for n in sorted(set(was) & set(now)):
        diffs += [f"{n}: {k} {was[n].get(k)!r} -> {now[n].get(k)!r}" for k in ("fingerprint", "proportion", "rows",
                                                                               "label_map")
                  if k in was[n] and was[n].get(k) != now[n].get(k)]
    raise LakeError(f"{path}: trained on other data than --data-root gives ({'; '.join(diffs) or 'the epoch rows'}); "
                    "resume on the same sets, shares and label maps")


def same_file(was: str | None, now: str | None, flag: str, path: str) -> None:
    """A resumed run's earlier-stage file (--clap-ckpt, --stage3-ckpt) under another name must hold the same bytes
    (its frozen weights are the checkpoint's either way); one that is gone cannot be compared and is let be."""
    if not was or not now or was == now or not os.path.exists(was) or not os.path.exists(now):
        return
    if os.path.getsize(was) != os.path.getsize(now) or _sha256(was) != _sha256(now):
        raise LakeError(f"{path}: --resume with {flag} {now}, but the run was trained with {was}, which holds other "
                        f"weights; resume with the file it was trained with")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def concat_outputs(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Run:
    """One training run: the built parts, their checkpointer, and the loop over them."""

    def __init__(self, task_cls, cfg: TrainConfig, world: World, device: torch.device, preempted):
        self.cfg, self.world, self.device, self.preempted = cfg, world, device, preempted
        self.data = TrainingData.open(cfg.data_root, cfg.cache_dir, cfg.cache_limit, cfg.storage_options,
                                      cfg.proportions, cfg.epoch_rows, cfg.label_map, cfg.taxonomy)
        if cfg.select_on and cfg.select_on not in self.data.names:
            raise LakeError(f"--select-on {cfg.select_on}: not one of the sets ({', '.join(self.data.names)})")
        self.task = task = task_cls.new(cfg, self.data)
        self.resume_from = resume_path(cfg.resume, cfg.checkpoint, cfg.save_dir, task.prefix)
        torch.manual_seed(cfg.seed)  # the same init on every rank, whatever reading the task's files drew
        self.raw = task.build().to(device)
        self.params = [p for p in self.raw.parameters() if p.requires_grad]
        self.model = DDP(self.raw, device_ids=[device.index] if device.type == "cuda" else None) \
            if world.distributed else self.raw
        torch.manual_seed(cfg.seed + 1000 * world.rank)  # dropout differs across ranks
        self.dtype = amp_dtype(cfg.amp, device)
        pin = device.type == "cuda"
        self.train_loader = on_device(task.loader("train", cfg.batch_size, world, True, cfg.num_workers, pin),
                                      cfg.data_on_device, device)
        self.val_loaders = {name: on_device(lo, cfg.data_on_device, device) for name, lo in task.split_loaders(
            None, cfg.eval_batch_size, world, min(cfg.num_workers, 2), pin).items()}
        self.val_split = "val" if len(self.data.sets) > 1 else \
            validation_split(self.data.sets[0].manifest.splits)
        self.steps_per_epoch = len(self.train_loader)
        # fused: one kernel a step for all the parameters, not a dozen ops per tensor (the SLM's AdamW step on one
        # CPU thread: 6.4 ms -> 1.3 ms; torch has it for CPU and CUDA parameters, of any float dtype)
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in self.params) or None
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg, cfg.epochs * self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.state = TrainState(task.selection)
        self.watch = LossWatch(device, world.distributed)
        parts = {"model": self.raw, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler,
                 "loader": self.train_loader, "rng": RNGPart(world), "train": self.state}
        self.ckpt = Checkpointer(cfg.save_dir, task.prefix, parts, self._meta, cfg.keep_epochs, world.is_main)
        self.log = RunLog(os.path.join(cfg.save_dir, "tb", task.prefix), world.is_main)
        self.train_durations = duration_quantiles(self.data, "train")  # what new inputs are compared with

    def _meta(self) -> dict:
        d = self.data
        data = {"name": d.name, "root": d.root, "fingerprint": d.fingerprint, "encoders": d.encoders,
                "taxonomy": d.taxonomy, "audio_layers": d.audio_layers, "train_durations_s": self.train_durations}
        if not d.single:
            data["sets"] = d.record()
        return {"stage": self.task.stage, "config": asdict(self.cfg), "arch": self.task.arch(), "data": data,
                **self.task.extra_state()}

    def restore(self) -> None:
        """Continue an interrupted run (--resume), or start from given weights (--checkpoint)."""
        cfg, log = self.cfg, self.log.line
        if self.resume_from:
            path = self.resume_from
            ckpt = resumable(path, self.task.stage)
            same_data(ckpt, self.data, path)
            applied = self._resume_flags(ckpt, path)
            old = self.ckpt.restore(ckpt, path, self.task.arch(), None)["config"]
            self._apply_optimizer_flags()
            if applied:
                log(f"resumed with other flags, applied from here on: " + ", ".join(
                    f"--{k.replace('_', '-')} {a} -> {b}" for k, (a, b) in applied.items()))
            if cfg.schedule != "constant" and (old.get("epochs"), old.get("schedule")) != (cfg.epochs, cfg.schedule):
                log(f"warning: the {cfg.schedule} schedule now spans {cfg.epochs} epochs (was {old.get('epochs')} "
                    f"{old.get('schedule')}); the learning rate continues on the new curve")
            loader = self.train_loader
            ranks = len(ckpt["rng"]) if isinstance(ckpt.get("rng"), list) else self.world.world_size
            log(f"resumed {path}: epoch {loader.epoch:03d}, batch {loader.consumed}/{self.steps_per_epoch}, "
                f"step {self.state.step}" + (f"; on {self.world.world_size} rank(s), it ran on {ranks}: the same "
                                             "global batches follow, dropout draws differ" if ranks !=
                                             self.world.world_size else ""))
            if loader.consumed >= self.steps_per_epoch:  # saved at an epoch's end
                loader.set_epoch(loader.epoch + 1)
        elif cfg.checkpoint:
            self.ckpt.restore(resumable(cfg.checkpoint, self.task.stage), cfg.checkpoint, self.task.arch(), None,
                              only=("model",))
            log(f"initialised the weights from {cfg.checkpoint} (fresh optimizer)")
        else:
            self.train_loader.set_epoch(0)
        self.state.epoch = self.train_loader.epoch

    def _resume_flags(self, ckpt: dict, path: str) -> dict:
        """Every flag that differs from the checkpoint's run is applied (returned, to be said) or refused here (one
        line naming each and why), so the config saved is the one that ran."""
        applied, refused = resume_changes(ckpt["config"], self.cfg)
        if refused:
            raise LakeError(f"{path}: --resume cannot take " + "; ".join(
                f"--{k.replace('_', '-')} {getattr(self.cfg, k)} (was {ckpt['config'][k]}): {why}"
                for k, why in refused.items()))
        for name in ("clap_ckpt", "stage3_ckpt"):
            same_file(ckpt["config"].get(name), getattr(self.cfg, name, None), f"--{name.replace('_', '-')}", path)
        return applied

    def _apply_optimizer_flags(self) -> None:
        """The learning rate and weight decay of this command line, not the checkpoint's: restored optimizer and
        schedule state carry the old ones (LambdaLR's base rates)."""
        self.scheduler.base_lrs = [self.cfg.lr] * len(self.optimizer.param_groups)
        factor = lr_lambda(self.cfg, self.cfg.epochs * self.steps_per_epoch)(self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["lr"], group["weight_decay"] = self.cfg.lr, self.cfg.lr * factor, \
                self.cfg.weight_decay

    def validate(self, loaders: dict, desc: str, stop=None) -> dict:
        """The metrics of the model on each set's loader; with several sets, the pooled metrics (of every row of
        them together) with each set's under "sets". `stop`: see gather_outputs."""
        outs = {name: gather_outputs(self.task, self.raw, lo, self.device, self.world, f"{desc} {name}",
                                     self.cfg.progress, stop) for name, lo in loaders.items()}
        if len(outs) == 1:
            return self.task.metrics(next(iter(outs.values())))
        pooled = self.task.metrics(concat_outputs(list(outs.values())))
        return {**pooled, "sets": {name: self.task.metrics(o) for name, o in outs.items()}}

    def _stop_testing(self) -> None:
        """The test pass at the end gives way to a stop signal: training is over and saved."""
        if self.preempted:
            raise Preempted(f"{self.preempted.name} received during the test pass: training is finished and saved "
                            f"({self.ckpt.path('best')}); evaluate it with `python -m evaluation`")

    def selected(self, metrics: dict) -> dict:
        """The metrics selection looks at: the pooled ones, or --select-on's set's."""
        return metrics["sets"][self.cfg.select_on] if self.cfg.select_on and "sets" in metrics else metrics

    def fit(self) -> dict:
        cfg, t_run = self.cfg, time.time()
        val_rows = sum(lo.num_rows for lo in self.val_loaders.values())
        self.log.line(f"{self.task.stage}: {self.data.name} ({self.data.fingerprint}), train "
                      f"{sum(self.data.train_quotas())} rows an epoch, {self.val_split} {val_rows} rows; "
                      f"{self.steps_per_epoch} steps/epoch, epochs {self.state.epoch:03d}..{cfg.epochs - 1:03d}; "
                      f"{self.world.world_size} rank(s) on {self.device}; "
                      f"{sum(p.numel() for p in self.params):,} trainable parameters")
        if not self.data.single:
            shares = ", ".join(f"{n} {q} rows ({p:.3f})" for n, q, p in zip(self.data.names, self.data.train_quotas(),
                                                                          self.data.asked()))
            self.log.line(f"{len(self.data.sets)} sets, {self.data.num_classes} classes; an epoch draws {shares}")
            for line in self.data.summary():
                self.log.line(line)
        self.model.train()
        for epoch in range(self.state.epoch, cfg.epochs):
            self.state.epoch = epoch
            if epoch != self.train_loader.epoch:
                self.train_loader.set_epoch(epoch)
            t0 = time.time()
            losses = self._train_epoch(epoch)
            if losses is None:  # --max-steps
                return {"stopped_at_step": self.state.step}
            self._end_epoch(epoch, losses, time.time() - t0)
        return self._finish(time.time() - t_run)

    def _train_epoch(self, epoch: int) -> list[float] | None:
        """One epoch's steps from the loader's position; the losses read at log steps (None: --max-steps hit)."""
        cfg, state, loader = self.cfg, self.state, self.train_loader
        losses: list[float] = []
        bar = Progress(f"epoch {epoch:03d}", total=self.steps_per_epoch, unit="step", initial=loader.consumed,
                       enabled=cfg.progress and self.world.is_main)
        try:
            for batch in loader:
                loss, logs = self._step(to_device(batch, self.device))
                state.step += 1
                self.watch.add(loss, state.step)
                bar.update()
                at_log = state.step % cfg.log_every == 0 or loader.consumed == self.steps_per_epoch
                saving = cfg.save_every_steps and state.step % cfg.save_every_steps == 0 and \
                    loader.consumed < self.steps_per_epoch
                if at_log or saving:
                    self.watch.check(epoch, self._last_saved())  # a device sync, only at log and save steps
                if at_log:
                    value = loss.item()
                    losses.append(value)
                    self.log.step(state.step, value, self.scheduler.get_last_lr()[0], logs, bar)
                if cfg.max_steps and state.step >= cfg.max_steps:
                    self.log.line(f"stopped at step {state.step} (--max-steps), without saving")
                    return None
                if (at_log or not self.world.distributed) and self.preempted.agreed(self.world, self.device):
                    self._preempt(epoch)
                if saving:
                    self.ckpt.save_last()
        finally:
            bar.close()
        return losses

    def _step(self, batch: dict):
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss, logs = self.task.loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach(), logs

    def _last_saved(self) -> str | None:
        return self.ckpt.path("last") if os.path.exists(self.ckpt.path("last")) else None

    def _preempt(self, epoch: int) -> None:
        self.watch.check(epoch, self._last_saved())
        self.ckpt.save_last()
        raise Preempted(f"{self.preempted.name or 'a stop signal'} received: saved {self.ckpt.path('last')} at step "
                        f"{self.state.step} (epoch {epoch:03d}, batch {self.train_loader.consumed}/"
                        f"{self.steps_per_epoch}); continue with the same command and --resume")

    def _end_epoch(self, epoch: int, losses: list[float], seconds: float) -> None:
        metrics = self.validate(self.val_loaders, f"{self.val_split} {epoch:03d}")
        is_best = self.state.observe(epoch, metrics, self.selected(metrics))
        self.ckpt.save_epoch(epoch, is_best)
        self.log.scalars(self.val_split, metrics, epoch)
        for name, m in metrics.get("sets", {}).items():
            self.log.scalars(f"{self.val_split}/{name}", m, epoch)
        train_loss = f"{np.mean(losses):.4f}" if losses else "-"
        per_set = "".join(f"  {name} {m[self.task.selection]:.4f}" for name, m in metrics.get("sets", {}).items())
        self.log.line(f"epoch {epoch:03d}/{self.cfg.epochs - 1:03d}  train loss {train_loss}  {self.val_split} "
                      f"{self.task.headline(metrics)}{per_set}  lr {self.scheduler.get_last_lr()[0]:.2e}  {seconds:.1f} s"
                      + ("  *best*" if is_best else ""))
        if self.preempted.agreed(self.world, self.device):
            raise Preempted(f"{self.preempted.name} received: epoch {epoch:03d} is saved ({self.ckpt.path('last')}); "
                            "continue with the same command and --resume")

    def _finish(self, seconds: float) -> dict:
        cfg, state = self.cfg, self.state
        summary = {"stage": self.task.stage, "best": state.best, "best_checkpoint": self.ckpt.path("best"),
                   "last_checkpoint": self.ckpt.path("last"), "val": state.metrics, "seconds": round(seconds, 2)}
        tests = self.task.split_loaders("test", cfg.eval_batch_size, self.world, min(cfg.num_workers, 2)) \
            if cfg.test_at_end and state.best_epoch >= 0 else {}
        if tests:
            barrier()  # rank 0 has written the best checkpoint
            best = self.ckpt.path("best")
            self.ckpt.restore(resumable(best, self.task.stage), best, self.task.arch(), None, only=("model",))
            summary["test"] = self.validate(tests, "test", self._stop_testing)
            self.log.line(f"test (best checkpoint, epoch {state.best_epoch:03d}): {self.task.headline(summary['test'])}"
                          + "".join(f"  {n} {m[self.task.selection]:.4f}" for n, m in summary["test"].get("sets", {}).items()))
        for lo in tests.values():
            lo.close()
        if self.world.is_main:
            self.log.line(f"best {self.task.selection} {state.best_value:.4f} at epoch {state.best_epoch:03d}: "
                          f"{self.ckpt.path('best')}")
            with open(os.path.join(cfg.save_dir, f"{self.task.prefix}_summary.json"), "w") as f:
                json.dump(summary, f, indent=1, default=float)
        return summary

    def close(self) -> None:
        self.train_loader.close()
        for lo in self.val_loaders.values():
            lo.close()
        self.log.close()


def train(task_cls, cfg: TrainConfig) -> dict:
    """Run a stage's training to the end (or to max_steps, or to a preemption signal). Returns the summary."""
    world, device = init_distributed(cfg.device)
    try:
        with preemption_signals() as preempted:
            run = Run(task_cls, cfg, world, device, preempted)
            try:
                run.restore()
                summary = run.fit()
            finally:
                run.close()
                del run  # its DDP wrapper holds the process group: let it go before the group does
        # every rank past its last collective before any destroys the group (a gloo rank tearing its
        # group down while the other still finishes its epoch was seen to abort at exit: SIGABRT,
        # "terminate called without an active exception", once in this suite's runs)
        barrier()
        return summary
    finally:
        gc.collect()
        close_distributed()
