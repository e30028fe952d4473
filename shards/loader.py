"""The streaming loader: DDP-aware, resumable batches of one split of a shard set.

Built from webdataset pipeline stages (`wds.DataPipeline`): a per-worker plan of
batches (shards.partition) -> a gather stage that copies each batch's rows out of
the blocks (memory-mapped views of local shards, or ranged reads of the recorded
byte ranges behind a URL) -> tensors. Rows are never read one tar member at a time.
With num_workers=0 (the trainers' default) the stages run in the caller's process with
no DataLoader between them, and rows are copied straight into the batch's memory
(pinned when training on CUDA). What was tried for speed, kept or not, and why, is in
BENCHMARKS.md (Loader).

Batches are dicts of CPU tensors, pinned when training on CUDA:
    audio [b, L, Da] float16 (the stored layers asked for), text [b, Dt] float16,
    caption [b, Dt] float16 (if asked), label [b] int64, row [b] int64 (global row id
    within the split, in manifest order: the same order as the split's rows in index.parquet).

State (`state_dict`): version, epoch, batches consumed, seed, world size, global batch size,
split and data fingerprint. A resumed run recomputes the epoch's order and skips the batches
already consumed, so it sees exactly the rows an uninterrupted run would have seen next.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import webdataset as wds

from lake import storage
from lake.catalog import ShardSet
from lake.errors import LakeError
from lake.processes import WorkerStart, preload, worker_context
from shards.cache import Prefetcher, cache_for
from shards.mapped import ShardMap
from shards.partition import block_offsets, eval_batches, rank_batches, worker_batches

STATE_VERSION = 1
preload(__name__)  # DataLoader workers unpickle the pipeline's stages (plain data) and run them


class _BatchPlan(torch.utils.data.IterableDataset):
    """First pipeline stage: the row ids of each batch this DataLoader worker must produce.

    The epoch and the first batch come from shared memory, so persistent workers
    (started once, keeping their mapped shards) follow `set_epoch` and resumes.
    """

    def __init__(self, loader: "ShardLoader"):
        self.block_rows, self.training = loader.block_rows, loader.training
        self.seed, self.window, self.rank, self.world = loader.seed, loader.window_blocks, loader.rank, loader.world
        self.local_batch, self.position = loader.local_batch, loader._position

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = int(self.position[0]), int(self.position[1])
        batches = rank_batches(self.block_rows, self.training, self.seed, epoch, self.window, self.rank,
                               self.world, self.local_batch)
        for j in worker_batches(len(batches), start, worker, workers):
            yield batches[j]


class _Gather:
    """Second stage: rows -> numpy arrays, block by block.

    Labels (2 bytes a row) are read once for the whole split and indexed per batch; the
    embeddings are copied block by block, each block's rows being one contiguous slice of
    the batch (a plan's rows come in storage order: the order within a batch does not matter
    to a mean loss, and the `row` tensor says which rows came), straight into the batch's
    memory: pinned when training on CUDA in-process (no second copy by a DataLoader), else a
    fresh array (a pool of reused ones measured no faster: the allocator already recycles them).
    """

    def __init__(self, loader: "ShardLoader"):
        self.paths, self.entries, self.cache = loader.paths, loader.entries, loader.cache
        self.block_table = loader.block_table  # [n_blocks, 2]: shard index, block index in shard
        self.offsets = block_offsets(loader.block_rows)
        self.layer_idx = loader.layer_idx
        stored = len(loader.shards.manifest.audio_layers)
        all_layers = len(self.layer_idx) == stored and (self.layer_idx == np.arange(stored)).all()
        self.audio_parts = 1 if all_layers else len(self.layer_idx)  # views per block: one, or one per layer
        self.members = tuple(f for f in loader.fields if f not in ("row", "label"))
        self.with_label = "label" in loader.fields
        self._labels = None
        self._maps: dict[int, ShardMap] = {}
        self._blocks: OrderedDict = OrderedDict()
        self._local = all(not storage.is_url(p) for p in self.paths)
        self._cache_size = 10**9 if self._local else 2 * loader.window_blocks
        self.pinned = loader.pin_memory and loader.num_workers == 0 and torch.cuda.is_available()
        self._shapes = None

    def _map(self, s: int) -> ShardMap:
        shard = self._maps.get(s)
        if shard is None:
            shard = self._maps[s] = ShardMap(self.paths[s], self.entries[s], members=self.members, cache=self.cache)
        return shard

    def _block(self, b: int) -> list:
        """Views of the block's arrays, one per output part (see `_parts`); never copies."""
        hit = self._blocks.get(b)
        if hit is not None:
            self._blocks.move_to_end(b)
            return hit
        s, i = self.block_table[b]
        block = self._map(int(s)).block(int(i))
        hit = []
        for m in self.members:
            if m == "audio":
                hit += self._audio_views(block[m])
            else:
                hit.append(block[m])
        self._blocks[b] = hit
        if len(self._blocks) > self._cache_size:
            self._blocks.popitem(last=False)
        return hit

    def _audio_views(self, audio: np.ndarray) -> list[np.ndarray]:
        """[n, L, D] -> the selected layers as views: the whole array, or one [n, 1, D] view per layer
        (fancy-indexing layers would copy, and the cache would then hold a copy of the split)."""
        if self.audio_parts == 1 and len(self.layer_idx) == audio.shape[1]:
            return [audio]
        return [audio[:, j:j + 1] for j in self.layer_idx]

    def _outputs(self, arrays: list[np.ndarray], n: int, out: dict) -> list[np.ndarray]:
        """Allocate the batch arrays into `out`; return one destination per block array (see `_block`)."""
        if self._shapes is None:
            self._shapes, k = {}, 0
            for m in self.members:
                trailing = (len(self.layer_idx), arrays[k].shape[2]) if m == "audio" else arrays[k].shape[1:]
                self._shapes[m] = (trailing, arrays[k].dtype)
                k += self.audio_parts if m == "audio" else 1
        dsts = []
        for m, (trailing, dtype) in self._shapes.items():
            if self.pinned:
                out[m] = torch.empty((n,) + trailing, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
                full = out[m].numpy()
            else:
                full = out[m] = np.empty((n,) + trailing, dtype)
            dsts += [full[:, j:j + 1] for j in range(self.audio_parts)] if m == "audio" and self.audio_parts > 1 else [full]
        return dsts

    def labels(self) -> np.ndarray:
        """All labels of the split, read once (label members only: behind a URL, a few bytes per block)."""
        if self._labels is None:
            maps = [ShardMap(p, e, members=("label",), cache=self.cache) for p, e in zip(self.paths, self.entries)]
            parts = [maps[int(s)].block(int(i))["label"] for s, i in self.block_table]
            self._labels = np.concatenate(parts).astype(np.int64)
        return self._labels

    def __call__(self, plans):
        for rows in plans:  # ascending row ids (shards.partition.rank_batches)
            blocks = np.searchsorted(self.offsets, rows, side="right") - 1
            local = rows - self.offsets[blocks]  # row within its block
            cuts = np.flatnonzero(np.diff(blocks)) + 1
            starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(rows)]])
            out: dict = {}
            dsts = None
            block = self._blocks.get if self._local else self._block  # local: every block stays cached
            for start, end, b in zip(starts.tolist(), ends.tolist(), blocks[starts].tolist()):
                arrays = block(b) or self._block(b)
                if dsts is None:
                    dsts = self._outputs(arrays, len(rows), out)
                idx = local[start:end]
                for src, dst in zip(arrays, dsts):
                    # mode "clip" (the ids are in range): with the default "raise", numpy copies `out` to a
                    # temporary and back on every call, tripling the bytes moved. Positional: cheaper to parse.
                    src.take(idx, 0, dst[start:end], "clip")
            if self.with_label:
                out["label"] = self.labels()[rows]
            out["row"] = rows
            if self.pinned:  # the small ones too, so that every copy to the GPU can be asynchronous
                out.update({k: torch.from_numpy(out[k]).pin_memory() for k in ("label", "row") if k in out})
            yield out


