"""Shared fixtures: small shard sets written through the real writer."""

from __future__ import annotations

import atexit
import builtins
import errno
import os
import shutil
import tempfile

# One intra-op thread for torch/numpy in the tests and the processes they start: the models here are
# tiny, and on a 2-core machine several threads per process spend their time waiting on each other
# (a 3,000-step test ran 17x faster). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the shard cache of sets read from an object store: a folder of this test session, never the user's own
if "EMOLAKE_CACHE_DIR" not in os.environ:
    _session_tmp = tempfile.mkdtemp(prefix="emolake-test-")
    os.environ["EMOLAKE_CACHE_DIR"] = os.path.join(_session_tmp, "cache")  # the xdist workers inherit it
    atexit.register(shutil.rmtree, _session_tmp, ignore_errors=True)  # removed by the process that made it
import numpy as np
import pytest

from lake.schema import Manifest
from shards.writer import SetWriter

# The test files that take longest (each minutes or near it on 2 cores, most of it in one module-scoped
# fixture or in processes it starts), longest first: `--dist loadfile` hands files to the workers in
# collection order, so starting these first keeps one worker from running the longest alone at the end.
LONGEST_FIRST = ["test_end_to_end.py", "test_ingest_storage.py", "test_trainers.py", "test_sweep.py",
                 "test_robustness.py", "test_ingest.py", "test_several_sets.py", "test_synthetic.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(rank)))  # stable within a file


def make_manifest(num_classes: int = 3, layers=("h0", "h1"), audio_dim: int = 8, text_dim: int = 4,
                  caption: bool = False, name: str = "test-set") -> Manifest:
    return Manifest(
        name=name,
        source={"kind": "test"},
        encoders={"audio": {"id": "test-audio", "revision": None, "dim": audio_dim, "layers": list(layers)},
                  "text": {"id": "test-text", "revision": None, "dim": text_dim}},
        taxonomy=[f"class{i}" for i in range(num_classes)],
        fields=["audio", "text"] + (["caption"] if caption else []) + ["label"],
    )


def random_block(rng: np.random.Generator, n: int, manifest: Manifest, first_key: int = 0, label=None) -> dict:
    L, Da, Dt = len(manifest.audio_layers), manifest.audio_dim, manifest.text_dim
    labels = (np.full(n, label) if label is not None else rng.integers(0, manifest.num_classes, n)).astype(np.int16)
    block = {
        "audio": rng.standard_normal((n, L, Da)).astype(np.float16),
        "text": rng.standard_normal((n, Dt)).astype(np.float16),
        "label": labels,
        "meta": {"keys": [f"clip{first_key + i:06d}" for i in range(n)],
                 "durations": [float(1 + (first_key + i) % 7) for i in range(n)],
                 "transcripts": [f"transcript {first_key + i} – ünïcode" for i in range(n)],
                 "source_uris": [f"test://{first_key + i}" for i in range(n)]},
    }
    if "caption" in manifest.fields:
        block["caption"] = rng.standard_normal((n, Dt)).astype(np.float16)
    return block


def write_set(root, blocks_per_split: dict[str, list[int]], manifest: Manifest | None = None,
              rows_per_shard: int = 10, seed: int = 0, label_order: bool = False):
    """Write a set; returns (manifest, {split: [blocks written]}). `label_order`: one label per block."""
    manifest = manifest or make_manifest()
    rng = np.random.default_rng(seed)
    writer = SetWriter(str(root), manifest, rows_per_shard=rows_per_shard)
    written: dict[str, list[dict]] = {}
    key = 0
    for split, sizes in blocks_per_split.items():
        for j, n in enumerate(sizes):
            label = (j % manifest.num_classes) if label_order else None
            block = random_block(rng, n, manifest, first_key=key, label=label)
            key += n
            writer.add_block(split, block)
            written.setdefault(split, []).append(block)
    return writer.close(), written


def write_labelled_set(root, manifest: Manifest, rows, rng: np.random.Generator, arrays, block: int = 32,
                       rows_per_shard: int = 64) -> Manifest:
    """Train/val/test sets of `rows` rows, in blocks of `block`: each block's labels drawn from `rng`, then
    `arrays(y, k)` gives its embeddings (audio, text, optionally caption) for those labels."""
    writer = SetWriter(str(root), manifest, rows_per_shard=rows_per_shard)
    key = 0
    for split, n in zip(("train", "val", "test"), rows):
        for start in range(0, n, block):
            k = min(block, n - start)
            y = rng.integers(0, manifest.num_classes, k)
            writer.add_block(split, {**arrays(y, k), "label": y.astype(np.int16),
                                     "meta": {"keys": [f"c{key + i}" for i in range(k)], "durations": [1.0] * k,
                                              "transcripts": ["t"] * k, "source_uris": ["u"] * k}})
            key += k
    return writer.close()


def signal_set(root, num_classes=4, rows=(240, 60, 60), seed=0, caption=False, name="sig", taxonomy=None):
    """A set whose embeddings carry the label (class centroid + noise), written through the real writer."""
    manifest = make_manifest(num_classes=num_classes, layers=("h0", "h1"), audio_dim=16, text_dim=12,
                             caption=caption, name=name)
    if taxonomy is not None:
        manifest.taxonomy = list(taxonomy)
    rng = np.random.default_rng(seed)
    ca = rng.standard_normal((num_classes, 2, 16))
    ct = rng.standard_normal((num_classes, 12))

    def arrays(y, k):
        block = {"audio": (ca[y] + 0.8 * rng.standard_normal((k, 2, 16))).astype(np.float16),
                 "text": (ct[y] + 1.5 * rng.standard_normal((k, 12))).astype(np.float16)}
        return {**block, "caption": block["text"].copy()} if caption else block

    write_labelled_set(root, manifest, rows, rng, arrays)
    return str(root)


def torchrun(module: str, *args, nproc: int = 2, timeout: int = 300):
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m MODULE ARGS` from the repository root."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ), cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))


class FullDisk:
    """Every file opened for writing under `root` fails its writes with ENOSPC and no file name, as a
    full disk does (write(2) does not say which file)."""

    def __init__(self, monkeypatch, root):
        self.root, self.real = str(root), builtins.open
        monkeypatch.setattr(builtins, "open", self.open)

    def open(self, file, mode="r", *a, **kw):
        f = self.real(file, mode, *a, **kw)
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(self.root) and set(mode) & set("wax"):
            return NoSpace(f)
        return f


class NoSpace:
    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def small_set(tmp_path):
    root = tmp_path / "set"
    manifest, written = write_set(root, {"train": [5, 3, 4, 2, 6], "val": [4], "test": [3, 2]})
    return root, manifest, written


# -- a real S3 API on loopback: moto's HTTP server, reached by s3fs through AWS_ENDPOINT_URL -----------------

class S3Server:
    """moto's S3 server on 127.0.0.1. `stop()` then `start()` is an outage: the objects survive it (moto
    keeps them in this process) and the server comes back on the same port."""

    def __init__(self):
        self.port, self._server = 0, None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        forget_s3_clients()  # pooled connections to a stopped server would fail

    def stop(self) -> None:
        self._server.stop()
        self._server = None


def forget_s3_clients() -> None:
    """Drop s3fs's cached clients, so the next one reads the environment (endpoint, keys) afresh."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server():
    """The loopback S3 server for the whole session; the AWS environment (inherited by subprocesses) points at it."""
    import logging
    import os

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log
    server = S3Server()
    server.start()
    env = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",  # a stopped server fails at once
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(k, raising=False)
        forget_s3_clients()
        yield server
        if server.running:
            server.stop()
    forget_s3_clients()


_buckets = iter(range(1, 10**6))


def make_bucket() -> str:
    """A fresh, empty bucket on the running loopback server (the `s3_server` fixture): its URL."""
    import s3fs

    name = f"test-bucket-{next(_buckets):04d}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the loopback server; yields its URL, e.g. s3://test-bucket-0001."""
    import s3fs

    url = make_bucket()
    name = url[len("s3://"):]
    yield url
    if not s3_server.running:  # a test that stopped it failed before restarting it
        s3_server.start()
    s3fs.S3FileSystem(skip_instance_cache=True).rm(name, recursive=True)
