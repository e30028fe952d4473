"""The streaming loader: equal batches per rank, disjoint rows, per-epoch shuffles, exact resume."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lake.catalog import open_shard_set
from lake.errors import LakeError
from shards.loader import ShardLoader
from shards.partition import Plan, block_offsets, epoch_order, eval_batches, train_batches, worker_batches

from conftest import make_manifest, write_set

UNEVEN = [50, 3, 120, 7, 64, 1, 200, 33, 90, 2]  # block sizes: very different shard sizes


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("batch", [1, 7, 32])
def test_partition_equal_batches_disjoint_and_covering(world, batch):
    n = sum(UNEVEN)
    order = epoch_order(np.array(UNEVEN), seed=1, epoch=0, window_blocks=3)
    assert sorted(order.tolist()) == list(range(n))  # a permutation
    per_rank = [train_batches(order, r, world, batch) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # the same number of steps on every rank
    rows = np.concatenate([b.reshape(-1) for b in per_rank])
    assert len(rows) == len(set(rows.tolist()))  # no row twice
    dropped = n - len(rows)
    assert dropped < world * batch + world  # everything else covered


@pytest.mark.parametrize("world,workers", [(1, 1), (1, 3), (2, 2), (4, 3)])
def test_partition_workers_split_batches_in_round_robin_order(world, workers):
    for start in (0, 1, 5):
        got = [worker_batches(20, start, w, workers) for w in range(workers)]
        merged = sorted(j for g in got for j in g)
        assert merged == list(range(start, 20))
        # round-robin over workers reproduces the order start, start+1, ...
        rr = [j for tup in zip(*[list(g) + [None] * 10 for g in got]) for j in tup if j is not None][: 20 - start]
        assert rr == list(range(start, 20))


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_order(np.array(UNEVEN), seed=3, epoch=0)
    assert np.array_equal(a, epoch_order(np.array(UNEVEN), seed=3, epoch=0))
    assert not np.array_equal(a, epoch_order(np.array(UNEVEN), seed=3, epoch=1))
    assert not np.array_equal(a, epoch_order(np.array(UNEVEN), seed=4, epoch=0))


def test_shuffle_quality_per_batch_and_across_epochs():
    """The partition docstring's claim: with W-block windows, a batch of b rows holds rows of every
    block of its window (shards in label order are mixed), and which rows share a batch changes
    every epoch (neighbours in a block share one with probability ~b / (W * block rows), not always)."""
    block_rows, window, b = np.full(64, 1024), 16, 512
    offsets = block_offsets(block_rows)
    label_of_block = np.arange(64) // 4  # shards of 4 blocks, one label each (LAION: one emotion per tar)
    first = np.arange(offsets[-1] - 1)
    neighbours = np.searchsorted(offsets, first, side="right") == np.searchsorted(offsets, first + 1, side="right")
    together = []
    for epoch in range(8):
        batches = Plan((block_rows,), (None,), (int(block_rows.sum()),), 0, window, 0, 1, b, True).batches(epoch)
        batch_of = np.full(offsets[-1], -1)
        for j, rows in enumerate(batches):
            assert np.all(np.diff(rows) > 0)  # ascending ids inside a batch
            blocks = np.searchsorted(offsets, rows, side="right") - 1
            assert len(set(blocks.tolist())) == window  # ~b / W = 32 rows of each of the window's blocks
            assert len(set(label_of_block[blocks].tolist())) >= 8  # of the 16 labels
            batch_of[rows] = j
        together.append((batch_of[first] == batch_of[first + 1]) & (batch_of[first] >= 0) & neighbours)
    together = np.array(together)
    share = together[:, neighbours].mean(axis=1)
    assert np.all((share > 0.02) & (share < 0.05))  # ~1/32 per epoch
    assert together.all(axis=0).sum() == 0  # no pair of neighbours shares a batch in every epoch
    assert together.sum(axis=0).max() <= 4


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_eval_batches_cover_every_row_once(world):
    n = 101
    rows = np.concatenate([np.concatenate(eval_batches(n, r, world, 8)) for r in range(world)])
    assert rows.tolist() == list(range(n))


@pytest.fixture
def uneven_set(tmp_path):
    manifest = make_manifest(num_classes=5, layers=("h0", "h1", "h2"), caption=True)
    m, written = write_set(tmp_path / "s", {"train": UNEVEN, "val": [13, 4, 21]}, manifest=manifest,
                           rows_per_shard=100, label_order=True)
    return open_shard_set(str(tmp_path / "s")), written


def _split_rows(written, split):
    """Written rows of a split in manifest order (the loader's global row ids)."""
    cat = {k: np.concatenate([b[k] for b in written[split]]) for k in ("audio", "text", "caption", "label")}
    cat["keys"] = [k for b in written[split] for k in b["meta"]["keys"]]
    return cat


def test_loader_batches_hold_the_right_rows(uneven_set):
    shards, written = uneven_set
    truth = _split_rows(written, "train")
    # the SetWriter rotates shards, so manifest order is by shard path; map through the index
    index = shards.index.to_pydict()
    train_keys = [k for k, s in zip(index["key"], index["split"]) if s == "train"]
    pos = {k: i for i, k in enumerate(truth["keys"])}
    loader = ShardLoader(shards, "train", 16, layers=["h2", "h0"], fields=("audio", "text", "caption", "label"), seed=5)
    for batch in loader:
        src = np.array([pos[train_keys[r]] for r in batch["row"].tolist()])
        assert batch["audio"].dtype == torch.float16 and batch["audio"].shape == (16, 2, 8)
        assert np.array_equal(batch["audio"].numpy(), truth["audio"][src][:, [2, 0]])
        assert np.array_equal(batch["text"].numpy(), truth["text"][src])
        assert np.array_equal(batch["caption"].numpy(), truth["caption"][src])
        assert np.array_equal(batch["label"].numpy(), truth["label"][src].astype(np.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches_equal_plain_ones(uneven_set):
    shards, _ = uneven_set
    pinned = ShardLoader(shards, "train", 16, seed=1, pin_memory=True, layers=["h2", "h0"])
    plain = ShardLoader(shards, "train", 16, seed=1, layers=["h2", "h0"])
    for a, b in zip(pinned, plain):
        assert all(v.is_pinned() for v in a.values())
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_batches_mix_label_ordered_shards(uneven_set):
    shards, _ = uneven_set  # every block holds one label (like LAION's one-emotion tars)
    loader = ShardLoader(shards, "train", 64, seed=0, window_blocks=64)
    labels_per_batch = [len(set(b["label"].tolist())) for b in loader]
    assert min(labels_per_batch) >= 4  # of 5 classes


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_sees_exactly_the_rest(uneven_set, workers):
    shards, _ = uneven_set
    full = ShardLoader(shards, "train", 16, seed=9, num_workers=workers)
    full.set_epoch(2)
    expected = [b["row"].tolist() for b in full]
    first = ShardLoader(shards, "train", 16, seed=9, num_workers=workers)
    first.set_epoch(2)
    it = iter(first)
    seen = [next(it)["row"].tolist() for _ in range(5)]
    state = first.state_dict()
    resumed = ShardLoader(shards, "train", 16, seed=9, num_workers=workers)
    resumed.load_state_dict(state)
    rest = [b["row"].tolist() for b in resumed]
    assert seen + rest == expected


def _global_steps(shards, world, epoch, **kw):
    """Per global step, the rows all `world` ranks read (a set of row ids)."""
    loaders = [ShardLoader(shards, "train", 16, rank=r, world=world, seed=4, **kw) for r in range(world)]
    for lo in loaders:
        lo.set_epoch(epoch)
    return [set(np.concatenate(b).tolist()) for b in zip(*[lo.batches() for lo in loaders])]


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 4)])
def test_resume_on_another_number_of_ranks_continues_the_same_global_order(uneven_set, before, after):
    shards, _ = uneven_set
    assert _global_steps(shards, 1, 3) == _global_steps(shards, 2, 3) == _global_steps(shards, 4, 3)
    first = [ShardLoader(shards, "train", 16, rank=r, world=before, seed=4) for r in range(before)]
    seen = []
    for lo in first:
        lo.set_epoch(3)
        it = iter(lo)
        seen += [r for _ in range(2) for r in next(it)["row"].tolist()]
    state = first[0].state_dict()
    rest = []
    for r in range(after):
        lo = ShardLoader(shards, "train", 16, rank=r, world=after, seed=4)
        lo.load_state_dict(state)
        rest += [x for b in lo for x in b["row"].tolist()]
    everything = [x for step in _global_steps(shards, 1, 3) for x in sorted(step)]
    assert sorted(seen + rest) == sorted(everything) and len(set(seen + rest)) == len(seen + rest)