def _unwrapped(e: LakeError) -> LakeError:
    """A LakeError from a DataLoader worker (a lost connection, a damaged shard) comes back wrapped in the
    worker's traceback; the user gets the one-line message it had."""
    text = str(e)
    if not text.startswith("Caught LakeError in DataLoader worker"):
        return e
    return LakeError(text.rstrip().rsplit("LakeError: ", 1)[-1])


def _to_torch(batches):
    for b in batches:
        yield {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in b.items()}


class ShardLoader:
    """Batches of one split, for one rank of `world`. `batch_size` is the GLOBAL batch.

    training=True: shuffled per (seed, epoch), full batches only, the same count on
    every rank. training=False: natural order, every row exactly once.
    """

    def __init__(self, shards: ShardSet, split: str, batch_size: int, rank: int = 0, world: int = 1,
                 training: bool = True, seed: int = 0, num_workers: int = 0, layers: list[str] | None = None,
                 fields: tuple[str, ...] = ("audio", "text", "label"), window_blocks: int = 0,
                 pin_memory: bool = False):
        m = shards.manifest
        self.shards, self.split, self.training = shards, split, training
        self.rank, self.world, self.seed, self.num_workers = rank, world, seed, num_workers
        self.pin_memory = pin_memory
        entries = m.shards_of(split)
        if not entries or sum(e.rows for e in entries) == 0:
            have = ", ".join(f"{s} ({d['rows']} rows)" for s, d in m.splits.items()) or "none"
            raise LakeError(f"{shards.root}: split {split!r} is empty or absent (splits: {have})")
        missing = [f for f in fields if f not in m.fields and f != "row"]
        if missing:
            raise LakeError(f"{shards.root}: the set has no {', '.join(missing)} embeddings (fields: {', '.join(m.fields)})")
        if training and batch_size % world:
            raise LakeError(f"--batch-size {batch_size} is the global batch and must divide by the {world} ranks")
        # evaluation needs no equal batches (no collective per batch): round the per-rank batch up
        self.batch_size, self.local_batch = batch_size, -(-batch_size // world)
        self.fields = tuple(fields)
        names = m.audio_layers
        layers = layers or names
        unknown = [x for x in layers if x not in names]
        if unknown:
            raise LakeError(f"{shards.root}: no stored audio layer(s) {', '.join(unknown)} (stored: {', '.join(names)})")
        self.layers = list(layers)
        self.layer_idx = np.array([names.index(x) for x in layers])
        self.paths = [shards.shard_path(e) for e in entries]
        self.entries = entries
        self.block_table = np.array([(s, i) for s, e in enumerate(entries) for i in range(len(e.blocks))], dtype=np.int64)
        self.block_rows = np.array([b.rows for e in entries for b in e.blocks], dtype=np.int64)
        self.num_rows = int(self.block_rows.sum())
        self.window_blocks = window_blocks or self.default_window(m, fields, layers)
        if training and self.num_rows // world < self.local_batch:
            raise LakeError(f"{shards.root}: split {split!r} has {self.num_rows} rows, fewer than one global batch "
                            f"of {batch_size}; lower --batch-size")
        self.fingerprint = m.fingerprint()
        # a set behind a URL: shards fetched whole into the local cache in the background, read by ranges
        # until they arrive (None: a local set, or shards that do not fit the cache: ranged reads only);
        # `prefetcher.wait()` lets a benchmark or test start an epoch with everything cached
        self.cache = cache_for(shards, entries)
        self.prefetcher = Prefetcher(self.cache, self.paths, entries) if self.cache is not None else None
        self.epoch, self.consumed = 0, 0
        self._position = worker_context().Array("q", 2, lock=False)  # (epoch, first batch), read by the workers
        self._dataloader = self._inline = None

    @staticmethod
    def default_window(m, fields, layers, target_bytes: int = 64 << 20) -> int:
        """Blocks shuffled together: about `target_bytes` of the fields read, between 16 and 64 blocks.

        A wider window mixes more shards into each batch; a narrower one keeps the random row
        gathers inside a working set the caches and TLB can hold (measured here: 16 blocks
        of 3 KB rows ~1.2M rows/s, 64 blocks ~0.7M rows/s; BENCHMARKS.md).
        """
        row = 2 * ((len(layers) * m.audio_dim if "audio" in fields else 0)
                   + sum(m.text_dim for f in fields if f in ("text", "caption"))) + 2
        block = row * max((b.rows for s in m.shards for b in s.blocks), default=1024)
        return int(min(64, max(16, target_bytes // max(block, 1))))

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.training:
            return (self.num_rows // self.world) // self.local_batch
        return len(eval_batches(self.num_rows, self.rank, self.world, self.local_batch))

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.consumed = epoch, 0

    def _pipeline(self) -> wds.DataPipeline:
        return wds.DataPipeline(_BatchPlan(self), _Gather(self), _to_torch)

    def _source(self):
        """Kept across epochs, so mapped shards, cached blocks, buffers and workers are set up once."""
        if self.num_workers == 0:  # in-process: nothing between the gather and the consumer
            if self._inline is None:
                self._inline = self._pipeline()
            return self._inline
        if self._dataloader is None:
            self._dataloader = torch.utils.data.DataLoader(
                self._pipeline(), batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                prefetch_factor=4, persistent_workers=True,
                multiprocessing_context=worker_context(), worker_init_fn=WorkerStart(),  # lake.processes
                # a private generator: creating an iterator must not draw from the global RNG, or a run resumed
                # mid-epoch would see other dropout masks than an uninterrupted one
                generator=torch.Generator().manual_seed(self.seed))
        return self._dataloader

    def __iter__(self):
        """Training: the rest of the current epoch, from the batch after the last consumed one.
        Evaluation: the whole split, every time."""
        if not self.training:
            self.consumed = 0
        start = self.consumed
        if start >= len(self):
            return
        self._position[0], self._position[1] = self.epoch, start
        batches = iter(self._source())  # workers start here, once: they are persistent
        if self.prefetcher is not None and self.prefetcher.needed():
            self.prefetcher.start(self._shard_order(start))
        try:
            for batch in batches:
                if self.prefetcher is not None:
                    self.prefetcher.check()
                self.consumed += 1
                yield batch
        except LakeError as e:
            raise _unwrapped(e) from None

    def _shard_order(self, start: int) -> np.ndarray:
        """Shards in the order this rank's batches from `start` on first touch them: what to prefetch first."""
        batches = rank_batches(self.block_rows, self.training, self.seed, self.epoch, self.window_blocks, self.rank,
                               self.world, self.local_batch)[start:]
        rows = np.concatenate(batches) if batches else np.empty(0, np.int64)
        blocks = np.searchsorted(block_offsets(self.block_rows), rows, side="right") - 1
        shards = self.block_table[blocks, 0]
        _, first = np.unique(shards, return_index=True)
        return shards[np.sort(first)]

    # -- resumable state -----------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "world": self.world, "batch_size": self.batch_size, "split": self.split,
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        if state.pop("version", None) != STATE_VERSION:
            raise LakeError("loader state of another version; cannot resume this run with this code")
        checks = {"world": self.world, "batch_size": self.batch_size, "split": self.split, "fingerprint": self.fingerprint}
        for k, mine in checks.items():
            theirs = state.pop(k, None)
            if theirs != mine:
                what = {"world": "number of ranks", "batch_size": "global batch size", "split": "split",
                        "fingerprint": "shard set (fingerprint)"}[k]
                raise LakeError(f"cannot resume: the checkpoint's {what} was {theirs!r}, now {mine!r}; the rows "
                                "seen next would not continue the interrupted run")
        self.epoch, self.consumed, self.seed = int(state.pop("epoch")), int(state.pop("consumed")), int(state.pop("seed"))
        if state:
            raise LakeError(f"loader state has unknown keys: {', '.join(sorted(state))}")

    def close(self) -> None:
        """Stop the DataLoader's worker processes now. A run that ends mid-epoch (--max-steps, a stop signal, an
        error) leaves batches in flight; left to the garbage collector, their shutdown waits up to 5 s per worker
        at whatever later moment the loader is collected. Workers hold nothing worth saving."""
        loader, self._dataloader = self._dataloader, None
        it = getattr(loader, "_iterator", None)
        if it is not None and getattr(it, "_workers", None):
            for w in it._workers:
                w.terminate()
            it._shutdown_workers()
