"""Checkpoints: named stateful parts written together by rank 0, restored on every rank.

    {"format", "stage", "arch", "config", "data",                     what the run is
     "model", "optimizer", "scheduler", "scaler", "loader", "rng",    its stateful parts
     "train": {"epoch", "step", "best", "metrics"}, ...task extras}

Each part is an object with `state_dict()` / `load_state_dict()` (torchtitan's checkpointer
pattern): resuming loads every part strictly, after checking that the stage, the model's
`arch` (dims, class count, taxonomy) and the data fingerprint are the checkpoint's.

Files are read here and nowhere else, with `torch.load(weights_only=True)`: tensors and plain
containers only, so a downloaded checkpoint cannot run code (numpy's RNG state is stored as a tensor
for that). This module knows this project's format only; the other layouts a command accepts (the
exported projectors, the previous tooling's files) are turned into it by their stage
(`trainers.models` is the one door from any file to a trained model).

Files per stage prefix P: `P_epoch{EEE}.pt` after each epoch (0-based, the newest
`keep_epochs` kept), `P_best.pt` (best by the stage's selection metric) and `P_last.pt`
(the latest state, also written every `save_every_steps` and on preemption).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import random
import re
import shutil
from typing import Any

import numpy as np
import torch

from lake.errors import LakeError, about
from lake.setlock import pid_alive
from lake.storage import write_bytes_atomic

FORMAT = "emolake-checkpoint-v2"
_V1 = "emolake-checkpoint-v1"  # epoch/step/best/metrics at the top level; read and upgraded


# -- reading files ---------------------------------------------------------------------------

def _safe_globals() -> list:
    """argparse.Namespace (the reference tooling's `config`); numpy arrays and scalars (v1 checkpoints'
    RNG states). Rebuilding these runs no code of the file's choosing."""
    core = np._core if hasattr(np, "_core") else np.core
    return [argparse.Namespace, core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype,
            *[getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]]


def _first_line(e: Exception) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip() and not x.startswith("Weights only load failed")]
    return next((x for x in lines if "Unsupported" in x), lines[0] if lines else type(e).__name__)[:200]


_ZIP, _PICKLE = b"PK\x03\x04", 0x80  # torch.save's zip archive; a legacy pickle (protocol 2 and later)