def test_resume_refuses_what_cannot_continue(uneven_set):
    shards, _ = uneven_set
    state = ShardLoader(shards, "train", 16).state_dict()
    with pytest.raises(LakeError, match="global batch size was 16, now 32"):
        ShardLoader(shards, "train", 32).load_state_dict(state)
    with pytest.raises(LakeError, match="must divide by the 3 ranks"):  # a global batch the new world cannot split
        ShardLoader(shards, "train", 16, rank=0, world=3)
    state["surprise"] = 1
    with pytest.raises(LakeError, match="unknown keys"):
        ShardLoader(shards, "train", 16).load_state_dict(state)


def test_a_version_1_state_finishes_its_epoch_on_its_old_rows(uneven_set):
    """A checkpoint of earlier code (each rank a contiguous chunk of the order) resumes on its own world."""
    shards, _ = uneven_set
    old = ShardLoader(shards, "train", 16, rank=1, world=2, seed=4)
    old_rows = old.plan.legacy_batches(2)  # what earlier code's rank 1 read in epoch 2
    v1 = {"version": 1, "epoch": 2, "consumed": 1, "seed": 4, "world": 2, "batch_size": 16, "split": "train",
          "fingerprint": shards.manifest.fingerprint()}
    resumed = ShardLoader(shards, "train", 16, rank=1, world=2, seed=4)
    resumed.load_state_dict(v1)
    assert [b["row"].tolist() for b in resumed] == [b.tolist() for b in old_rows[1:]]
    resumed.set_epoch(3)  # the next epoch follows the world-independent order
    assert [b.tolist() for b in resumed.batches()] == [b.tolist() for b in ShardLoader(
        shards, "train", 16, rank=1, world=2, seed=4).plan.batches(3)]
    with pytest.raises(LakeError, match="number of ranks was 2, now 1 .*own number of ranks"):
        ShardLoader(shards, "train", 16, seed=4).load_state_dict(v1)


