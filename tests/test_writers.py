"""Writers and readers of one set at the same time (issue: reliability, second pass).

  two writers        every command that writes a set (ingest, its repair, `shards cp`) holds the set's lock
                     (lake.setlock); `shards cp` writes the manifest only over shards checked against it and
                     unchanged since (shards.copy)
  a swap under a     every build names its shards anew (lake.blocks build ids) and deletes the old ones only
  reader             once the new set is in place (ingest.write.output), so a reader of the old set reads the
                     old bytes or says in one line that the set was replaced (shards.mapped.shard_gone)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

import shards.copy as copy_mod
from ingest.write.output import SetOutput, finish_swap, overwrite_sibling, swap_in
from lake import storage
from lake.blocks import new_build_id, parse_shard_name, path_without_build, shard_relpath
from lake.catalog import ShardSet, open_shard_set
from lake.errors import LakeError
from lake.schema import MANIFEST_NAME
from lake.setlock import LOCK_OBJECT
from shards import cli
from shards.copy import copy_set
from shards.loader import ShardLoader
from shards.verify import verify_set
from shards.writer import SetWriter

from conftest import make_manifest, random_block

SPLITS = {"train": [4] * 12, "val": [4] * 3, "test": [4] * 3}  # 18 shards of one block each, every shard 4 rows
SMALL = {"train": [4] * 2, "val": [4] * 3, "test": [4]}


def _a_set(root, seed: int, build: str = "", splits: dict = SPLITS) -> str:
    """A set of `splits`; two of them with other seeds have the same shard names and sizes, other bytes."""
    manifest = make_manifest(name=f"set-{seed}")
    rng = np.random.default_rng(seed)
    writer = SetWriter(str(root), manifest, rows_per_shard=4, build=build)
    key = 0
    for split, sizes in splits.items():
        for n in sizes:
            writer.add_block(split, random_block(rng, n, manifest, first_key=key))
            key += n
    writer.close()
    return str(root)


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# -- shard names ----------------------------------------------------------------------------------------------

def test_shard_names_carry_their_build_and_names_without_one_still_parse():
    build = new_build_id()
    assert build[0].isalpha() and build != new_build_id()
    for split, worker, seq in [("train", 0, 0), ("test-clean", 12, 123456)]:
        rel = shard_relpath(split, worker, seq, build)
        assert rel.endswith(f"-{build}.tar") and parse_shard_name(rel) == (split, worker, seq, build)
        assert path_without_build(rel) == shard_relpath(split, worker, seq)
        old = shard_relpath(split, worker, seq)  # a set made before build ids
        assert parse_shard_name(old) == (split, worker, seq, "") and path_without_build(old) == old
    with pytest.raises(ValueError):
        shard_relpath("train", 0, 0, "123")  # would read as a sequence number


def test_two_builds_of_the_same_bytes_have_one_fingerprint(tmp_path):
    a, b = _a_set(tmp_path / "a", 1, "abcdef"), _a_set(tmp_path / "b", 1, "ghijkl")
    c = _a_set(tmp_path / "c", 2, "abcdef")
    assert open_shard_set(a).fingerprint == open_shard_set(b).fingerprint != open_shard_set(c).fingerprint
    assert open_shard_set(a).fingerprint == open_shard_set(_a_set(tmp_path / "old", 1)).fingerprint


# -- 1. two writers through `shards cp` -----------------------------------------------------------------------

class _PauseAfter:
    """Stands in for shards.copy.transfer: the copy in the thread `who` stops after `n` shards until `go` is
    set (what SIGSTOP did to the first `shards cp` of the issue), `paused` is set once it has stopped."""

    def __init__(self, n: int):
        self.n, self.done, self.who = n, 0, None
        self.paused, self.go = threading.Event(), threading.Event()
        self.real = copy_mod.transfer

    def __call__(self, src, dst, entry, progress=None):
        self.real(src, dst, entry, progress)
        if threading.current_thread() is self.who:
            self.done += 1
            if self.done == self.n:
                self.paused.set()
                assert self.go.wait(120)


def _start_paused_copy(monkeypatch, src: str, dst: str, after: int):
    pause = _PauseAfter(after)
    monkeypatch.setattr(copy_mod, "transfer", pause)
    outcome: dict = {}

    def first():
        try:
            outcome["summary"] = copy_set(src, dst)
        except LakeError as e:
            outcome["error"] = str(e)

    pause.who = threading.Thread(target=first)
    pause.who.start()
    assert pause.paused.wait(120), outcome
    return pause, outcome


def test_a_second_cp_into_one_destination_is_refused_and_the_first_ends_whole(tmp_path, monkeypatch, capsys):
    a, b = _a_set(tmp_path / "a", 1), _a_set(tmp_path / "b", 2)
    dst = str(tmp_path / "dst")
    pause, outcome = _start_paused_copy(monkeypatch, a, dst, after=14)
    try:
        assert cli.main(["cp", b, dst, "--no-progress"]) == 2  # the issue: it ran to completion, exit 0
    finally:
        pause.go.set()
        pause.who.join(120)
    line = _one_line(capsys.readouterr().err)
    assert f"another shards cp ({socket.gethostname()}, pid {os.getpid()}, since " in line and dst in line
    assert outcome["summary"].copied == 18 and "error" not in outcome
    assert verify_set(dst)[0] == [] and open_shard_set(dst).fingerprint == open_shard_set(a).fingerprint


def test_a_shard_changed_behind_the_lock_keeps_the_manifest_from_being_written(tmp_path, monkeypatch):
    a, b = _a_set(tmp_path / "a", 1), _a_set(tmp_path / "b", 2)
    dst = tmp_path / "dst"
    pause, outcome = _start_paused_copy(monkeypatch, a, str(dst), after=14)
    name = open_shard_set(a).manifest.shards[3].path  # copied and checked before the pause
    shutil.copyfile(os.path.join(b, name), dst / name)  # a writer that takes no lock: same size, other bytes
    pause.go.set()
    pause.who.join(120)
    assert "summary" not in outcome, "a manifest over a mixture of two sets"
    assert f"{dst / name}: changed since this copy checked it" in outcome["error"]
    assert not (dst / MANIFEST_NAME).exists()  # not a set, rather than a mixed one
    assert copy_set(a, str(dst)).copied == 1  # the re-run copies what changed, and ends whole
    assert verify_set(str(dst))[0] == []


def test_the_interleaving_of_the_issue_with_a_lease_that_ran_out_ends_with_one_whole_set(tmp_path, monkeypatch,
                                                                                      s3_bucket):
    """The first copy stopped for longer than its lease: the second takes the lock over and finishes; the first,
    resumed, stops before it writes anything more. The issue's end (the second's manifest over 16 of the first's
    shards, exit 0 twice) cannot happen."""
    a, b = _a_set(tmp_path / "a", 1), _a_set(tmp_path / "b", 2)
    url = f"{s3_bucket}/sets/one"
    pause, outcome = _start_paused_copy(monkeypatch, a, url, after=14)
    try:
        held = json.loads(storage.read_bytes(f"{url}/{LOCK_OBJECT}"))
        assert held["command"] == "shards cp" and held["pid"] == os.getpid()
        assert cli.main(["cp", b, url, "--no-progress"]) == 2  # the first's lease is alive: refused
        held["lease_until"] = time.time() - 1  # ... until it runs out (the first process is stopped)
        storage.write_bytes_atomic(f"{url}/{LOCK_OBJECT}", json.dumps(held).encode())
        second = copy_set(b, url)
        assert second.copied == 18  # same names, same sizes: each of the first's 14 shards is copied over
    finally:
        pause.go.set()
        pause.who.join(120)
    assert "summary" not in outcome and "lock was taken over" in outcome["error"]
    assert verify_set(url)[0] == [] and open_shard_set(url).fingerprint == open_shard_set(b).fingerprint
    assert not storage.exists(f"{url}/{LOCK_OBJECT}")


# -- 2. a set replaced under a reader -------------------------------------------------------------------------

def _batches(loader, limit=None) -> list[dict]:
    out = []
    for batch in loader:
        out.append({k: v.numpy().copy() for k, v in batch.items()})
        if limit is not None and len(out) == limit:
            break
    return out


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from ingest.synthetic import generate  # the corpus generator: only this module's tests need it

    root = tmp_path_factory.mktemp("corpus")
    generate(str(root), clips=60, meld_clips=0, seed=8, workers=1)
    return str(root / "laion")


def _ingest(corpus: str, out, *extra) -> None:
    from ingest.run import main as ingest  # ingest's start-up (encoders, torch): only these tests need it

    assert ingest(["--source", "laion", "--input", corpus, "--out", str(out), "--languages", "en,de",
                   "--decode-workers", "1", "--block-rows", "4", "--rows-per-shard", "8", "--val-fraction", "0.2",
                   "--test-fraction", "0.2", "--device", "cpu", *extra]) == 0


def test_a_reader_of_a_set_replaced_by_overwrite_reads_the_old_bytes_or_says_it_was_replaced(corpus, tmp_path):
    out = tmp_path / "laion"
    _ingest(corpus, out)
    old = open_shard_set(str(out))
    kept = tmp_path / "kept"  # the old set's bytes, to compare with
    shutil.copytree(out, kept)
    want = _batches(ShardLoader(ShardSet(root=str(kept), manifest=old.manifest), "train", 4, training=False))
    assert len(want) >= 4 and len(old.manifest.shards_of("train")) >= 3

    reading = ShardLoader(old, "train", 4, training=False)
    it = iter(reading)
    got = [{k: v.numpy().copy() for k, v in next(it).items()}]  # its first shard is open
    _ingest(corpus, out, "--overwrite", "--max-seconds", "1")  # other bytes, under the same settings' names

    with pytest.raises(LakeError) as replaced:  # the same loader reads on: old bytes, then a shard it never opened
        for batch in it:
            got.append({k: v.numpy().copy() for k, v in batch.items()})
    _same(got, want[:len(got)])
    assert 1 <= len(got) < len(want)
    for error in (replaced.value, _fresh_loader_error(out, old)):
        line = _one_line(str(error))
        assert f"the shard set at {out} was replaced since this reader opened it" in line, line
    assert verify_set(str(out))[0] == [] and open_shard_set(str(out)).fingerprint != old.fingerprint
    assert not {e.path for e in old.manifest.shards} & {e.path for e in open_shard_set(str(out)).manifest.shards}


def _fresh_loader_error(out, old) -> LakeError:
    """What a loader built afresh from the OLD manifest object (the test pass after training) meets."""
    with pytest.raises(LakeError) as e:
        _batches(ShardLoader(ShardSet(root=str(out), manifest=old.manifest), "test", 4, training=False))
    return e.value


def _an_overwrite_behind_a_url(tmp_path, url: str) -> tuple[SetOutput, SetOutput]:
    """(the set at `url`, the --overwrite build beside it, complete): two builds of other bytes."""
    copy_set(_a_set(tmp_path / "old", 1, new_build_id(), SMALL), url)
    out = SetOutput(url, str(tmp_path / "staging"))
    new = overwrite_sibling(out)
    copy_set(_a_set(tmp_path / "new", 2, new_build_id(), SMALL), new.root)
    return out, new


def test_a_swap_behind_a_url_keeps_a_whole_set_at_every_step_and_deletes_the_old_shards_last(tmp_path, s3_bucket,
                                                                                         monkeypatch):
    url = f"{s3_bucket}/sets/swapped"
    out, new = _an_overwrite_behind_a_url(tmp_path, url)
    old = open_shard_set(url, cache_limit_gb=0)
    reader = ShardLoader(old, "val", 4, training=False)  # ranged reads: every block read where it is stored
    first = _batches(reader, limit=1)

    seen = []  # at every copy and every deletion of the swap: the set at `url` is whole (old or new)

    def whole() -> None:
        text = storage.read_bytes(f"{url}/{MANIFEST_NAME}").decode()  # never absent
        listed = {e.path: e.bytes for e in open_shard_set(url, cache_limit_gb=0).manifest.shards}
        there = {f"shards/{n}": v[0] for n, v in storage.versions(f"{url}/shards").items()}
        assert all(there.get(p) == size for p, size in listed.items()), text[:200]
        seen.append(json.loads(text)["name"])

    real_fs = storage.filesystem

    class Watched:
        def __init__(self, fs):
            self.fs = fs

        def copy(self, *a, **kw):
            self.fs.copy(*a, **kw)
            whole()

        def __getattr__(self, name):
            return getattr(self.fs, name)

    monkeypatch.setattr(storage, "filesystem", lambda u: (Watched(real_fs(u)[0]), real_fs(u)[1]))
    real_remove = SetOutput.remove
    monkeypatch.setattr(SetOutput, "remove", lambda self, rel: (real_remove(self, rel), whole()))
    swap_in(new, out)
    monkeypatch.undo()
    assert seen[0] == "set-1" and seen[-1] == "set-2" and sorted(seen) == seen  # old until the switch, then new
    assert verify_set(url)[0] == [] and open_shard_set(url).name == "set-2"
    assert not storage.exists(new.root + "/" + MANIFEST_NAME)
    with pytest.raises(LakeError, match="was replaced since this reader opened it"):
        _batches(reader)  # the rest of the old set's val shards are gone
    assert len(first) == 1


def test_a_swap_behind_a_url_interrupted_after_its_manifest_is_finished_by_the_next_run(tmp_path, s3_bucket,
                                                                                      monkeypatch):
    url = f"{s3_bucket}/sets/half-swapped"
    out, new = _an_overwrite_behind_a_url(tmp_path, url)
    old_paths = {e.path for e in open_shard_set(url).manifest.shards}

    def killed(self, rel):
        raise KeyboardInterrupt  # the ingest killed as it starts deleting the old set's shards

    monkeypatch.setattr(SetOutput, "remove", killed)
    with pytest.raises(KeyboardInterrupt):
        swap_in(new, out)
    monkeypatch.undo()
    assert open_shard_set(url).name == "set-2" and verify_set(url)[0] != []  # the new set, old shards still beside it
    assert "completed an interrupted --overwrite" in finish_swap(out)
    assert verify_set(url)[0] == [] and open_shard_set(url).name == "set-2"
    assert not old_paths & {f"shards/{n}" for n in out.shard_names()} and not storage.exists(new.root + "/_swapping")
