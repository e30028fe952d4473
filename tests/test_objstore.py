"""Shard sets on an object store: a real S3 API on loopback (moto's server, `s3_server` / `s3_bucket` in
conftest), s3fs, the shard cache, `python -m shards cp`, and the error for every way storage can fail."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import shards.copy as copy_mod
from lake import storage
from lake.catalog import open_shard_set
from lake.errors import LakeError
from shards import cli
from shards.cache import ShardCache
from shards.copy import copy_set, stage_for_upload, upload_plan, with_revision
from shards.loader import ShardLoader
from shards.mapped import ShardMap

from conftest import forget_s3_clients, make_manifest, write_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(root) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [{k: v.numpy().copy() for k, v in b.items()} for b in loader]


def _assert_same_batches(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_set(tmp_path):
    root = tmp_path / "set"
    write_set(root, {"train": [6, 5, 7, 4, 6, 5], "val": [4, 3], "test": [3]}, rows_per_shard=10)
    return str(root)


@pytest.fixture
def remote_set(local_set, s3_bucket):
    url = f"{s3_bucket}/sets/small"
    copy_set(local_set, url)
    return url


class _Outage:
    """A tqdm-like progress bar that stops the S3 server once `after` bytes have passed: a network
    failure in the middle of a transfer."""

    def __init__(self, server, after: int):
        self.server, self.after, self.n, self.total = server, after, 0, None

    def update(self, n: int) -> None:
        self.n += n
        if self.n >= self.after and self.server.running:
            self.server.stop()


# -- reading ---------------------------------------------------------------------------------------------------

def test_s3_set_reads_like_its_local_copy_cached_ranged_and_from_the_cache_alone(local_set, remote_set, tmp_path,
                                                                                s3_server, capsys):
    local = ShardLoader(open_shard_set(local_set), "train", 8, seed=3, window_blocks=2)
    cached = ShardLoader(open_shard_set(remote_set, cache_dir=str(tmp_path / "cache")), "train", 8, seed=3,
                         window_blocks=2)
    assert cached.cache is not None
    ranged = ShardLoader(open_shard_set(remote_set, cache_dir=str(tmp_path / "c2"), cache_limit_gb=1e-6),
                         "train", 8, seed=3, window_blocks=2)
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "exceed the shard cache" in err
    assert ranged.cache is None  # the split does not fit: ranged reads of the recorded byte ranges
    first = _epoch(local, 0)
    _assert_same_batches(first, _epoch(cached, 0))  # cold: ranged reads while the prefetcher fetches
    _assert_same_batches(first, _epoch(ranged, 0))
    cached.prefetcher.wait()
    shards = open_shard_set(local_set).manifest.shards_of("train")
    for e in shards:  # every cached shard is the manifest's bytes, and nothing half-written is left
        assert hashlib.sha256(open(cached.cache.path_of(e), "rb").read()).hexdigest() == e.sha256
    assert sorted(os.listdir(tmp_path / "cache")) == sorted([f"{e.sha256}.tar" for e in shards] + ["locks"])
    s3_server.stop()
    try:  # the second epoch comes from the cache alone: the object store is gone
        _assert_same_batches(_epoch(local, 1), _epoch(cached, 1))
        with pytest.raises(LakeError, match="cannot reach"):  # what a read that needs the store then says
            ShardMap(ranged.paths[0], ranged.entries[0]).block(0)
    finally:
        s3_server.start()


def test_a_shard_torn_by_an_outage_or_altered_in_the_store_never_enters_the_cache(tmp_path, s3_bucket, s3_server,
                                                                                  monkeypatch):
    root = tmp_path / "big"
    write_set(root, {"train": [100, 100]}, manifest=make_manifest(audio_dim=256), rows_per_shard=200)
    url = f"{s3_bucket}/big"
    copy_set(str(root), url)
    shards = open_shard_set(url)
    entry = shards.manifest.shards[0]
    assert entry.bytes > 6 * (32 << 10)
    monkeypatch.setattr(copy_mod, "CHUNK", 32 << 10)  # several ranged reads per shard
    cache = ShardCache(str(tmp_path / "cache"), 1 << 30)
    with pytest.raises(LakeError, match="cannot reach"):
        cache.fetch(shards.shard_path(entry), entry, progress=_Outage(s3_server, 1))
    assert os.listdir(cache.directory) == ["locks"]  # no entry, no part file
    s3_server.start()
    import s3fs

    data = bytearray(open(os.path.join(root, entry.path), "rb").read())
    data[-1000] ^= 0xFF  # same size, other bytes
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(shards.shard_path(entry)[5:], bytes(data))
    with pytest.raises(LakeError, match="damaged"):
        cache.fetch(shards.shard_path(entry), entry)
    assert os.listdir(cache.directory) == ["locks"]
    assert cache.lookup(entry) is None


def test_cache_evicts_the_least_recently_used_and_keeps_what_was_just_fetched(remote_set, tmp_path):
    shards = open_shard_set(remote_set)
    entries = shards.manifest.shards_of("train")[:3]
    cache = ShardCache(str(tmp_path / "cache"), sum(e.bytes for e in entries[:2]) + 10)
    a, b = (cache.fetch(shards.shard_path(e), e) for e in entries[:2])
    os.utime(b, (1_000_000, 1_000_000))  # b used long ago, a just now
    cache.fetch(shards.shard_path(entries[2]), entries[2])
    assert cache.lookup(entries[0]) and cache.lookup(entries[2]) and cache.lookup(entries[1]) is None
    assert cache.used_bytes() <= cache.limit_bytes


_READER = """
import hashlib, sys
from lake.catalog import open_shard_set
from shards.cache import Prefetcher, cache_for
from shards.mapped import ShardMap

