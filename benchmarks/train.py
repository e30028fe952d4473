"""Training throughput: full optimizer steps of each stage, streaming and with the split on the device.

    uv run python -m benchmarks.train [--rows 200000] [--stages clap,slm,meld] [--paths streaming,device]
                                      [--steps N] [--device auto|cpu|cuda] [--threads T] [--keep DIR]

A synthetic set of --rows train rows (plus a small val split) is written once by the
project's writer (`shards.writer.SetWriter`, blocks of 1024 rows, shards of 16,384; the
reference's widths: audio 1 layer x 768 + text 768, fp16, 36 classes). Each stage is then
built by the trainers' own `trainers.loop.Run` (its Task, model, loss, AdamW, schedule,
gradient clipping and loaders; bf16 autocast on CUDA, as `--amp auto` does) at its
reference batch (CLAP 1024, SLM 512, MELD 128: a head on the frozen SLM, here on the same
set) and timed over --steps optimizer steps after --warmup, twice: streaming (`ShardLoader`,
num_workers 0, pinned batches on CUDA) and on the device (`--data-on-device on`:
`DeviceLoader`). The SLM reads CLAP projectors exported from the CLAP run, MELD the SLM's
last checkpoint: each stage's inputs come from the stage before, as in a real run.

Per step: the time to get the next batch onto the device (`next(batches)` + the copy;
"loader wait") and the step itself (`Run._step`: forward, loss, backward, clipping, AdamW,
schedule), on CUDA each closed by `torch.cuda.synchronize()`. Reported: rows/s, step time
(mean and p50, loader wait included), the loader-wait share of the time, and the FLOPs of a
step (torch's FlopCounterMode on the first warm-up step) over its mean time. On CUDA also
rows/s "as the loop runs": the same steps with no synchronisation but one at the end, so
the loader's work overlaps the GPU's queue. The projection: hours of training steps for the
reference SLM schedule (150 epochs x 1.2M rows) at the measured rate (validation passes,
checkpoints and start-up not included). Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from benchmarks.loader import BLOCK, DIM, bench_manifest, make_block
from lake.cliargs import at_least, bounded

BATCH = {"clap": 1024, "slm": 512, "meld": 128}
REFERENCE_SLM = {"epochs": 150, "rows": 1_200_000}
PATHS = {"streaming": "off", "device": "on"}


def write_set(root: str, rows: int, val_rows: int = 4096) -> str:
    """The benchmark set under root/set (train + val), or the one an earlier run with the same sizes left there."""
    from shards.writer import SetWriter

    out, marker = os.path.join(root, "set"), os.path.join(root, "set.json")
    wanted = {"rows": rows, "val_rows": val_rows, "dim": DIM}
    if os.path.exists(marker) and json.load(open(marker)) == wanted:
        return out
    shutil.rmtree(out, ignore_errors=True)
    writer = SetWriter(out, bench_manifest("bench-train"), rows_per_shard=16384)
    for split, n, seed in (("train", rows, 0), ("val", val_rows, 1)):
        for start in range(0, n, BLOCK):
            block = make_block(start, n, 1, seed)
            block["meta"]["keys"] = [f"{split}-{k}" for k in block["meta"]["keys"]]
            writer.add_block(split, block)
    writer.close()
    with open(marker, "w") as f:
        json.dump(wanted, f)
    return out


def build(stage: str, data: str, work: str, device: str, data_on_device: str):
    """`trainers.loop.Run` of one stage with its reference batch; the inputs it needs from earlier stages made first."""
    from lake.distributed import World
    from lake.signals import PreemptionFlag
    from trainers.clap import ClapConfig, ClapTask
    from trainers.loop import Run
    from trainers.meld import MeldConfig, MeldTask
    from trainers.slm import SlmConfig, SlmTask

    import torch

    common = dict(data_root=data, save_dir=os.path.join(work, stage), batch_size=BATCH[stage], device=device,
                  data_on_device=data_on_device, num_workers=0, progress=False, seed=0)
    if stage == "clap":
        task, cfg = ClapTask, ClapConfig(**common, lr=5e-4, warmup_steps=100, schedule="cosine", epochs=20)
    elif stage == "slm":
        task, cfg = SlmTask, SlmConfig(**common, clap_ckpt=inputs("slm", data, work, device), lr=1e-4,
                                       grad_clip=0.0, epochs=150)
    else:
        task, cfg = MeldTask, MeldConfig(**common, stage3_ckpt=inputs("meld", data, work, device), lr=1e-3,
                                         epochs=60)
    return Run(task, cfg, World(), torch.device(device), PreemptionFlag())


def inputs(stage: str, data: str, work: str, device: str) -> str:
    """What a stage reads from the one before: CLAP projectors for the SLM, an SLM checkpoint for MELD.
    From the earlier stage's last state: its benchmark run's, or a one-step run of it made here."""
    from trainers.loop import to_device

    before = {"slm": "clap", "meld": "slm"}[stage]
    last = os.path.join(work, before, {"clap": "clap", "slm": "slm_stage3"}[before] + "_last.pt")
    if not os.path.exists(last):
        run = build(before, data, work, device, "off")
        try:
            run.model.train()
            run.train_loader.set_epoch(0)
            run._step(to_device(next(iter(run.train_loader)), run.device))
            run.ckpt.save_last()
        finally:
            run.close()
    if stage == "meld":
        return last
    from trainers.clap import export_projectors

    out = os.path.join(work, "clap_projectors.pt")
    export_projectors(last, out)
    return out


def batches(loader):
    """The loader's batches across epoch ends, as the loop sees them."""
    while True:
        yield from loader
        loader.set_epoch(loader.epoch + 1)


