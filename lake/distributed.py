"""Ranks and process groups, shared by ingest (one rank per GPU) and the trainers (DDP).

No `RANK` in the environment means one rank: plain `python -m ...` and
`torchrun --nproc_per_node=N -m ...` run the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lake.errors import LakeError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect_world() -> World:
    """Read the torchrun environment once; no RANK means a single process."""
    if "RANK" not in os.environ:
        return World()
    return World(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float | None = None):
    """Set up the process group (if under torchrun) and pick this rank's device.

    Returns (world, device). NCCL when the device is CUDA, gloo on CPU; `backend`
    overrides (ingest uses gloo for its barrier even on GPUs: it only exchanges a
    few bytes). `device`: 'auto' (CUDA if available), 'cuda' or 'cpu'. `timeout_s`: how long a
    collective may wait (torch's default is 30 min; ingest ranks can finish hours apart).
    """
    import torch

    world = detect_world()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LakeError("--device cuda, but no CUDA GPU is visible to PyTorch on this machine; "
                            "use --device cpu (or check CUDA_VISIBLE_DEVICES / the driver)")
        if world.local_rank >= torch.cuda.device_count():
            raise LakeError(f"local rank {world.local_rank} has no GPU: only {torch.cuda.device_count()} visible; "
                            "lower --nproc_per_node")
        torch.cuda.set_device(world.local_rank)
        dev = torch.device("cuda", world.local_rank)
    else:
        dev = torch.device("cpu")
    if world.distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
            kwargs = {"device_id": dev} if chosen == "nccl" else {}
            if timeout_s:
                import datetime

                kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
            dist.init_process_group(backend=chosen, **kwargs)
    return world, dev


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def close_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