shards = open_shard_set(sys.argv[1], cache_dir=sys.argv[2])
entries = shards.manifest.shards_of("train")
urls = [shards.shard_path(e) for e in entries]
cache = cache_for(shards, entries)
prefetcher = Prefetcher([cache] * len(entries), urls, entries)
prefetcher.start(range(len(entries)))
h = hashlib.sha256()
for attempt in range(2):  # while the shards arrive (ranged reads, then the cache), then from the cache
    for url, e in zip(urls, entries):
        m = ShardMap(url, e, cache=cache)
        for i in range(len(e.blocks)):
            h.update(m.block(i)["audio"].tobytes())
    prefetcher.wait()
print(h.hexdigest())
"""


def test_two_processes_share_one_cache(local_set, remote_set, tmp_path):
    """The loader's cache path (prefetch threads fetching whole shards, readers switching from ranged reads
    to the cached copy) run by two processes at once on one cache directory."""
    cache_dir = str(tmp_path / "shared-cache")
    procs = [subprocess.Popen([sys.executable, "-c", _READER, remote_set, cache_dir], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    shards = open_shard_set(local_set).manifest.shards_of("train")
    h = hashlib.sha256()
    for _ in range(2):  # what both read: every block of the local copy, twice
        for e in shards:
            m = ShardMap(os.path.join(local_set, e.path), e)
            for i in range(len(e.blocks)):
                h.update(m.block(i)["audio"].tobytes())
    assert outs[0][0] == outs[1][0] == h.hexdigest() + "\n"
    names = sorted(os.listdir(cache_dir))
    assert names == sorted([f"{e.sha256}.tar" for e in shards] + ["locks"])  # one entry per shard, no parts
    for e in shards:
        assert hashlib.sha256(open(os.path.join(cache_dir, f"{e.sha256}.tar"), "rb").read()).hexdigest() == e.sha256


# -- shards cp -------------------------------------------------------------------------------------------------

def test_cp_round_trip_is_bit_identical_and_resumes_after_an_outage(local_set, s3_bucket, s3_server, tmp_path,
                                                                   capsys):
    url = f"{s3_bucket}/sets/trip"
    shards = open_shard_set(local_set).manifest.shards
    with pytest.raises(LakeError, match="cannot reach"):  # the server dies in the middle of the third shard
        copy_set(local_set, url, progress=_Outage(s3_server, shards[0].bytes + shards[1].bytes + 1))
    s3_server.start()
    with pytest.raises(LakeError, match="not a shard set"):  # no manifest: not a set until complete
        open_shard_set(url)
    assert not storage.exists(f"{url}/{shards[2].path}")  # the interrupted upload was not committed
    s = copy_set(local_set, url)
    assert s.skipped == 2 and s.copied == len(shards) - 2
    assert cli.main(["verify", url]) == 0
    assert "OK:" in capsys.readouterr().out
    assert cli.main(["cp", url, str(tmp_path / "back"), "--no-progress"]) == 0
    assert f"copied {len(shards)} shard(s)" in capsys.readouterr().out
    assert _files(local_set) == _files(tmp_path / "back")
    assert copy_set(url, str(tmp_path / "back")).copied == 0  # again: everything is already there
    assert cli.main(["cp", str(tmp_path / "back"), str(tmp_path / "local-copy"), "--no-progress"]) == 0
    assert _files(local_set) == _files(tmp_path / "local-copy")


def test_cp_refuses_another_set_naming_both_fingerprints_and_overwrite_replaces_it(tmp_path, s3_bucket, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_set(a, {"train": [5, 5, 5, 5]}, rows_per_shard=5, seed=1)
    write_set(b, {"train": [5, 5]}, rows_per_shard=5, seed=2)
    fa, fb = open_shard_set(a).fingerprint, open_shard_set(b).fingerprint
    url = f"{s3_bucket}/set"
    copy_set(a, url)
    before = open_shard_set(url).manifest
    assert cli.main(["cp", b, url, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fa in err and fb in err and "--overwrite" in err
    assert open_shard_set(url).manifest.to_json() == before.to_json()  # nothing changed
    assert cli.main(["cp", b, url, "--overwrite", "--no-progress"]) == 0
    assert open_shard_set(url).fingerprint == fb
    problems, _, _ = __import__("shards.verify", fromlist=["verify_set"]).verify_set(url)
    assert problems == []  # the old set's extra shards are gone


# -- every way storage fails: one line, exit 2, nothing written ----------------------------------------------

@pytest.fixture
def no_auth(s3_server, monkeypatch):
    """moto checks signatures against its IAM users: our keys are then unknown (InvalidAccessKeyId)."""
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)


@pytest.mark.parametrize("case", ["no-bucket", "wrong-keys", "refused", "unknown-scheme", "no-filesystem"])
def test_storage_failures_are_one_clear_line(case, remote_set, tmp_path, capsys, monkeypatch, request):
    url, expect = remote_set, None
    if case == "no-bucket":
        url, expect = "s3://no-such-bucket-here/sets/small", "bucket 'no-such-bucket-here' does not exist"
    elif case == "wrong-keys":
        request.getfixturevalue("no_auth")
        expect = "access denied"
    elif case == "refused":
        port = _closed_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        forget_s3_clients()
        expect = f"cannot reach http://127.0.0.1:{port} (connection refused)"
    elif case == "unknown-scheme":
        url, expect = "xyz://bucket/set", "unknown URL scheme xyz://"
    else:
        url, expect = "gs://bucket/set", "no filesystem for gs:// is installed"
    try:
        dst = tmp_path / "dst"
        for argv in (["ls", url], ["verify", url], ["cp", url, str(dst), "--no-progress"]):
            assert cli.main(argv) == 2
            out = capsys.readouterr()
            assert out.out == "" and out.err.startswith(f"error: {url}") and out.err.count("\n") == 1, out.err
            assert expect in out.err, out.err
        assert not dst.exists()
    finally:
        forget_s3_clients()  # the next test gets a client of the real endpoint


# -- hf:// as far as an offline machine allows -------------------------------------------------------------------

def test_hub_revision_and_repo_arguments():
    assert with_revision("hf://datasets/me/set", "v1") == "hf://datasets/me/set@v1"
    assert with_revision("hf://datasets/me/set", "refs/pr/3") == "hf://datasets/me/set@refs%2Fpr%2F3"
    assert with_revision("hf://datasets/me/set/sub", "main") == "hf://datasets/me/set@main/sub"
    assert with_revision("s3://b/set", None) == "s3://b/set"
    with pytest.raises(LakeError, match="applies to an hf:// source or destination only"):
        copy_set("s3://b/set", "/tmp/x", revision="v1")
    with pytest.raises(LakeError, match="give hf://datasets/OWNER/NAME"):
        with_revision("hf://me/set", "v1")


def test_hub_upload_plan_skips_what_is_there_and_stages_links_without_the_manifest(local_set, tmp_path):
    hub = tmp_path / "hub"  # stands for the repository's current content
    copy_set(local_set, str(hub))
    shards = open_shard_set(local_set)
    gone = shards.manifest.shards[1]
    os.remove(hub / gone.path)
    todo, paths = upload_plan(shards, str(hub))
    assert [e.path for e in todo] == [gone.path]
    assert paths == [gone.path, "index.parquet", "quarantine.jsonl"]
    stage = tmp_path / "stage"
    stage_for_upload(shards, paths, str(stage))
    staged = _files(stage)
    assert sorted(staged) == sorted(paths) and "manifest.json" not in staged
    assert all(os.path.islink(stage / p) for p in paths)  # the set itself is not written to
    assert staged == {p: open(os.path.join(local_set, p), "rb").read() for p in paths}


@pytest.mark.parametrize("offline", ["unreachable", "HF_HUB_OFFLINE"])
def test_hub_unreachable_is_one_line(offline, local_set, tmp_path):
    port = _closed_port()
    env = dict(os.environ, HF_TOKEN="hf_test_token_not_real", HF_ENDPOINT=f"http://127.0.0.1:{port}",
               EMOLAKE_CACHE_DIR=str(tmp_path / "cache"))
    if offline == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    reason = "offline mode is on" if offline == "HF_HUB_OFFLINE" else f"cannot reach http://127.0.0.1:{port}"
    for argv in (["cp", local_set, "hf://datasets/someone/emo-set"], ["ls", "hf://datasets/someone/emo-set"]):
        r = subprocess.run([sys.executable, "-m", "shards", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and r.stdout == "", r.stderr
        assert r.stderr.startswith("error: hf://datasets/someone/emo-set") and r.stderr.count("\n") == 1, r.stderr
        assert reason in r.stderr, r.stderr
    assert not (tmp_path / "cache").exists()  # nothing staged before the Hub answered


# -- training ----------------------------------------------------------------------------------------------------

def test_slm_trained_from_s3_equals_the_same_run_on_a_local_copy(tmp_path, s3_bucket, monkeypatch):
    import torch

    from trainers import clap, slm
    from trainers.checkpoint import load_checkpoint

    root = str(tmp_path / "set")
    write_set(root, {"train": [16] * 6, "val": [16, 16], "test": [16]}, rows_per_shard=32,
              manifest=make_manifest(num_classes=3, audio_dim=16, text_dim=12))
    assert clap.main(["--data-root", root, "--save-dir", str(tmp_path / "clap"), "--epochs", "1", "--batch-size",
                      "32", "--num-workers", "0", "--no-progress"]) == 0
    proj = str(tmp_path / "clap_projectors.pt")
    assert clap.main(["export", "--checkpoint", str(tmp_path / "clap" / "clap_best.pt"), "--out", proj]) == 0
    url = f"{s3_bucket}/slm-set"
    copy_set(root, url)
    monkeypatch.setenv("EMOLAKE_CACHE_DIR", str(tmp_path / "cache"))  # the trainer opens the set with the defaults
    runs = {}
    for name, data in (("local", root), ("s3", url)):
        save = str(tmp_path / name)
        assert slm.main(["--data-root", data, "--clap-ckpt", proj, "--save-dir", save, "--epochs", "2",
                         "--batch-size", "16", "--num-workers", "2", "--lr", "1e-3", "--no-progress",
                         "--no-test-at-end"]) == 0
        runs[name] = load_checkpoint(os.path.join(save, "slm_stage3_last.pt"))
    a, b = runs["local"], runs["s3"]
    assert a["train"]["step"] == b["train"]["step"] == 12
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    cached = {n for n in os.listdir(tmp_path / "cache") if n.endswith(".tar")}
    assert cached == {f"{e.sha256}.tar" for e in open_shard_set(root).manifest.shards if e.split in ("train", "val")}


def test_orphaned_connection_failures_on_the_io_loop_print_nothing(s3_bucket, caplog):
    """When the store goes away mid-run, requests that s3fs had in flight fail in tasks nobody awaits;
    the command's own message is the one line the user sees (no asyncio traceback after it), while any
    other orphaned failure is still logged."""
    import asyncio
    import gc
    import logging

    import fsspec.asyn

    from lake import storage

    fs, _ = storage.filesystem(s3_bucket)

    async def orphan(exc):
        async def fail():
            raise exc

        asyncio.ensure_future(fail())  # dropped unawaited, as an aborted upload's writer task is
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        fsspec.asyn.sync(fs.loop, orphan, ConnectionResetError("Cannot write to closing transport"))
        gc.collect()
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        fsspec.asyn.sync(fs.loop, orphan, ValueError("a bug"))
        gc.collect()
        assert [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_a_damaged_shard_read_by_ranges_from_s3_is_one_line(remote_set, tmp_path):
    """No cache, so no sha256 of a whole download: the member's checksum catches what the object holds."""
    import s3fs

    shards = open_shard_set(remote_set, cache_limit_gb=0)
    entry = shards.manifest.shards_of("train")[0]
    offset, size = entry.blocks[0].members["audio"]
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    path = shards.shard_path(entry)[len("s3://"):]
    data = bytearray(fs.cat_file(path))
    data[offset + size - 2: offset + size] = np.array([np.nan], np.float16).tobytes()  # the last value: NaN
    fs.pipe_file(path, bytes(data))
    loader = ShardLoader(open_shard_set(remote_set, cache_limit_gb=0), "train", 8, seed=3)
    with pytest.raises(LakeError, match=r"block 0 audio\.npy: its bytes differ from the checksum"):
        list(loader)
