"""Shard format v1: a set written through the writer reads back exactly."""

import io
import json
import os
import tarfile

import numpy as np
import pytest

from lake.blocks import (ARRAY_MEMBERS, MEMBER_SUFFIX, META_LISTS, OPTIONAL_META, SHARDS_DIR, SOFT_LABELS,
                         block_name, make_block, member_file, member_of, parse_shard_name, row_meta, shard_relpath,
                         split_member_file)
from lake.catalog import open_shard_set
from lake.errors import LakeError
from lake.schema import SCHEMA_VERSION
from shards.format import ShardWriter, iter_shard
from shards.mapped import ShardMap

from conftest import make_manifest, random_block, write_set


def _bits(a):
    return a.view(np.uint16) if a.dtype == np.float16 else a


def _assert_block_equal(a, b):
    for k in ("audio", "text", "caption", "label"):
        if k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            assert np.array_equal(_bits(a[k]), _bits(b[k])), k  # bit-equal fp16, NaN payloads included
    assert a["meta"] == b["meta"]


def test_roundtrip_bit_equal_sequential_and_mapped(tmp_path):
    manifest = make_manifest(caption=True)
    m, written = write_set(tmp_path / "s", {"train": [5, 3, 4], "test": [2]}, manifest=manifest, rows_per_shard=6)
    # plant special fp16 values: NaN, inf, subnormal, -0
    assert m.rows_of("train") == 12 and m.rows_of("test") == 2
    shards = open_shard_set(str(tmp_path / "s"))
    got = {"train": [], "test": []}
    for entry in shards.manifest.shards:
        seq = list(iter_shard(shards.shard_path(entry)))
        mapped = [ShardMap(shards.shard_path(entry), entry).block(i) for i in range(len(entry.blocks))]
        assert len(seq) == len(mapped) == len(entry.blocks)
        for s, mp in zip(seq, mapped):
            _assert_block_equal(s, mp)
        got[entry.split].extend(seq)
    for split in got:
        assert len(got[split]) == len(written[split])
        for a, b in zip(written[split], got[split]):
            _assert_block_equal(a, b)


def test_special_fp16_values_survive(tmp_path):
    manifest = make_manifest()
    block = random_block(np.random.default_rng(1), 4, manifest)
    block["audio"].reshape(-1)[:4] = np.array([np.nan, np.inf, 6e-8, -0.0], dtype=np.float16)
    w = ShardWriter(str(tmp_path), "shards/train-0000-000000.tar", "train")
    w.add_block(block)
    entry = w.close()
    back = ShardMap(str(tmp_path / entry.path), entry).block(0)
    assert np.array_equal(_bits(back["audio"]), _bits(block["audio"]))


def test_shard_is_a_plain_tar_numpy_can_read(tmp_path):
    manifest = make_manifest()
    block = random_block(np.random.default_rng(2), 3, manifest)
    w = ShardWriter(str(tmp_path), "shards/train-0000-000000.tar", "train")
    w.add_block(block)
    entry = w.close()
    with tarfile.open(tmp_path / entry.path) as tar:
        names = tar.getnames()
        assert names == ["b000000.audio.npy", "b000000.text.npy", "b000000.label.npy", "b000000.meta.json"]
        arr = np.load(io.BytesIO(tar.extractfile("b000000.audio.npy").read()))
        meta = json.load(tar.extractfile("b000000.meta.json"))
    assert np.array_equal(arr, block["audio"]) and meta == block["meta"]


def test_shard_and_member_names_round_trip_through_lake_blocks():
    for split, worker, seq in [("train", 0, 0), ("val", 3, 17), ("test-clean", 12, 123456), ("dev", 10000, 1234567)]:
        rel = shard_relpath(split, worker, seq)
        assert rel.startswith(f"{SHARDS_DIR}/")
        assert parse_shard_name(rel) == (split, worker, seq, "") == parse_shard_name(rel.rsplit("/", 1)[-1])
    for other in ("index.parquet", "train-0000-000001.tar.tmp", "notes.tar", "train-x-000001.tar", "0000-000001.tar"):
        assert parse_shard_name(other) is None, other
    for index in (0, 7, 123456):
        for member in MEMBER_SUFFIX:
            block, suffix = split_member_file(member_file(block_name(index), member))
            assert block == block_name(index) and suffix == MEMBER_SUFFIX[member] and member_of(suffix) == member


