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
   DataLoader's round-robin hands the batches back in order, from any start.

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
