"""The one training loop every stage shares (CLAP, SLM, MELD).

A stage supplies a `Task`: its model, `loss(model, batch)`, per-row outputs for
evaluation, its metrics and selection metric, its checkpoint prefix. The loop does
the rest, the same for all: distributed init (NCCL on GPU, gloo on CPU), AdamW,
warmup/schedule, optional AMP, gradient clipping, the streaming loader, per-epoch
validation, checkpoints (epoch/best/last, resumable mid-epoch), TensorBoard, progress.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from lake.catalog import ShardSet, open_shard_set
from lake.distributed import World, close_distributed, init_distributed
from lake.errors import LakeError
from lake.splits import validation_split
from shards.loader import ShardLoader
from trainers.checkpoint import FORMAT, Checkpointer, load_checkpoint, rng_state, set_rng_state
from trainers.config import TrainConfig


class Task:
    """What a stage plugs into the loop. Subclasses set the class attributes and the methods."""

    stage = ""  # "clap", "slm", "meld": recorded in checkpoints
    prefix = ""  # checkpoint file prefix
    selection = ""  # metric maximised for the best checkpoint
    fields: tuple[str, ...] = ("audio", "text", "label")
    layers: list[str] | None = None  # stored audio layers the loader reads (None: all)

    def __init__(self, cfg: TrainConfig, shards: ShardSet):
        self.cfg, self.shards = cfg, shards

    def build(self) -> torch.nn.Module:
        raise NotImplementedError

    def arch(self) -> dict:
        """What defines the model's shapes; must match to resume."""
        raise NotImplementedError

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def outputs(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Per-row outputs of an evaluation batch (logits, embeddings, labels)."""
        raise NotImplementedError

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def headline(self, metrics: dict) -> str:
        return f"{self.selection} {metrics[self.selection]:.4f}"

    def extra_state(self) -> dict:
        """Anything else a checkpoint must carry for evaluation or the next stage."""
        return {}


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


@torch.no_grad()
def evaluate(task: Task, model: torch.nn.Module, loader: ShardLoader, device, dtype, world: World,
             desc: str = "eval", progress: bool = False) -> dict:
    """Metrics of `model` on the loader's whole split: every row once, gathered from all ranks."""
    was_training = model.training
    model.eval()
    outs: dict[str, list] = defaultdict(list)
    batches = loader
    if progress and world.is_main:
        from tqdm import tqdm

        batches = tqdm(loader, desc=desc, leave=False, disable=None, file=sys.stderr)
    for batch in batches:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            o = task.outputs(model, batch)
        for k, v in o.items():
            outs[k].append(v.float().cpu() if v.is_floating_point() else v.cpu())
        outs["row"].append(batch["row"].cpu())
    local = {k: torch.cat(v).numpy() for k, v in outs.items()}
    if world.distributed:
        import torch.distributed as dist

        parts = [None] * world.world_size
        dist.all_gather_object(parts, local)  # rank chunks are contiguous, in rank order
        parts = [p for p in parts if len(p.get("row", ()))]  # a rank may have had no rows
        local = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    model.train(was_training)
    return task.metrics(local)


def _check_resume(ckpt: dict, task: Task, shards: ShardSet, path: str) -> None:
    if ckpt["arch"] != task.arch():
        diff = [k for k in set(ckpt["arch"]) | set(task.arch()) if ckpt["arch"].get(k) != task.arch().get(k)]
        raise LakeError(f"{path}: the checkpoint's model differs from this one in {', '.join(sorted(diff))}")
    fp = shards.manifest.fingerprint()
    if ckpt["data"]["fingerprint"] != fp:
        raise LakeError(f"{path}: trained on shard set {ckpt['data']['name']!r} (fingerprint "
                        f"{ckpt['data']['fingerprint']}), but --data-root is {shards.name!r} ({fp}); "
                        "resume on the same data")


def train(task_cls, cfg: TrainConfig) -> dict:
    """Run a stage's training to the end (or to max_steps). Returns the final summary."""
    world, device = init_distributed(cfg.device)
    try:
        return _train(task_cls, cfg, world, device)
    finally:
        close_distributed()


def _train(task_cls, cfg: TrainConfig, world: World, device: torch.device) -> dict:
    main = world.is_main
    log = (lambda *a: print(*a, flush=True)) if main else (lambda *a: None)
    shards = open_shard_set(cfg.data_root)
    val_split = validation_split(shards.manifest.splits)
    torch.manual_seed(cfg.seed)  # the same init on every rank
    task = task_cls(cfg, shards)
    ckpt = Checkpointer(cfg.save_dir, task.prefix, cfg.keep_epochs, enabled=main)
    resume_path = ckpt.resolve_resume(cfg.resume, cfg.checkpoint) if cfg.resume else None
    model = task.build().to(device)
    raw = model
    params = [p for p in raw.parameters() if p.requires_grad]
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    torch.manual_seed(cfg.seed + 1000 * world.rank)  # dropout differs across ranks
    dtype = amp_dtype(cfg.amp, device)
    train_loader = ShardLoader(shards, "train", cfg.batch_size, world.rank, world.world_size, training=True,
                               seed=cfg.seed, num_workers=cfg.num_workers, layers=task.layers, fields=task.fields,
                               pin_memory=device.type == "cuda")
    val_loader = ShardLoader(shards, val_split, cfg.eval_batch_size, world.rank, world.world_size, training=False,
                             num_workers=min(cfg.num_workers, 2), layers=task.layers, fields=task.fields,
                             pin_memory=device.type == "cuda")
    steps_per_epoch = len(train_loader)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, cfg.epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, best, best_epoch, metrics = 0, -math.inf, -1, {}

    if resume_path:
        path = resume_path
        state = load_checkpoint(path, task.stage)
        _check_resume(state, task, shards, path)
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"][world.rank] if isinstance(state["rng"], list) else state["rng"])
        step, metrics = state["step"], state.get("metrics", {})
        best, best_epoch = state["best"]["value"], state["best"]["epoch"]
        old = state["config"]
        if cfg.schedule != "constant" and (old.get("epochs"), old.get("schedule")) != (cfg.epochs, cfg.schedule):
            log(f"warning: the {cfg.schedule} schedule now spans {cfg.epochs} epochs (was {old.get('epochs')} "
                f"{old.get('schedule')}); the learning rate continues on the new curve")
        log(f"resumed {path}: epoch {train_loader.epoch}, batch {train_loader.consumed}/{steps_per_epoch}, step {step}")
    elif cfg.checkpoint:
        state = load_checkpoint(cfg.checkpoint, task.stage)
        if state["arch"] != task.arch():
            raise LakeError(f"{cfg.checkpoint}: its model shape differs from this run's ({state['arch']})")
        raw.load_state_dict(state["model"])
        log(f"initialised the weights from {cfg.checkpoint} (fresh optimizer)")

    tb = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(os.path.join(cfg.save_dir, "tb", task.prefix))
        log(f"{task.stage}: {shards.name} ({shards.fingerprint}), train {train_loader.num_rows} rows, "
            f"{val_split} {val_loader.num_rows} rows; {steps_per_epoch} steps/epoch x {cfg.epochs} epochs; "
            f"{world.world_size} rank(s) on {device}; {sum(p.numel() for p in params):,} trainable parameters")

    def snapshot(epoch_metrics: dict) -> dict:
        rng = rng_state()
        if world.distributed:
            import torch.distributed as dist

            gathered = [None] * world.world_size
            dist.all_gather_object(gathered, rng)
            rng = gathered
        return {"format": FORMAT, "stage": task.stage, "model": raw.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "loader": train_loader.state_dict(), "rng": rng,
                "epoch": train_loader.epoch, "step": step, "best": {"metric": task.selection, "value": best,
                                                                     "epoch": best_epoch},
                "config": asdict(cfg), "arch": task.arch(), "metrics": epoch_metrics,
                "data": {"name": shards.name, "root": shards.root, "fingerprint": shards.fingerprint,
                         "encoders": shards.manifest.encoders, "taxonomy": shards.taxonomy,
                         "audio_layers": shards.manifest.audio_layers},
                **task.extra_state()}

    start_epoch = train_loader.epoch
    if train_loader.consumed >= steps_per_epoch:  # the checkpoint was taken at an epoch's end
        start_epoch += 1
        train_loader.set_epoch(start_epoch)
    elif not cfg.resume:
        train_loader.set_epoch(start_epoch)
    model.train()
    t_run = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        if epoch != start_epoch:
            train_loader.set_epoch(epoch)
        t0, losses = time.time(), []
        batches = train_loader
        if main and cfg.progress:
            from tqdm import tqdm

            batches = tqdm(train_loader, desc=f"epoch {epoch}", total=steps_per_epoch,
                           initial=train_loader.consumed, leave=False, disable=None, file=sys.stderr)
        for batch in batches:
            batch = to_device(batch, device)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss, logs = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            if step % cfg.log_every == 0 or train_loader.consumed == steps_per_epoch:
                value = loss.item()  # a device sync, only every log_every steps
                losses.append(value)
                if tb is not None:
                    tb.add_scalar("train/loss", value, step)
                    tb.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                    for k, v in logs.items():
                        tb.add_scalar(f"train/{k}", v, step)
                if hasattr(batches, "set_postfix"):
                    batches.set_postfix(loss=f"{value:.4f}")
            if cfg.max_steps and step >= cfg.max_steps:
                log(f"stopped at step {step} (--max-steps), without saving")
                return {"stopped_at_step": step}
            if cfg.save_every_steps and step % cfg.save_every_steps == 0 and train_loader.consumed < steps_per_epoch:
                state = snapshot(metrics)
                ckpt.save_last(state)
        metrics = evaluate(task, raw, val_loader, device, dtype, world, desc=f"{val_split} {epoch}", progress=cfg.progress)
        value = metrics[task.selection]
        is_best = value > best
        if is_best:
            best, best_epoch = value, epoch
        state = snapshot(metrics)
        ckpt.save_epoch(state, epoch, is_best)
        if tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    tb.add_scalar(f"{val_split}/{k}", v, epoch)
            tb.flush()
        train_loss = f"{np.mean(losses):.4f}" if losses else "-"
        log(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss}  {val_split} {task.headline(metrics)}  "
            f"lr {scheduler.get_last_lr()[0]:.2e}  {time.time() - t0:.1f} s" + ("  *best*" if is_best else ""))
    summary = {"stage": task.stage, "best": {"metric": task.selection, "value": best, "epoch": best_epoch},
               "best_checkpoint": ckpt.path("best"), "last_checkpoint": ckpt.path("last"),
               "val": metrics, "seconds": round(time.time() - t_run, 2)}
    if cfg.test_at_end and "test" in shards.manifest.splits and best_epoch >= 0:
        from lake.distributed import barrier

        barrier()  # rank 0 has written the best checkpoint
        raw.load_state_dict(load_checkpoint(ckpt.path("best"), task.stage)["model"])
        test_loader = ShardLoader(shards, "test", cfg.eval_batch_size, world.rank, world.world_size,
                                  training=False, num_workers=min(cfg.num_workers, 2), layers=task.layers,
                                  fields=task.fields)
        summary["test"] = evaluate(task, raw, test_loader, device, dtype, world, desc="test", progress=cfg.progress)
        log(f"test (best checkpoint, epoch {best_epoch + 1}): {task.headline(summary['test'])}")
    if tb is not None:
        tb.close()
    if main:
        log(f"best {task.selection} {best:.4f} at epoch {best_epoch + 1}: {ckpt.path('best')}")
        with open(os.path.join(cfg.save_dir, f"{task.prefix}_summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=float)
    return summary