def time_steps(run, steps: int, warmup: int) -> dict:
    """Loader wait and step time of `steps` optimizer steps (synchronised each on CUDA), after `warmup`;
    on CUDA also the rows/s of the same number of unsynchronised steps."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from trainers.loop import to_device

    cuda = run.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    run.model.train()
    run.train_loader.set_epoch(0)
    it = batches(run.train_loader)
    waits, totals, rows = [], [], 0
    flops = 0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = to_device(next(it), run.device)
        sync()
        t1 = time.perf_counter()
        if i == 0:  # the first warm-up step: its FLOPs counted (forward, backward, optimizer), untimed
            with FlopCounterMode(display=False) as counter:
                run._step(batch)
            flops = counter.get_total_flops()
        else:
            run._step(batch)
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            waits.append(t1 - t0)
            totals.append(t2 - t0)
            rows += len(batch["row"])
    total = float(np.sum(totals))
    out = {"steps": steps, "rows_per_s": rows / total, "step_ms_mean": 1000 * total / steps,
           "step_ms_p50": 1000 * float(np.median(totals)), "loader_wait_share": float(np.sum(waits)) / total,
           "loader_wait_ms_mean": 1000 * float(np.mean(waits)), "gflop_per_step": flops / 1e9,
           "gflop_per_s": flops * steps / total / 1e9}
    if cuda:
        rows = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = to_device(next(it), run.device)
            run._step(batch)
            rows += len(batch["row"])
        sync()
        out["rows_per_s_pipelined"] = rows / (time.perf_counter() - t0)
    return out


def measure(stage: str, data: str, work: str, device: str, path: str, steps: int, warmup: int) -> dict:
    """One stage on one path ("streaming" or "device"): its Run built (timed: on the device path this
    includes holding the splits there), its steps timed, its last state saved for the next stage."""
    t0 = time.perf_counter()
    run = build(stage, data, work, device, PATHS[path])
    setup_s = time.perf_counter() - t0
    try:
        figures = time_steps(run, steps, warmup)
        figures.update(setup_s=setup_s, batch_size=BATCH[stage], loader=type(run.train_loader).__name__,
                       amp=str(run.dtype).replace("torch.", "") if run.dtype else "off",
                       trainable_params=sum(p.numel() for p in run.params))
        run.ckpt.save_last()
        return figures
    finally:
        run.close()


def projection(rows_per_s: float) -> float:
    """Hours of SLM training steps for the reference schedule at this rate."""
    return REFERENCE_SLM["epochs"] * REFERENCE_SLM["rows"] / rows_per_s / 3600


def best_rate(f: dict) -> float:
    return f.get("rows_per_s_pipelined", f["rows_per_s"])


def print_table(results: dict) -> None:
    pipelined = any("rows_per_s_pipelined" in f for s in results.values() for f in s.values())
    print("\n| stage (batch) | path | rows/s | step ms mean | p50 | loader wait | GFLOP/s | set-up s |"
          + (" rows/s as the loop runs |" if pipelined else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if pipelined else ""))
    for stage, paths in results.items():
        for path, f in paths.items():
            print(f"| {stage} ({f['batch_size']}) | {path} ({f['loader']}) | {f['rows_per_s']:,.0f} | "
                  f"{f['step_ms_mean']:.2f} | {f['step_ms_p50']:.2f} | {f['loader_wait_share']:.1%} | "
                  f"{f['gflop_per_s']:,.0f} | {f['setup_s']:.1f} |" + (f" {f['rows_per_s_pipelined']:,.0f} |" if pipelined else ""))
    for path, f in results.get("slm", {}).items():
        print(f"projection, {path}: the reference SLM schedule ({REFERENCE_SLM['epochs']} epochs x "
              f"{REFERENCE_SLM['rows']:,} rows) at {best_rate(f):,.0f} rows/s = {projection(best_rate(f)):.2f} h "
              "of training steps")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=bounded(int, at_least(1)), default=200_000, help="train rows of the synthetic set (default: 200000)")
    p.add_argument("--stages", default="clap,slm,meld", help="stages to time, of clap,slm,meld (default: all)")
    p.add_argument("--paths", default="streaming,device", help="loader paths, of streaming,device (default: both)")
    p.add_argument("--steps", type=bounded(int, at_least(1)), help="timed steps per stage and path (default: 100 on the CPU, 500 on CUDA)")
    p.add_argument("--warmup", type=bounded(int, at_least(1)), default=5, help="untimed steps first, the first one's FLOPs counted "
                                                         "(default: 5)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if present")
    p.add_argument("--threads", type=bounded(int, at_least(1)), help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--keep", help="write the set under this directory and keep it; a later run with the same directory "
                                  "and --rows reads it again (default: a temporary one)")
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    paths = [s for s in args.paths.split(",") if s]
    if not stages or set(stages) - set(BATCH):
        p.error(f"--stages: choose from {','.join(BATCH)} (got {args.stages!r})")
    if not paths or set(paths) - set(PATHS):
        p.error(f"--paths: choose from {','.join(PATHS)} (got {args.paths!r})")
    if args.rows < max(BATCH[s] for s in stages):
        p.error(f"--rows {args.rows}: fewer than one batch of the stages asked for")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        p.exit(2, "error: --device cuda, but no CUDA GPU is visible to PyTorch here; use --device cpu\n")
    steps = args.steps or (500 if device == "cuda" else 100)
    base = args.keep or tempfile.mkdtemp(prefix="bench-train-")
    work = tempfile.mkdtemp(prefix="work-", dir=base)  # checkpoints of this run: never reused
    load_before = os.getloadavg()
    try:
        t0 = time.perf_counter()
        data = write_set(base, args.rows)
        print(f"set: {args.rows:,} train rows (audio 1 x {DIM} + text {DIM}, fp16) at {data} "
              f"(written or found in {time.perf_counter() - t0:.0f} s); {steps} timed steps per stage and path "
              f"after {args.warmup} on {device}")
        results: dict[str, dict] = {}
        for stage in stages:
            results[stage] = {}
            for path in paths:
                f = results[stage][path] = measure(stage, data, work, device, path, steps, args.warmup)
                print(f"{stage} {path}: {f['rows_per_s']:,.0f} rows/s, step {f['step_ms_mean']:.2f} ms "
                      f"(p50 {f['step_ms_p50']:.2f}), loader wait {f['loader_wait_share']:.1%}", flush=True)
        print_table(results)
    finally:
        shutil.rmtree(work if args.keep else base, ignore_errors=True)
    out = {"benchmark": "train", "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg_before": load_before,
           "load_avg_after": os.getloadavg(), "machine": platform.machine(), "rows": args.rows, "stages": results}
    if "slm" in results:
        out["projection_hours_reference_slm"] = {k: round(projection(best_rate(f)), 3)
                                                 for k, f in results["slm"].items()}
    print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":
    main()
