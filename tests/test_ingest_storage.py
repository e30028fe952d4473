"""Ingest into an object store (the loopback S3 server): verify, kill -9 and resume with no stray
object, and two torchrun agents (two "nodes" on 127.0.0.1) writing one set."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lake.blocks import path_without_build
from lake.catalog import open_shard_set
from shards.verify import verify_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ("--languages", "en,de", "--decode-workers", "1", "--block-rows", "16", "--rows-per-shard", "32",
        "--val-fraction", "0.2", "--test-fraction", "0.2", "--device", "cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from ingest.synthetic import generate

    root = tmp_path_factory.mktemp("corpus")
    generate(str(root), clips=70, meld_clips=0, seed=4, workers=2)
    return root / "laion"


def ingest(*args, check=True, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "ingest", *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, **kw)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def keys_of(root) -> list[str]:
    return open_shard_set(str(root)).index.column("key").to_pylist()


def objects(url: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    prefix = url[len("s3://"):]
    return sorted(p[len(prefix) + 1:] for p in fs.find(prefix))


@pytest.fixture(scope="module")
def local_set(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "laion"
    ingest("--source", "laion", "--input", corpus, "--out", out, *ARGS)
    return out


def test_ingest_to_s3_verifies_and_equals_the_local_set(corpus, local_set, s3_bucket, tmp_path):
    url = f"{s3_bucket}/sets/laion"
    proc = ingest("--source", "laion", "--input", corpus, "--out", url, *ARGS, "--staging-dir", tmp_path / "staging")
    assert f"check it: python -m shards verify {url}" in proc.stdout
    problems, _, summary = verify_set(url)
    assert problems == [] and summary["rows"] == len(keys_of(local_set))
    assert sorted(keys_of(url)) == sorted(keys_of(local_set))
    local, remote = open_shard_set(str(local_set)).manifest, open_shard_set(url).manifest
    same = [[(path_without_build(s.path), s.sha256) for s in m.shards] for m in (local, remote)]  # byte-identical
    assert same[0] == same[1] and local.fingerprint() == remote.fingerprint()  # each build names its shards anew
    listed = {s.path for s in remote.shards}
    assert {o for o in objects(url) if o.startswith("shards/")} == listed  # nothing else under shards/
    assert not [o for o in objects(url) if o.startswith("_work/") or o == "_lock.json"]
    assert os.listdir(tmp_path / "staging" / "shards") == []  # every staged shard went up and was deleted
    again = ingest("--source", "laion", "--input", corpus, "--out", url, *ARGS, "--staging-dir", tmp_path / "staging")
    assert "already complete" in again.stdout


def _units_done(url: str) -> int:
    """How many segments rank 0 has committed so far (its journal records behind the URL)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    prefix = f"{url[len('s3://'):]}/_work/journal-0000"
    try:
        return sum(b'"units_done"' in fs.cat_file(p) for p in fs.find(prefix))
    except FileNotFoundError:
        return 0


def _ingest_until(corpus, url, tmp_path, units: int, **popen) -> tuple[subprocess.Popen, list[str]]:
    """An ingest into `url` in the background, returned once `units` source units are journalled as done
    (or once it ended: the caller checks that it is still running)."""
    args = ["--source", "laion", "--input", str(corpus), "--out", url, *ARGS, "--checkpoint-mb", "0.02",
            "--staging-dir", str(tmp_path / "staging")]
    proc = subprocess.Popen([sys.executable, "-m", "ingest", *args], cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            **popen)
    deadline = time.time() + 240
    while _units_done(url) < units and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return proc, args


