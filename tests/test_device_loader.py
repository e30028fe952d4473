"""The split on the device yields exactly the streaming loader's batches, and resumes from its state."""

from __future__ import annotations

import pytest
import torch

from lake.catalog import open_shard_set
from shards.device_loader import DeviceLoader, split_bytes
from shards.loader import ShardLoader

from conftest import make_manifest, write_set

FIELDS = ("audio", "text", "caption", "label")


@pytest.fixture
def shards(tmp_path):
    manifest = make_manifest(num_classes=5, layers=("h0", "h1", "h2"), caption=True)
    write_set(tmp_path / "s", {"train": [50, 3, 120, 7, 64, 1, 200, 33], "val": [13, 4, 21]}, manifest=manifest,
              rows_per_shard=100, label_order=True)
    return open_shard_set(str(tmp_path / "s"))


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)  # the same fields, in the same order
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].device.type == "cpu" and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kwargs", [dict(world=1), dict(rank=1, world=2, layers=["h2", "h0"]),
                                    dict(layers=["h1"], window_blocks=2)])
def test_training_batches_equal_the_streaming_loaders(shards, kwargs):
    for epoch in (0, 3):  # another epoch, another order: both follow it
        stream = ShardLoader(shards, "train", 16, seed=7, fields=FIELDS, **kwargs)
        device = DeviceLoader(ShardLoader(shards, "train", 16, seed=7, fields=FIELDS, **kwargs), "cpu")
        stream.set_epoch(epoch)
        device.set_epoch(epoch)
        got, want = list(device), list(stream)
        assert len(got) == len(want) == len(device) > 0
        for a, b in zip(got, want):
            _same(a, b)


def test_resume_mid_epoch_either_way(shards):
    make = lambda: ShardLoader(shards, "train", 16, seed=3, fields=FIELDS)  # noqa: E731
    full = make()
    full.set_epoch(1)
    want = list(full)
    stream = make()
    stream.set_epoch(1)
    it = iter(stream)
    head = [next(it) for _ in range(4)]
    device = DeviceLoader(make(), "cpu")
    device.load_state_dict(stream.state_dict())  # a streaming checkpoint resumed on the device
    assert (device.epoch, device.consumed) == (1, 4)
    it = iter(device)
    middle = [next(it) for _ in range(3)]
    back = make()
    back.load_state_dict(device.state_dict())  # and a device checkpoint resumed streaming
    assert back.state_dict() == device.state_dict()
    tail = list(back)
    assert len(head + middle + tail) == len(want)
    for a, b in zip(head + middle + tail, want):
        _same(a, b)


def test_evaluation_every_row_once_on_every_rank_count(shards):
    rows = []
    for rank in range(3):
        kw = dict(rank=rank, world=3, training=False, fields=FIELDS, layers=["h2", "h0"])
        stream = ShardLoader(shards, "val", 10, **kw)
        device = DeviceLoader.of(shards, "val", 10, "cpu", **kw)
        got, want = list(device), list(stream)
        assert len(got) == len(want) == len(device)
        for a, b in zip(got, want):
            _same(a, b)
        assert list(device) and len(list(device)) == len(got)  # evaluation: the whole split every time
        rows += [r for b in got for r in b["row"].tolist()]
    assert rows == list(range(38))


def test_fits_and_the_bytes_it_needs(shards):
    loader = ShardLoader(shards, "train", 16, fields=FIELDS, layers=["h1", "h2"])
    n = shards.manifest.rows_of("train")
    assert split_bytes(loader) == n * (2 * 2 * 8 + 2 * 4 + 2 * 4 + 8)  # 2 layers x 8, text 4, caption 4, int64 label
    device = DeviceLoader(loader, "cpu")
    assert sum(t.numel() * t.element_size() for t in device.data.values()) == split_bytes(loader)
    assert DeviceLoader.fits(loader, "cpu") and not DeviceLoader.fits(loader, "cpu", share=1e-12)
    pieces = device._load(chunk_bytes=300)  # the split read in many pieces (~6 rows) lands the same
    assert list(pieces) == list(device.data) and all(torch.equal(pieces[k], device.data[k]) for k in pieces)