def test_a_block_made_from_rows_is_stored_as_lake_blocks_says(tmp_path):
    """Rows -> make_block (dtypes, meta lists) -> ShardWriter -> tar member names that parse back."""
    manifest = make_manifest(caption=True)
    rng = np.random.default_rng(6)
    L, Da, Dt = len(manifest.audio_layers), manifest.audio_dim, manifest.text_dim
    metas = [row_meta(f"k{i}", 1.23456, f"t{i}", f"u{i}", encoded_s=1.0, caption=f"c{i}",
                      extra={SOFT_LABELS: {"class0": 0.5}}) for i in range(3)]
    block = make_block({"audio": [rng.standard_normal((L, Da), dtype=np.float32) for _ in range(3)],
                        "text": [rng.standard_normal(Dt, dtype=np.float32) for _ in range(3)],
                        "caption": [rng.standard_normal(Dt, dtype=np.float32) for _ in range(3)],
                        "label": [2, 0, 1]}, metas)
    for name, member in ARRAY_MEMBERS.items():
        assert block[name].dtype == np.dtype(member.dtype) and block[name].shape == manifest.expected_shape(name, 3)
    assert list(block["meta"]) == [*META_LISTS, *OPTIONAL_META]
    assert block["meta"]["durations"] == [1.2346] * 3 and block["meta"]["keys"] == ["k0", "k1", "k2"]
    relpath = shard_relpath("train", 0, 0)
    w = ShardWriter(str(tmp_path), relpath, "train")
    w.add_block(block)
    entry = w.close()
    with tarfile.open(tmp_path / relpath) as tar:
        parsed = [split_member_file(n) for n in tar.getnames()]
    assert [b for b, _ in parsed] == [block_name(0)] * 5
    assert [member_of(suffix) for _, suffix in parsed] == list(MEMBER_SUFFIX) == list(entry.blocks[0].members)
    assert parse_shard_name(entry.path).split == entry.split == "train"


def test_partial_shard_is_never_visible(tmp_path):
    manifest = make_manifest()
    w = ShardWriter(str(tmp_path), "shards/train-0000-000000.tar", "train")
    w.add_block(random_block(np.random.default_rng(3), 3, manifest))
    assert not os.path.exists(tmp_path / "shards/train-0000-000000.tar")
    assert os.path.exists(tmp_path / "shards/train-0000-000000.tar.tmp")
    w.abort()
    assert os.listdir(tmp_path / "shards") == []


def test_writer_rejects_inconsistent_block(tmp_path):
    manifest = make_manifest()
    block = random_block(np.random.default_rng(4), 3, manifest)
    block["text"] = block["text"][:2]
    w = ShardWriter(str(tmp_path), "shards/train-0000-000000.tar", "train")
    with pytest.raises(ValueError, match="text"):
        w.add_block(block)
    block = random_block(np.random.default_rng(4), 3, manifest)
    block["audio"] = block["audio"].astype(np.float32)
    with pytest.raises(ValueError, match="audio"):
        w.add_block(block)
    w.abort()


def test_same_rows_give_identical_bytes(tmp_path):
    a, _ = write_set(tmp_path / "a", {"train": [4, 4]}, seed=5)
    b, _ = write_set(tmp_path / "b", {"train": [4, 4]}, seed=5)
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert a.fingerprint() == b.fingerprint()


def test_catalog_errors_name_the_problem(tmp_path, small_set):
    with pytest.raises(LakeError, match="does not exist"):
        open_shard_set(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LakeError, match="not a shard set"):
        open_shard_set(str(tmp_path / "empty"))
    root, _, _ = small_set
    path = root / "manifest.json"
    d = json.loads(path.read_text())
    d["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(d))
    with pytest.raises(LakeError, match=f"schema_version {SCHEMA_VERSION + 1}"):
        open_shard_set(str(root))
    path.write_text("{not json")
    with pytest.raises(LakeError, match="not valid JSON"):
        open_shard_set(str(root))


def test_mapped_reader_refuses_truncated_shard(small_set):
    root, manifest, _ = small_set
    entry = manifest.shards[0]
    path = root / entry.path
    with open(path, "r+b") as f:
        f.truncate(entry.bytes - 512)
    with pytest.raises(LakeError, match="truncated"):
        ShardMap(str(path), entry)


def test_reads_through_fsspec_url(small_set):
    """The same set through an fsspec URL: manifest, index, ranged block reads, sequential reads."""
    import fsspec

    root, manifest, written = small_set
    url = f"memory://sets/{os.path.basename(root)}"
    fs = fsspec.filesystem("memory")
    for dirpath, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            fs.pipe_file(f"/sets/{os.path.basename(root)}/{rel}", open(os.path.join(dirpath, f), "rb").read())
    shards = open_shard_set(url)
    assert shards.manifest.fingerprint() == manifest.fingerprint()
    assert shards.index.num_rows == sum(s.rows for s in manifest.shards)
    entry = shards.manifest.shards[0]
    by_range = ShardMap(shards.shard_path(entry), entry).block(0)
    by_stream = next(iter_shard(shards.shard_path(entry)))
    _assert_block_equal(by_range, by_stream)
