"""Which rows each rank and worker reads in an epoch: pure functions of integers.

Rows are numbered globally: set by set (a run may read several shard sets), and within a set in
manifest order (shard by shard, block by block). An epoch's order is a function of the sets'
block sizes, the rows each may give (a label map can leave rows out), the rows asked of each
(`quotas`), the seed and the epoch, and of nothing else: not of the number of ranks or workers.

1. each set's stream: its blocks are permuted, cut into windows of `window_blocks` blocks, and the
   rows of each window permuted, so a batch mixes rows of many blocks and shards even when shards
   are written in label order (LAION: one emotion per tar); rows left out are skipped. A set asked
   for more rows than it has gives whole passes, each a fresh permutation (every row once before
   any row twice), then the start of one more; a set asked for fewer gives the start of its
   stream, which is another subset every epoch;
2. the streams are interleaved at random positions (the share of each set is the same all through
   the epoch), which gives the epoch's global order;
3. the global order is cut into global batches of `batch_size` rows (the remainder, fewer than one
   global batch, is dropped this epoch and another remainder the next), and rank r of `world` takes
   the r-th slice of every global batch: every rank has exactly the same number of full batches,
   so uneven sets can never make one rank run out first and hang the others in a collective, and
   global batch b holds the same rows on any number of ranks: a run resumes on another world size
   at the same position of the same order;
4. batch j of a rank goes to DataLoader worker (j - start) % workers, so the DataLoader's
   round-robin hands the batches back in order, from any start;
5. inside a batch the rows are in ascending id order: which rows share a batch is the shuffle,
   their order inside it is not, and ascending ids let the gather copy each block's rows in one call.

With one set and nothing left out, rank 0 of one process reads exactly the order of the earlier
`epoch_order` (the same seeds), so single-set runs are unchanged.

With several sets, the window of W blocks is shared between them in proportion to their rows an epoch.

What a batch mixes: rows are shuffled one by one inside a window of W blocks, so a batch of b rows
holds about b / W rows of each of the window's blocks, from as many up to W shards (W = 21 for 3 KB
rows, 16 for 23 KB rows: ShardLoader.default_window; a batch that straddles two windows mixes both),
and rows neighbouring in a block share a batch with probability ~b / (W * 1024) per epoch,
independently across epochs (tests/test_loader.py::test_shuffle_quality_per_batch_and_across_epochs).

Evaluation order is the natural order of the rows that may be read, split into near-equal
contiguous chunks, with every row exactly once (no drop, no padding with duplicates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def block_offsets(block_rows: np.ndarray) -> np.ndarray:
    """[n_blocks + 1] start row of each block, then the total."""
    return np.concatenate([[0], np.cumsum(np.asarray(block_rows, dtype=np.int64))])


def epoch_order(block_rows: np.ndarray, seed: int, epoch: int, window_blocks: int = 64, stream: tuple = ()) -> np.ndarray:
    """[N] row ids of one set in a shuffled order: blocks permuted, rows permuted within windows of blocks.
    `stream`: more integers for the generator's seed (which set, which pass), after (seed, epoch)."""
    block_rows = np.asarray(block_rows, dtype=np.int64)
    offsets = block_offsets(block_rows)
    rng = np.random.default_rng([seed, epoch, *stream])
    perm = rng.permutation(len(block_rows))
    out = np.empty(int(offsets[-1]), dtype=np.int64)
    pos = 0
    for w in range(0, len(perm), max(1, window_blocks)):
        blocks = perm[w:w + window_blocks]
        rows = np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in blocks]) if len(blocks) else np.empty(0, np.int64)
        out[pos:pos + len(rows)] = rows[rng.permutation(len(rows))]
        pos += len(rows)
    return out


def set_stream(block_rows: np.ndarray, kept: np.ndarray | None, quota: int, seed: int, epoch: int, index: int,
               window_blocks: int) -> np.ndarray:
    """[quota] row ids of set `index` for this epoch: whole passes of its shuffle, then the start of one more."""
    parts, need, k = [], int(quota), 0
    while need > 0:
        order = epoch_order(block_rows, seed, epoch, window_blocks, () if (index, k) == (0, 0) else (index, k))
        if kept is not None:
            order = order[kept[order]]
        if not len(order):
            raise ValueError(f"set {index} has no rows to draw {quota} from")
        parts.append(order[:need])
        need, k = need - len(parts[-1]), k + 1
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def interleave(streams: list[np.ndarray], offsets: list[int], seed: int, epoch: int) -> np.ndarray:
    """The epoch's global order: each set's stream (shifted to global ids) at random positions of one sequence,
    keeping each stream's own order."""
    if len(streams) == 1:
        return streams[0] + offsets[0]
    owner = np.repeat(np.arange(len(streams)), [len(s) for s in streams])
    np.random.default_rng([seed, epoch, len(streams), 1 << 20]).shuffle(owner)
    out = np.empty(len(owner), dtype=np.int64)
    for s, stream in enumerate(streams):
        out[owner == s] = stream + offsets[s]
    return out


