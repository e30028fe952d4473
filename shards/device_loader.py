"""A split held on the training device: batches gathered there, no host-to-device copy per batch.

The small heads (SLM, MELD, CLAP on stored embeddings) read a few KB a row, so a whole split
fits on a training GPU: 1.2M rows x (768 + 768) x 2 bytes = 3.7 GB. `DeviceLoader` reads
the split's needed fields once, through the streaming loader's own gather, into one tensor
per field on `device`; each batch is then gathered there (`index_select` on CUDA, numpy's
take on the CPU), so an epoch moves nothing from the host but the epoch's row order.

It is a drop-in for a `ShardLoader` (it wraps one): the same batch dicts (audio [b, L, Da],
text, caption, label int64, row int64; all on `device`, `row` too), the same row order (the plan of
shards.partition, each batch in ascending row ids), `__len__`, `set_epoch`, and the
wrapped loader's own `state_dict` / `load_state_dict`, so a checkpoint written by either
resumes with the other.

    train = DeviceLoader(ShardLoader(shards, "train", 512, rank, world, seed=seed, fields=...), device)
    train = DeviceLoader.of(shards, "train", 512, device, rank=rank, world=world, seed=seed, fields=...)
    if DeviceLoader.fits(loader, device): ...    # its fields take at most `share` of the device's memory
"""

from __future__ import annotations

import os

import numpy as np
import torch

from lake.catalog import ShardSet
from shards.loader import ShardLoader, _Gather
from shards.partition import eval_batches

DEFAULT_SHARE = 0.5
"""Share of the device's memory the split may take when a caller chooses automatically (`fits`)."""


def split_bytes(loader: ShardLoader) -> int:
    """Bytes the loader's fields take as tensors: every row of the split (labels as int64)."""
    m = loader.shards.manifest
    row = 0
    for f in loader.fields:
        if f == "audio":
            row += 2 * len(loader.layers) * m.audio_dim
        elif f in ("text", "caption"):
            row += 2 * m.text_dim
        elif f == "label":
            row += 8
    return row * loader.num_rows


def device_memory(device: torch.device) -> int:
    """Total memory of `device` in bytes (the machine's RAM for the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class DeviceLoader:
    """Batches of one split gathered on `device`; interface, order and state of the wrapped ShardLoader."""

    def __init__(self, loader: ShardLoader, device: torch.device | str):
        self.loader, self.device = loader, torch.device(device)
        self.data = self._load()

    @classmethod
    def of(cls, shards: ShardSet, split: str, batch_size: int, device: torch.device | str, **kwargs) -> "DeviceLoader":
        """Build the ShardLoader (any of its arguments in `kwargs`) and hold its split on `device`."""
        return cls(ShardLoader(shards, split, batch_size, **kwargs), device)

    @staticmethod
    def fits(loader: ShardLoader, device: torch.device | str, share: float = DEFAULT_SHARE) -> bool:
        """Whether the loader's fields take at most `share` of the device's memory."""
        return split_bytes(loader) <= share * device_memory(device)

    def _load(self, chunk_bytes: int = 64 << 20) -> dict[str, torch.Tensor]:
        """Every row of the split (of every set), in row-id order, read with the streaming gather ~64 MB at a
        time (batch-sized pieces took 5x longer: per-call costs)."""
        lo = self.loader
        chunk = max(1, chunk_bytes * lo.num_rows // max(1, split_bytes(lo)))
        data: dict[str, torch.Tensor] = {}
        for batch in _Gather(lo)(eval_batches(lo.num_rows, 0, 1, chunk)):
            rows = batch.pop("row")
            first, last = int(rows[0]), int(rows[-1]) + 1
            for k, v in batch.items():
                v = torch.as_tensor(v)
                if k not in data:
                    data[k] = torch.empty((lo.num_rows,) + tuple(v.shape[1:]), dtype=v.dtype, device=self.device)
                data[k][first:last].copy_(v)
        return data

    # -- the ShardLoader interface ---------------------------------------------------
    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def close(self) -> None:
        self.loader.close()
        self.data = {}

    epoch = property(lambda self: self.loader.epoch)
    consumed = property(lambda self: self.loader.consumed)
    num_rows = property(lambda self: self.loader.num_rows)
    training = property(lambda self: self.loader.training)

    def _plan(self) -> tuple[np.ndarray, list[int]]:
        """The epoch's row ids, concatenated, and where each batch starts (then the end)."""
        batches = self.loader.batches()
        bounds = np.concatenate([[0], np.cumsum([len(b) for b in batches])]).astype(int).tolist()
        return (np.concatenate(batches) if batches else np.empty(0, np.int64)), bounds

    def __iter__(self):
        """As ShardLoader's: the rest of the epoch (training), or the whole split (evaluation)."""
        lo = self.loader
        if not lo.training:
            lo.consumed = 0
        if lo.consumed >= len(lo):
            return
        rows, bounds = self._plan()
        on_cpu = self.device.type == "cpu"
        if not on_cpu:
            rows = torch.from_numpy(rows).to(self.device)  # one copy an epoch
        for j in range(lo.consumed, len(bounds) - 1):
            idx = rows[bounds[j]:bounds[j + 1]]
            batch = self._take_cpu(idx) if on_cpu else {k: v.index_select(0, idx) for k, v in self.data.items()}
            batch["row"] = torch.from_numpy(idx) if on_cpu else idx
            lo.consumed += 1
            yield batch

    def _take_cpu(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """On the CPU, numpy's take: torch's CPU index_select copies fp16 rows element by element
        (measured here: ~1.1M rows/s at 3 KB rows on one thread, several times slower than take)."""
        # mode="clip": the ids are in range, and "raise" would copy each output twice (shards.loader._Gather)
        return {k: torch.from_numpy(v.numpy().take(idx, axis=0, mode="clip")) for k, v in self.data.items()}