def read_checkpoint_file(path: str) -> Any:
    """`torch.load` of a file a user passes, as data only (weights_only, with the allowlist above);
    every failure is one LakeError. A file that would need other Python objects is refused."""
    if not os.path.exists(path):
        raise LakeError(f"{path}: no such file (a checkpoint was expected here)")
    if os.path.isdir(path):
        raise LakeError(f"{path}: a directory, not a checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] != _ZIP and (not head or head[0] != _PICKLE):
        raise LakeError(f"{path}: not a checkpoint (a PyTorch file is a zip archive or a pickle; this one starts "
                        f"with {head!r})")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.findall(r"GLOBAL ([\w.]+)", str(e))
        what = f"found GLOBAL {found[0]}" if found else "found " + _first_line(e)
        raise LakeError(f"{path}: contains Python objects other than tensors and plain containers ({what}); refusing "
                        "to run code from a downloaded file") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
        raise LakeError(f"{path}: not a readable checkpoint ({type(e).__name__}: {_first_line(e)})") from None


def _upgrade(ckpt: dict) -> dict:
    if ckpt.get("format") == _V1:
        ckpt = dict(ckpt)
        ckpt["train"] = {k: ckpt.pop(k) for k in ("epoch", "step", "best", "metrics") if k in ckpt}
        ckpt["format"] = FORMAT
    return ckpt


def load_checkpoint(path: str, stage: str | None = None) -> dict:
    """A checkpoint of this project's trainers (on CPU); a wrong file gets one clear message."""
    return validate_checkpoint(read_checkpoint_file(path), path, stage)


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded file is in this project's checkpoint format (any version)."""
    return isinstance(obj, dict) and obj.get("format") in (FORMAT, _V1)


def validate_checkpoint(ckpt, path: str, stage: str | None = None) -> dict:
    """`ckpt` (a loaded file) as this project's checkpoint of `stage`, upgraded to the current format."""
    if not is_checkpoint(ckpt):
        raise LakeError(f"{path}: not a checkpoint of this project's trainers")
    if stage is not None and ckpt.get("stage") != stage:
        raise LakeError(f"{path}: a {ckpt.get('stage')} checkpoint, but a {stage} checkpoint is needed here")
    return _upgrade(ckpt)


def stage_checkpoint(stage: str, arch: dict, config: dict, data: dict, model: dict, train: dict, **rest) -> dict:
    """The checkpoint dict, spelled in this one place: what the run is (stage, arch, config, data), the model's
    weights, the loop's counters (`train`), and the rest (optimizer, loader, RNG states; a stage's extras)."""
    return {"format": FORMAT, "stage": stage, "arch": arch, "config": config, "data": data, "model": model,
            "train": train, **rest}


def save_atomic(obj: dict, path: str) -> None:
    """Serialise in memory, then write the file as every other file here is written (lake.storage: a temporary
    name, fsync, rename): a full disk is an OSError naming the file, where torch.save writing to the disk itself
    fails with "RuntimeError ... unexpected pos", and the earlier file stays whole."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getbuffer())


def remove_stale_temporaries(save_dir: str, prefix: str) -> list[str]:
    """Temporary files of checkpoint writes a killed run left (`PREFIX_*.pt.tmp-PID`, their process gone)."""
    gone = []
    for name in os.listdir(save_dir) if os.path.isdir(save_dir) else ():
        m = re.fullmatch(re.escape(prefix) + r"_.*\.pt\.tmp-(\d+)", name)
        if m and not pid_alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(save_dir, name))
                gone.append(name)
    return gone


# -- the RNG part ------------------------------------------------------------------------------

def rng_state() -> dict:
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGPart:
    """Every rank's RNG states (dropout differs across ranks): gathered to rank 0 on save."""

    def __init__(self, world):
        self.world = world

    def state_dict(self) -> list:
        local = rng_state()
        if not self.world.distributed:
            return [local]
        import torch.distributed as dist

        gathered = [None] * self.world.world_size
        dist.all_gather_object(gathered, local)  # a collective: every rank calls state_dict()
        return gathered

    def load_state_dict(self, state) -> None:
        """Each rank its own states; resumed on another number of ranks, every rank starts from rank 0's and
        draws its own torch stream from it (deterministic, but not the draws an unchanged world would make)."""
        if not isinstance(state, list):
            return set_rng_state(state)
        if len(state) == self.world.world_size:
            return set_rng_state(state[self.world.rank])
        set_rng_state(state[0])
        torch.manual_seed(int(torch.randint(2**62, ())) + 1000 * self.world.rank)


# -- the checkpointer ------------------------------------------------------------------------

def _copy(src: str, dst: str) -> None:
    """dst becomes a copy of src (a hard link where the filesystem allows), atomically."""
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        with about(dst):
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk: the earlier file stays, and so must the first error
            os.remove(tmp)
        raise


class Checkpointer:
    """Saves `parts` (name -> object with state_dict/load_state_dict) plus `meta()` (what the run is).

    `state()` is collective (the RNG part gathers from every rank): every rank calls `save_*`,
    only the one with `enabled` writes.
    """

    def __init__(self, save_dir: str, prefix: str, parts: dict, meta, keep_epochs: int = 3, enabled: bool = True):
        self.save_dir, self.prefix, self.parts, self.meta = save_dir, prefix, parts, meta
        self.keep_epochs, self.enabled = keep_epochs, enabled
        if enabled:
            remove_stale_temporaries(save_dir, prefix)

    def path(self, which: str | int) -> str:
        name = f"{self.prefix}_epoch{which:03d}.pt" if isinstance(which, int) else f"{self.prefix}_{which}.pt"
        return os.path.join(self.save_dir, name)

    def state(self) -> dict:
        return stage_checkpoint(**self.meta(), **{name: part.state_dict() for name, part in self.parts.items()})

    def save_last(self) -> None:
        state = self.state()
        if self.enabled:
            save_atomic(state, self.path("last"))

    def save_epoch(self, epoch: int, is_best: bool) -> None:
        state = self.state()
        if not self.enabled:
            return
        path = self.path(epoch)
        save_atomic(state, path)
        if is_best:  # best before last: a kill in between must not leave `last` naming a best that is not on disk
            _copy(path, self.path("best"))
        _copy(path, self.path("last"))
        if self.keep_epochs > 0:
            # only this run's older epochs: files of a later-numbered earlier run in the same dir stay
            pattern = re.compile(re.escape(self.prefix) + r"_epoch(\d{3,})\.pt$")
            for name in os.listdir(self.save_dir):
                m = pattern.match(name)
                if m and int(m.group(1)) <= epoch - self.keep_epochs:
                    os.remove(os.path.join(self.save_dir, name))

    def restore(self, ckpt: dict, path: str, arch: dict, fingerprint: str | None, only: tuple[str, ...] = ()) -> dict:
        """Load the parts from the checkpoint `ckpt` read from `path` (all, or `only` these) after checking what
        the run is."""
        check_arch(ckpt, arch, path)
        if fingerprint is not None and ckpt["data"]["fingerprint"] != fingerprint:
            raise LakeError(f"{path}: trained on shard set {ckpt['data']['name']!r} (fingerprint "
                            f"{ckpt['data']['fingerprint']}), but --data-root has fingerprint {fingerprint}; "
                            "resume on the same data")
        for name, part in self.parts.items():
            if not only or name in only:
                part.load_state_dict(ckpt[name])
        return ckpt


def resume_path(resume: str, checkpoint: str, save_dir: str, prefix: str) -> str | None:
    """The checkpoint `--resume` continues: --resume PATH, else --checkpoint, else SAVE_DIR/PREFIX_last.pt."""
    if not resume:
        return None
    if resume != "last":
        return resume
    if checkpoint:
        return checkpoint
    path = os.path.join(save_dir, f"{prefix}_last.pt")
    if not os.path.exists(path):
        raise LakeError(f"--resume: no {os.path.basename(path)} in {save_dir}; pass the checkpoint to continue")
    return path


def check_arch(ckpt: dict, arch: dict, path: str) -> None:
    if ckpt["arch"] != arch:
        diff = sorted(k for k in set(ckpt["arch"]) | set(arch) if ckpt["arch"].get(k) != arch.get(k))
        raise LakeError(f"{path}: the checkpoint's model differs from this one in {', '.join(diff)}")