def train_batches(order: np.ndarray, rank: int, world: int, batch_size: int) -> np.ndarray:
    """[B, batch_size] rows of this rank's batches: slice `rank` of every global batch of world * batch_size rows.
    B is the same on every rank; the remainder (fewer than one global batch) is dropped."""
    total = world * batch_size
    batches = len(order) // total
    return order[:batches * total].reshape(batches, world, batch_size)[:, rank]


def eval_batches(rows: int | np.ndarray, rank: int, world: int, batch_size: int) -> list[np.ndarray]:
    """This rank's batches over its contiguous chunk of the natural order (`rows`: a count, or the row ids that
    may be read); the last may be short. Chunks differ by at most one row across ranks; together they hold every
    row once."""
    ids = np.arange(rows, dtype=np.int64) if np.ndim(rows) == 0 else np.asarray(rows, dtype=np.int64)
    bounds = [len(ids) * r // world for r in range(world + 1)]
    mine = ids[bounds[rank]:bounds[rank + 1]]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def worker_batches(num_batches: int, start: int, worker: int, workers: int) -> range:
    """Indices of the batches (from `start` on) that DataLoader worker `worker` produces."""
    return range(start + worker, num_batches, workers)


def quotas(available: list[int], proportions: list[float] | None, epoch_rows: int) -> list[int]:
    """Rows drawn from each set per epoch: `epoch_rows` (0: every row available once) shared by `proportions`
    (None: by the rows available, i.e. plain concatenation), each within one row of its exact share (largest
    remainders, ties to the earlier set), summing to `epoch_rows`."""
    total = int(epoch_rows) or int(sum(available))
    weights = np.asarray(available if proportions is None else proportions, dtype=np.float64)
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - out), kind="stable")[: total - int(out.sum())]:
        out[i] += 1
    return out.tolist()


@dataclass(frozen=True)
class Plan:
    """Everything an epoch's batches depend on, as plain data (sent to DataLoader workers).

    `block_rows[s]`: set s's block sizes in storage order; `kept[s]`: which of its rows may be read (None: all);
    `quotas[s]`: rows drawn from it per training epoch; `batch_size`: this rank's share of the global batch.
    """

    block_rows: tuple
    kept: tuple
    quotas: tuple
    seed: int
    window_blocks: int
    rank: int
    world: int
    batch_size: int
    training: bool

    @property
    def set_offsets(self) -> list[int]:
        return block_offsets([int(np.sum(b)) for b in self.block_rows])[:-1].tolist()

    def readable(self) -> np.ndarray:
        """Global ids of every row that may be read, in natural order."""
        parts = [np.arange(int(np.sum(b)), dtype=np.int64) if k is None else np.flatnonzero(k)
                 for b, k in zip(self.block_rows, self.kept)]
        return np.concatenate([p + o for p, o in zip(parts, self.set_offsets)])

    def windows(self) -> list[int]:
        """Each set's shuffle window, in blocks: the window shared by the sets in proportion to their quotas, so
        a batch of several sets touches about as many blocks as a batch of one (the gather's cost is per block:
        measured in benchmarks.loader, two full windows halved the mixed loader's rows/s)."""
        total = max(1, sum(self.quotas))
        return [max(1, round(self.window_blocks * q / total)) for q in self.quotas]

    def order(self, epoch: int) -> np.ndarray:
        """The training epoch's global order (ranks take slices of it)."""
        streams = [set_stream(b, k, q, self.seed, epoch, i, w)
                   for i, (b, k, q, w) in enumerate(zip(self.block_rows, self.kept, self.quotas, self.windows()))]
        return interleave(streams, self.set_offsets, self.seed, epoch)

    def num_batches(self) -> int:
        if self.training:
            return sum(self.quotas) // (self.world * self.batch_size)
        readable = sum(int(np.sum(b)) if k is None else int(k.sum()) for b, k in zip(self.block_rows, self.kept))
        return len(eval_batches(readable, self.rank, self.world, self.batch_size))

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of the epoch, each batch's rows ascending."""
        if self.training:
            return list(np.sort(train_batches(self.order(epoch), self.rank, self.world, self.batch_size), axis=1))
        return eval_batches(self.readable(), self.rank, self.world, self.batch_size)

    def legacy_batches(self, epoch: int) -> list[np.ndarray]:
        """A version-1 loader state's batches (one set, each rank a contiguous chunk of the order): what a
        checkpoint saved mid-epoch by earlier code needs to finish that epoch on the same rows."""
        order = epoch_order(self.block_rows[0], self.seed, epoch, self.window_blocks)
        per_rank = len(order) // self.world
        batches = per_rank // self.batch_size
        start = self.rank * per_rank
        return list(np.sort(order[start:start + batches * self.batch_size].reshape(batches, self.batch_size), axis=1))
