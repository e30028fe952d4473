"""The streaming loader: DDP-aware, resumable batches of one split of one or several shard sets.

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

Several sets are read as one: their rows are numbered one set after the other, each set gives
`quotas[s]` rows an epoch (by `proportions`, or all of its rows: plain concatenation), `label_ids[s]`
maps a set's class ids into the run's taxonomy (-1: the row is left out), and shards.partition
interleaves them. They must store the same audio layers (the trainers also check their encoders).

State (`state_dict`, version 2): epoch, global batches consumed, seed, global batch size, split, and
each set's name, fingerprint and quota. The order depends on none of the world's numbers, so a
resumed run, on any number of ranks that divides the global batch, recomputes the epoch's order and
skips the global batches already consumed: it sees exactly the rows an uninterrupted run would have
seen next. A version-1 state (earlier code: one set, each rank a contiguous chunk of the order) still
resumes on its own number of ranks, finishing its epoch on the old chunks.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import webdataset as wds

from lake import storage
from lake.catalog import ShardSet, repair_hint
from lake.errors import LakeError
from lake.processes import WorkerStart, preload, worker_context
from shards.cache import Prefetcher, cache_for
from shards.mapped import ShardMap
from shards.partition import Plan, block_offsets, quotas, worker_batches

STATE_VERSION = 2
preload(__name__)  # DataLoader workers unpickle the pipeline's stages (plain data) and run them


class _BatchPlan(torch.utils.data.IterableDataset):
    """First pipeline stage: the row ids of each batch this DataLoader worker must produce.

    The epoch and the first batch come from shared memory, so persistent workers
    (started once, keeping their mapped shards) follow `set_epoch` and resumes.
    """

    def __init__(self, loader: "ShardLoader"):
        self.plan, self.position, self.legacy = loader.plan, loader._position, loader._legacy

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = int(self.position[0]), int(self.position[1])
        batches = batches_of(self.plan, epoch, self.legacy)
        for j in worker_batches(len(batches), start, worker, workers):
            yield batches[j]


def batches_of(plan: Plan, epoch: int, legacy: tuple) -> list[np.ndarray]:
    """This rank's batches of `epoch`; `legacy` = (epoch, world) of a version-1 state being finished (or ())."""
    if legacy and legacy[0] == epoch and plan.training:
        return plan.legacy_batches(epoch)
    return plan.batches(epoch)


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
        self.paths, self.entries, self.caches, self.repairs = loader.paths, loader.entries, loader.caches, loader.repairs
        self.num_classes = [len(s.taxonomy) for s in loader.sets]
        self.block_table = loader.block_table  # [n_blocks, 2]: shard index, block index in shard
        self.offsets = block_offsets(loader.block_rows)
        self.set_blocks, self.label_ids = loader.set_blocks, loader.label_ids
        self.layer_idx = loader.layer_idx
        stored = len(loader.stored_layers)
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
            shard = self._maps[s] = ShardMap(self.paths[s], self.entries[s], members=self.members, cache=self.caches[s],
                                             repair=self.repairs[s])
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
        """All labels of the split in the run's taxonomy, read once (label members only: behind a URL, a few
        bytes per block); -1 for a row its set's label map leaves out."""
        if self._labels is None:
            self._labels = read_labels(self.paths, self.entries, self.caches, self.block_table, self.set_blocks,
                                       self.label_ids, self.num_classes, self.repairs)
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


