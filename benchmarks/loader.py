"""Read the same rows three ways: this project's loader, a per-row webdataset pipeline, a raw read.

    python -m benchmarks.loader [--rows 200000] [--dim 768] [--layers 1] [--batch-size 512] [--workers 0]

1. `ShardLoader` over a shard set of format v1 (blocks of 1024 rows), shuffled training
   batches of --batch-size, one process unless --workers;
2. a plain webdataset pipeline over the same rows written one tar member set per row
   (`<key>.audio.npy`, `<key>.text.npy`, `<key>.cls`), decoded with np.load per member;
3. a raw sequential read of the format-v1 shard files' bytes (the physical limit here).

All three run on a warm page cache (each is read once before it is timed); the raw read and
the loader report the best of three passes. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np


def write_sets(root: str, rows: int, dim: int, layers: int, num_classes: int = 36, seed: int = 0):
    import webdataset as wds

    from lake.schema import Manifest
    from shards.writer import SetWriter

    manifest = Manifest(name="bench", source={"kind": "benchmark"},
                        encoders={"audio": {"id": "bench", "revision": None, "dim": dim,
                                            "layers": [f"h{i}" for i in range(layers)]},
                                  "text": {"id": "bench", "revision": None, "dim": dim}},
                        taxonomy=[f"c{i}" for i in range(num_classes)], fields=["audio", "text", "label"])
    rng = np.random.default_rng(seed)
    blocked = SetWriter(os.path.join(root, "v1"), manifest, rows_per_shard=16384)
    os.makedirs(os.path.join(root, "perrow"), exist_ok=True)
    per_row_urls, sink, written = [], None, 0
    for start in range(0, rows, 1024):
        n = min(1024, rows - start)
        block = {"audio": rng.standard_normal((n, layers, dim), dtype=np.float32).astype(np.float16),
                 "text": rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16),
                 "label": rng.integers(0, num_classes, n).astype(np.int16),
                 "meta": {"keys": [f"k{start + i:08d}" for i in range(n)], "durations": [1.0] * n,
                          "transcripts": [""] * n, "source_uris": [""] * n}}
        blocked.add_block("train", block)
        for i in range(n):
            if written % 16384 == 0:
                if sink is not None:
                    sink.close()
                per_row_urls.append(os.path.join(root, "perrow", f"train-{len(per_row_urls):06d}.tar"))
                sink = wds.TarWriter(per_row_urls[-1])
            sink.write({"__key__": block["meta"]["keys"][i], "audio.npy": block["audio"][i],
                        "text.npy": block["text"][i], "cls": int(block["label"][i])})
            written += 1
    sink.close()
    blocked.close()
    return os.path.join(root, "v1"), per_row_urls


def raw_read(paths: list[str], chunk: int = 8 << 20) -> int:
    total = 0
    buf = bytearray(chunk)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                total += n
    return total


def time_loader(root: str, batch: int, workers: int) -> tuple[int, float]:
    from lake.catalog import open_shard_set
    from shards.loader import ShardLoader

    loader = ShardLoader(open_shard_set(root), "train", batch, num_workers=workers, seed=0)
    loader.set_epoch(0)
    for _ in loader:  # warm: page cache, workers started
        pass
    best = None
    for epoch in (1, 2, 3):  # best of three epochs
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        rows = sum(len(b["label"]) for b in loader)
        secs = time.perf_counter() - t0
        best = secs if best is None else min(best, secs)
    return rows, best


def time_per_row(urls: list[str], max_rows: int) -> tuple[int, float]:
    import webdataset as wds

    def decode(sample):
        return (np.load(io.BytesIO(sample["audio.npy"])), np.load(io.BytesIO(sample["text.npy"])),
                int(sample["cls"]))

    def run(limit):
        n = 0
        for _ in wds.WebDataset(urls, shardshuffle=False).map(decode):
            n += 1
            if n >= limit:
                break
        return n

    run(min(max_rows, 2000))
    t0 = time.perf_counter()
    n = run(max_rows)
    return n, time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000, help="rows in the set (default: 200000)")
    p.add_argument("--dim", type=int, default=768, help="embedding width, audio and text (default: 768)")
    p.add_argument("--layers", type=int, default=1, help="stored audio layers (default: 1)")
    p.add_argument("--batch-size", type=int, default=512, help="loader batch (default: 512)")
    p.add_argument("--workers", type=int, default=0, help="loader DataLoader workers (default: 0, one process)")
    p.add_argument("--per-row-max", type=int, default=50_000,
                   help="rows timed for the per-row pipeline (it is slow; its rate is per row)")
    p.add_argument("--keep", help="write the sets here and keep them (default: a temporary directory)")
    args = p.parse_args(argv)
    root = args.keep or tempfile.mkdtemp(prefix="bench-loader-")
    try:
        t0 = time.perf_counter()
        v1, per_row = write_sets(root, args.rows, args.dim, args.layers)
        print(f"wrote {args.rows} rows both ways in {time.perf_counter() - t0:.1f} s under {root}")
        shard_paths = [os.path.join(v1, "shards", f) for f in sorted(os.listdir(os.path.join(v1, "shards")))]
        v1_bytes = sum(os.path.getsize(x) for x in shard_paths)
        pr_bytes = sum(os.path.getsize(x) for x in per_row)
        raw_read(shard_paths)  # warm
        raw_s = None
        for _ in range(3):  # best of three
            t0 = time.perf_counter()
            nbytes = raw_read(shard_paths)
            raw_s = min(raw_s or 1e9, time.perf_counter() - t0)
        raw_rows = args.rows / raw_s
        rows, secs = time_loader(v1, args.batch_size, args.workers)
        loader_rows = rows / secs
        n, secs_pr = time_per_row(per_row, args.per_row_max)
        pr_rows = n / secs_pr
        print(f"\n{'reader':<34}{'rows/s':>14}{'MB/s':>10}")
        print(f"{'raw sequential read (v1 shards)':<34}{raw_rows:>14,.0f}{nbytes / raw_s / 1e6:>10,.0f}")
        print(f"{'ShardLoader (shuffled batches)':<34}{loader_rows:>14,.0f}{loader_rows * v1_bytes / args.rows / 1e6:>10,.0f}")
        print(f"{'webdataset, one member per row':<34}{pr_rows:>14,.0f}{pr_rows * pr_bytes / args.rows / 1e6:>10,.0f}")
        print(f"\nloader / raw read: {loader_rows / raw_rows:.2f}   loader / per-row webdataset: {loader_rows / pr_rows:.1f}x"
              f"   bytes on disk: v1 {v1_bytes / 1e6:.0f} MB, per-row {pr_bytes / 1e6:.0f} MB ({pr_bytes / v1_bytes:.2f}x)")
        result = {"benchmark": "loader", "rows": args.rows, "dim": args.dim, "layers": args.layers,
                  "batch_size": args.batch_size, "workers": args.workers,
                  "loader_rows_per_s": round(loader_rows), "webdataset_per_row_rows_per_s": round(pr_rows),
                  "raw_read_rows_per_s": round(raw_rows), "loader_vs_raw": round(loader_rows / raw_rows, 3),
                  "loader_vs_per_row": round(loader_rows / pr_rows, 1), "v1_bytes": v1_bytes, "per_row_bytes": pr_bytes,
                  "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
        print(json.dumps(result))
        return result
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
