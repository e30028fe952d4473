"""Shared fixtures: small shard sets written through the real writer."""

from __future__ import annotations

import os

# One intra-op thread for torch/numpy in the tests and the processes they start: the models here are
# tiny, and on a 2-core machine several threads per process spend their time waiting on each other
# (a 3,000-step test ran 17x faster). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import pytest

from lake.schema import Manifest
from shards.writer import SetWriter


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


@pytest.fixture
def small_set(tmp_path):
    root = tmp_path / "set"
    manifest, written = write_set(root, {"train": [5, 3, 4, 2, 6], "val": [4], "test": [3, 2]})
    return root, manifest, written