def read_labels(paths, entries, caches, block_table, set_blocks, label_ids, num_classes, repairs) -> np.ndarray:
    """[rows] int64 labels of every block, each set's mapped through its `label_ids` table (None: as stored),
    checked against its set's taxonomy (`num_classes`): a damaged label is one line naming its shard and block."""
    maps = [ShardMap(p, e, members=("label",), cache=c, repair=r) for p, e, c, r in zip(paths, entries, caches,
                                                                                        repairs)]
    raw = [maps[int(s)].block(int(i))["label"] for s, i in block_table]
    out, first = [], 0
    for n, (blocks, table) in enumerate(zip(set_blocks, label_ids)):
        for b in range(first, first + blocks):
            bad = (raw[b] < 0) | (raw[b] >= num_classes[n])
            if bad.any():
                s, i = block_table[b]
                raise LakeError(f"{paths[s]} block {i}: label id {int(raw[b][bad][0])} is outside the set's "
                                f"{num_classes[n]} classes (the shard is damaged); `python -m shards verify` lists "
                                f"all the damage; {repairs[s]}")
        labels = np.concatenate(raw[first:first + blocks]).astype(np.int64)
        out.append(labels if table is None else np.asarray(table, dtype=np.int64)[labels])
        first += blocks
    return np.concatenate(out)


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
    """Batches of one split of one set (or several, read as one), for one rank of `world`. `batch_size` is the
    GLOBAL batch.

    training=True: shuffled per (seed, epoch), full batches only, the same count on every rank.
    training=False: natural order, every row exactly once. Several sets: `proportions` (shares of each
    epoch's rows; default by rows), `epoch_rows` (0: all rows), `label_ids` (per set, class id -> the run's
    class id, -1 leaves the row out; None keeps the stored ids).
    """

    def __init__(self, shards: ShardSet | list[ShardSet], split: str, batch_size: int, rank: int = 0, world: int = 1,
                 training: bool = True, seed: int = 0, num_workers: int = 0, layers: list[str] | None = None,
                 fields: tuple[str, ...] = ("audio", "text", "label"), window_blocks: int = 0,
                 pin_memory: bool = False, proportions: list[float] | None = None, epoch_rows: int = 0,
                 label_ids: list | None = None):
        self.sets = list(shards) if isinstance(shards, (list, tuple)) else [shards]
        self.shards = self.sets[0]
        self.split, self.training = split, training
        self.rank, self.world, self.seed, self.num_workers = rank, world, seed, num_workers
        self.pin_memory = pin_memory
        self.label_ids = list(label_ids) if label_ids is not None else [None] * len(self.sets)
        if training and batch_size % world:
            raise LakeError(f"--batch-size {batch_size} is the global batch and must divide by the {world} ranks")
        # evaluation needs no equal batches (no collective per batch): round the per-rank batch up
        self.batch_size, self.local_batch = batch_size, -(-batch_size // world)
        self.fields = tuple(fields)
        self._check_sets(split, fields)
        self.stored_layers = self.shards.manifest.audio_layers
        layers = layers or self.stored_layers
        unknown = [x for x in layers if x not in self.stored_layers]
        if unknown:
            raise LakeError(f"{self.shards.root}: no stored audio layer(s) {', '.join(unknown)} (stored: "
                            f"{', '.join(self.stored_layers)})")
        self.layers = list(layers)
        self.layer_idx = np.array([self.stored_layers.index(x) for x in layers])
        self._index_shards(split)
        self.window_blocks = window_blocks or self.default_window(self.shards.manifest, fields, layers)
        self.fingerprint = self.shards.manifest.fingerprint() if len(self.sets) == 1 else \
            "+".join(s.manifest.fingerprint() for s in self.sets)
        kept = self._kept()
        available = [int(np.sum(b)) if k is None else int(k.sum()) for b, k in zip(self._set_block_rows, kept)]
        self.quotas = quotas(available, proportions, epoch_rows) if training else available
        self.plan = Plan(tuple(self._set_block_rows), tuple(kept), tuple(self.quotas), seed, self.window_blocks, rank,
                         world, self.local_batch, training)
        if training and sum(self.quotas) // world < self.local_batch:
            raise LakeError(f"{self._names()}: split {split!r} gives {sum(self.quotas)} rows an epoch, fewer than one "
                            f"global batch of {batch_size}; lower --batch-size")
        # sets behind a URL: shards fetched whole into the local cache in the background, read by ranges
        # until they arrive (None: a local set, or shards that do not fit the cache: ranged reads only);
        # `prefetcher.wait()` lets a benchmark or test start an epoch with everything cached
        wanted = [i for i, c in enumerate(self.caches) if c is not None]
        self.prefetcher = Prefetcher([self.caches[i] for i in wanted], [self.paths[i] for i in wanted],
                                     [self.entries[i] for i in wanted]) if wanted else None
        self._prefetch_index = np.full(len(self.paths), -1)
        self._prefetch_index[wanted] = np.arange(len(wanted))
        self.epoch, self.consumed = 0, 0
        self._legacy: tuple = ()  # (epoch, world) of a version-1 state whose epoch is being finished
        self._position = worker_context().Array("q", 2, lock=False)  # (epoch, first batch), read by the workers
        self._dataloader = self._inline = None

    @property
    def cache(self):
        """The shard cache of the first set's shards (None: local, or read by ranges)."""
        return self.caches[0] if self.caches else None

    def _names(self) -> str:
        return " + ".join(s.root for s in self.sets)

    def _check_sets(self, split: str, fields) -> None:
        first = self.shards.manifest
        for shards in self.sets:
            m = shards.manifest
            if sum(e.rows for e in m.shards_of(split)) == 0:
                have = ", ".join(f"{s} ({d['rows']} rows)" for s, d in m.splits.items()) or "none"
                raise LakeError(f"{shards.root}: split {split!r} is empty or absent (splits: {have})")
            missing = [f for f in fields if f not in m.fields and f != "row"]
            if missing:
                raise LakeError(f"{shards.root}: the set has no {', '.join(missing)} embeddings (fields: "
                                f"{', '.join(m.fields)})")
            if m.audio_layers != first.audio_layers:
                raise LakeError(f"{shards.root} stores audio layers {', '.join(m.audio_layers)}, {self.shards.root} "
                                f"{', '.join(first.audio_layers)}: sets read together must store the same layers")

    def _index_shards(self, split: str) -> None:
        """The split's shards of every set, one after the other: paths, entries, caches, blocks and their rows."""
        self.paths, self.entries, self.caches, self.set_blocks, self._set_block_rows = [], [], [], [], []
        self.repairs: list[str] = []
        for shards in self.sets:
            entries = shards.manifest.shards_of(split)
            cache = cache_for(shards, entries)
            self.paths += [shards.shard_path(e) for e in entries]
            self.entries += entries
            self.caches += [cache] * len(entries)
            self.repairs += [repair_hint(shards.manifest, shards.root)] * len(entries)
            rows = np.array([b.rows for e in entries for b in e.blocks], dtype=np.int64)
            self.set_blocks.append(len(rows))
            self._set_block_rows.append(rows)
        self.block_table = np.array([(s, i) for s, e in enumerate(self.entries) for i in range(len(e.blocks))],
                                    dtype=np.int64).reshape(-1, 2)
        self.block_rows = np.concatenate(self._set_block_rows)
        self.num_rows = int(self.block_rows.sum())

    def _kept(self) -> list[np.ndarray | None]:
        """Per set, which rows its label map keeps (None: every row, no labels read)."""
        if all(t is None for t in self.label_ids):
            return [None] * len(self.sets)
        labels = read_labels(self.paths, self.entries, self.caches, self.block_table, self.set_blocks, self.label_ids,
                             [len(s.taxonomy) for s in self.sets], self.repairs)
        bounds = block_offsets([int(np.sum(b)) for b in self._set_block_rows])
        return [None if t is None else labels[a:b] >= 0 for t, a, b in zip(self.label_ids, bounds[:-1], bounds[1:])]

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
        if self._legacy and self._legacy[0] == self.epoch:
            return len(self.plan.legacy_batches(self.epoch))
        return self.plan.num_batches()

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.consumed = epoch, 0

    def batches(self) -> list[np.ndarray]:
        """This rank's batches of the current epoch (row ids, ascending inside each batch)."""
        return batches_of(self.plan, self.epoch, self._legacy)

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
        """The prefetcher's shards in the order this rank's batches from `start` on first touch them."""
        batches = self.batches()[start:]
        rows = np.concatenate(batches) if batches else np.empty(0, np.int64)
        blocks = np.searchsorted(block_offsets(self.block_rows), rows, side="right") - 1
        shards = self.block_table[blocks, 0]
        _, first = np.unique(shards, return_index=True)
        order = self._prefetch_index[shards[np.sort(first)]]
        return order[order >= 0]

    # -- resumable state -----------------------------------------------------------
    def _identity(self) -> list[dict]:
        return [{"name": s.name, "fingerprint": s.manifest.fingerprint(), "quota": q}
                for s, q in zip(self.sets, self.quotas)]

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "batch_size": self.batch_size, "split": self.split, "sets": self._identity(), "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        version = state.pop("version", None)
        if version == 1:
            return self._load_v1(state)
        if version != STATE_VERSION:
            raise LakeError(f"loader state of version {version!r}; this code resumes versions 1 and {STATE_VERSION}")
        state.pop("world", None)  # recorded, not needed: the order does not depend on it
        checks = {"batch_size": ("global batch size", self.batch_size), "split": ("split", self.split),
                  "sets": ("sets, their fingerprints and rows per epoch", self._identity())}
        for k, (what, mine) in checks.items():
            theirs = state.pop(k, None)
            if theirs != mine:
                raise LakeError(f"cannot resume: the checkpoint's {what} was {theirs!r}, now {mine!r}; the rows "
                                "seen next would not continue the interrupted run")
        self.epoch, self.consumed, self.seed = int(state.pop("epoch")), int(state.pop("consumed")), int(state.pop("seed"))
        if state:
            raise LakeError(f"loader state has unknown keys: {', '.join(sorted(state))}")

    def _load_v1(self, state: dict) -> None:
        """A state saved by earlier code: one set, each rank a contiguous chunk of the order, tied to its world."""
        checks = {"world": ("number of ranks", self.world), "batch_size": ("global batch size", self.batch_size),
                  "split": ("split", self.split), "fingerprint": ("shard set (fingerprint)", self.fingerprint)}
        for k, (what, mine) in checks.items():
            theirs = state.pop(k, None)
            if theirs != mine:
                hint = " (a version-1 checkpoint resumes on its own number of ranks)" if k == "world" else ""
                raise LakeError(f"cannot resume: the checkpoint's {what} was {theirs!r}, now {mine!r}{hint}; the rows "
                                "seen next would not continue the interrupted run")
        self.epoch, self.consumed, self.seed = int(state.pop("epoch")), int(state.pop("consumed")), int(state.pop("seed"))
        if state:
            raise LakeError(f"loader state has unknown keys: {', '.join(sorted(state))}")
        self._legacy = (self.epoch, self.world) if 0 < self.consumed else ()

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
