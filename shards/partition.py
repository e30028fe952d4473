"""Which rows each rank and worker reads in an epoch: pure functions of integers.

Rows of a split are numbered globally in manifest order (shard by shard, block by
block). An epoch's order is a function of (block sizes, seed, epoch) only:

1. the blocks are permuted;
2. the permuted blocks are cut into windows of `window_blocks` blocks, and the
   rows of each window are permuted, so a batch mixes rows of many blocks and
   shards even when shards are written in label order (LAION: one emotion per tar);
3. rank r takes a contiguous chunk of that order (locality: it reads about
   1/world of the blocks), trimmed so that every rank gets exactly the same number
   of full batches -- uneven shards can never make one rank run out first and
   hang the others in a collective;
4. batch j of a rank goes to DataLoader worker (j - start) % workers, so the
   DataLoader's round-robin hands the batches back in order, from any start;
5. inside a batch the rows are in ascending id order (`rank_batches`): which rows
   share a batch is the shuffle, their order inside it is not, and ascending ids let
   the gather copy each block's rows in one call.

What a batch mixes: rows are shuffled one by one inside a window of W blocks, so a
batch of b rows holds about b / W rows of each of the window's blocks, from as many
up to W shards (W = 21 for 3 KB rows, 16 for 23 KB rows: ShardLoader.default_window; a batch
that straddles two windows mixes both), and rows neighbouring in a block share a batch
with probability ~b / (W * 1024) per epoch, independently across epochs
(tests/test_loader.py::test_shuffle_quality_per_batch_and_across_epochs).

Evaluation order is the natural order, split into near-equal contiguous chunks,
with every row exactly once (no drop, no padding with duplicates).
"""

from __future__ import annotations

import numpy as np


def block_offsets(block_rows: np.ndarray) -> np.ndarray:
    """[n_blocks + 1] start row of each block, then the total."""
    return np.concatenate([[0], np.cumsum(np.asarray(block_rows, dtype=np.int64))])


def epoch_order(block_rows: np.ndarray, seed: int, epoch: int, window_blocks: int = 64) -> np.ndarray:
    """[N] global row ids in this epoch's shuffled order."""
    block_rows = np.asarray(block_rows, dtype=np.int64)
    offsets = block_offsets(block_rows)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(block_rows))
    out = np.empty(int(offsets[-1]), dtype=np.int64)
    pos = 0
    for w in range(0, len(perm), max(1, window_blocks)):
        blocks = perm[w:w + window_blocks]
        rows = np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in blocks]) if len(blocks) else np.empty(0, np.int64)
        out[pos:pos + len(rows)] = rows[rng.permutation(len(rows))]
        pos += len(rows)
    return out


def train_batches(order: np.ndarray, rank: int, world: int, batch_size: int) -> np.ndarray:
    """[B, batch_size] rows of this rank's batches; B is the same on every rank.

    Each rank takes len(order) // world rows, then whole batches of those; the
    remainder (fewer than world * batch_size rows + world) is dropped this epoch,
    and a different remainder is dropped next epoch.
    """
    per_rank = len(order) // world
    batches = per_rank // batch_size
    start = rank * per_rank
    return order[start:start + batches * batch_size].reshape(batches, batch_size)


def eval_batches(num_rows: int, rank: int, world: int, batch_size: int) -> list[np.ndarray]:
    """This rank's batches over its contiguous chunk of the natural order; the last may be short.

    Chunks differ by at most one row across ranks; together they hold every row once.
    """
    bounds = [num_rows * r // world for r in range(world + 1)]
    rows = np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def worker_batches(num_batches: int, start: int, worker: int, workers: int) -> range:
    """Indices of the batches (from `start` on) that DataLoader worker `worker` produces."""
    return range(start + worker, num_batches, workers)


def rank_batches(block_rows: np.ndarray, training: bool, seed: int, epoch: int, window_blocks: int, rank: int,
                 world: int, batch_size: int) -> list[np.ndarray]:
    """This rank's batches of the epoch, each batch's rows in storage order (ascending ids).

    Which rows share a batch is the shuffle's business; their order inside a batch is not
    (a mean loss ignores it): ascending ids let a gather copy each block's rows as one run.
    """
    if training:
        order = epoch_order(block_rows, seed, epoch, window_blocks)
        return list(np.sort(train_batches(order, rank, world, batch_size), axis=1))
    return eval_batches(int(np.sum(block_rows)), rank, world, batch_size)