def test_killed_ingest_to_s3_resumes_with_no_duplicate_no_loss_no_stray_object(corpus, local_set, s3_bucket, tmp_path):
    url = f"{s3_bucket}/sets/killed"
    proc, args = _ingest_until(corpus, url, tmp_path, 2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    assert proc.poll() is None, "ingest finished before it could be killed; lower --checkpoint-mb"
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its decode workers, mid-segment (or mid-upload)
    proc.wait()
    assert "manifest.json" not in objects(url)  # a reader never sees the half set as a set
    import s3fs

    stray = f"{url}/shards/train-0000-000099.tar"  # an upload no journal record committed
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(stray[len("s3://"):], b"half an upload")
    resumed = ingest(*args)
    assert "resuming" in resumed.stderr
    assert verify_set(url)[0] == []
    keys = keys_of(url)
    assert len(keys) == len(set(keys)) and set(keys) == set(keys_of(local_set))
    listed = {s.path for s in open_shard_set(url).manifest.shards}
    assert {o for o in objects(url) if o.startswith("shards/")} == listed
    assert not [o for o in objects(url) if o.startswith("_work/")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(module: str, *args, timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes 2` as two agents on 127.0.0.1 (one process each), rendezvous on a fixed free port."""
    port = str(_free_port())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
                                "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
                                "-m", module, *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for r in range(2)]
    done = []
    for a in agents:
        out, err = a.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(a.args, a.returncode, out, err))
    return done


def test_two_nodes_ingest_into_s3_gives_the_single_process_key_set(corpus, local_set, s3_bucket):
    url = f"{s3_bucket}/sets/two-nodes"
    runs = two_nodes("ingest", "--source", "laion", "--input", corpus, "--out", url, *ARGS)
    for r in runs:
        assert r.returncode == 0, r.stdout + r.stderr
    assert verify_set(url)[0] == []
    shards = open_shard_set(url)
    assert {s.name.split("-")[1] for s in shards.manifest.shards} == {"0000", "0001"}  # both nodes wrote shards
    assert shards.manifest.ingest["settings"]["world_size"] == 2
    assert sorted(keys_of(url)) == sorted(keys_of(local_set))


def test_two_nodes_train_from_s3_like_one_node_with_two_processes(s3_bucket, tmp_path):
    """2 nodes x 1 process = 1 node x 2 processes, the same global batch: the same weights."""
    import torch

    from shards.copy import copy_set
    from trainers import clap
    from trainers.checkpoint import load_checkpoint
    from conftest import signal_set

    local = signal_set(tmp_path / "set")
    url = f"{s3_bucket}/sets/sig"
    copy_set(local, url)
    assert clap.main(["--data-root", local, "--save-dir", str(tmp_path / "clap"), "--epochs", "1", "--batch-size", "32",
                      "--no-progress", "--device", "cpu"]) == 0
    proj = str(tmp_path / "p.pt")
    assert clap.main(["export", "--checkpoint", str(tmp_path / "clap" / "clap_best.pt"), "--out", proj]) == 0
    common = ["--data-root", url, "--clap-ckpt", proj, "--epochs", "2", "--batch-size", "32", "--num-workers", "0",
              "--device", "cpu", "--no-progress", "--no-test-at-end", "--lr", "1e-3"]
    for r in two_nodes("trainers.slm", *common, "--save-dir", tmp_path / "nodes"):
        assert r.returncode == 0, r.stdout + r.stderr
    one = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                          "trainers.slm", *common, "--save-dir", str(tmp_path / "procs")], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    a = load_checkpoint(str(tmp_path / "nodes" / "slm_stage3_last.pt"))
    b = load_checkpoint(str(tmp_path / "procs" / "slm_stage3_last.pt"))
    assert a["train"]["step"] == b["train"]["step"] > 0
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert json.dumps(a["loader"]) == json.dumps(b["loader"])


def test_an_object_store_outage_mid_ingest_is_one_line_and_the_rerun_resumes(corpus, local_set, s3_bucket, s3_server,
                                                                              tmp_path):
    url = f"{s3_bucket}/sets/outage"
    proc, args = _ingest_until(corpus, url, tmp_path, 1, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.poll() is None, "ingest finished before the outage"
    s3_server.stop()  # the store goes away mid-run
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        s3_server.start()  # same port, same objects
    assert proc.returncode == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and url.split("/")[2] in last and "cannot reach" in last, last
    resumed = ingest(*args)  # the dead run's lock object names a dead pid of this host: taken over
    assert "resuming" in resumed.stderr
    assert verify_set(url)[0] == [] and sorted(keys_of(url)) == sorted(keys_of(local_set))


def test_ingest_into_a_bucket_that_does_not_exist_is_one_line(corpus, s3_server):
    proc = ingest("--source", "laion", "--input", corpus, "--out", "s3://no-such-bucket-here/sets/x", *ARGS, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "no-such-bucket-here" in last and "does not exist" in last, last