def test_eval_reads_every_row_exactly_once(uneven_set):
    shards, _ = uneven_set
    rows = []
    for rank in range(3):
        loader = ShardLoader(shards, "val", 6, rank=rank, world=3, training=False, num_workers=2)
        rows += [r for b in loader for r in b["row"].tolist()]
    assert rows == list(range(38))


def test_clear_errors(uneven_set):
    shards, _ = uneven_set
    with pytest.raises(LakeError, match="split 'test' is empty or absent"):
        ShardLoader(shards, "test", 8)
    with pytest.raises(LakeError, match="no stored audio layer"):
        ShardLoader(shards, "train", 8, layers=["h9"])
    with pytest.raises(LakeError, match="must divide"):
        ShardLoader(shards, "train", 9, world=2)
    with pytest.raises(LakeError, match="fewer than one global batch"):
        ShardLoader(shards, "train", 1024)


def _rank_main(rank, world, root, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    loader = ShardLoader(open_shard_set(root), "train", 16, rank=rank, world=world, num_workers=1, seed=2)
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        rows, steps = [], 0
        for batch in loader:
            t = torch.ones(1)
            dist.all_reduce(t)  # a collective per step: an uneven rank would hang here
            steps += 1
            rows += batch["row"].tolist()
        epochs.append({"steps": steps, "rows": rows})
    torch.save(epochs, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_ranks_on_uneven_shards(uneven_set, tmp_path):
    shards, _ = uneven_set
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    torch.multiprocessing.spawn(_rank_main, args=(2, shards.root, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    n = shards.manifest.rows_of("train")
    for epoch in range(2):
        assert r0[epoch]["steps"] == r1[epoch]["steps"] > 0
        rows = r0[epoch]["rows"] + r1[epoch]["rows"]
        assert len(rows) == len(set(rows))  # disjoint across ranks
        assert n - len(rows) < 2 * 16 + 2  # all covered up to the dropped remainder
    assert r0[0]["rows"] != r0[1]["rows"]  # a new order each epoch


def test_non_adjacent_layers_and_uneven_eval_batches(uneven_set):
    shards, written = uneven_set
    truth = _split_rows(written, "val")
    index = shards.index.to_pydict()
    keys = [k for k, s in zip(index["key"], index["split"]) if s == "val"]
    pos = {k: i for i, k in enumerate(truth["keys"])}
    rows = []
    for rank in range(3):  # 10 does not divide by 3 ranks: evaluation does not need it to
        loader = ShardLoader(shards, "val", 10, rank=rank, world=3, training=False, layers=["h2", "h0"])
        for batch in loader:
            src = [pos[keys[r]] for r in batch["row"].tolist()]
            assert np.array_equal(batch["audio"].numpy(), truth["audio"][src][:, [2, 0]])
            rows += batch["row"].tolist()
    assert rows == list(range(38))
    gather = ShardLoader(shards, "val", 10, layers=["h2", "h0"])._pipeline().pipeline[1]
    block = gather._block(0)
    assert all(a.base is not None for a in block)  # views of the mapped shard, never cached copies
