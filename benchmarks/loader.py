"""Read the same rows every way, in one run: this loader, the split on the device, peers, the raw bytes.

    uv run python -m benchmarks.loader                          # loader, device, per-row webdataset, raw
    uv run --group bench python -m benchmarks.loader --peers    # + LitData and MosaicML Streaming (MDS)

For each row width (--layers: stored audio layers L; a row is audio L x 768 + text 768,
fp16, and an int label: 3 KB at L=1, 23 KB at L=14, all of AuriStream's layers) the same
--rows are written in every layout, then read in this one process, shuffled, in batches of
--batch-size, on a warm page cache (every layout's files dropped from the cache and read
back before anything is timed: see `warm`; a width's layouts together stay well inside a
24 GB machine's page cache: 200k rows at L=1 and 40k rows at L=14 by default, ~0.6 GB and
~0.9 GB a layout, 1.8 GB and 1.2 GB one member per row):

- raw: a sequential read of the format-v1 shard files (`readinto` one reused 8 MB buffer):
  the physical limit, not a loader (no shuffle, no batches);
- loader: `ShardLoader` over format v1 (blocks of 1024 rows, shards of 16384), training
  order (blocks permuted, rows shuffled in windows of blocks), num_workers=0;
- loader_first_epoch: the loader's first epoch in the process, which maps every block and checks each
  member against its checksum (once per process; later epochs read the checked views);
- mixed: the same rows written as two sets (the first 60 % and the last 40 %), read as one by
  `ShardLoader([a, b], ...)` (several sets in one run: each set's stream interleaved with the
  other's at its share, shards.partition), num_workers=0;
- device: `DeviceLoader` on --device (cpu by default): the split read once into one tensor
  per field there (its load time is printed), then every batch gathered there (on the CPU
  numpy's take into reused buffers, on CUDA `index_select`), in the loader's order;
- litdata: `litdata.optimize` (fn yielding one {audio, text, label} dict a row, chunk_bytes
  64MB, no compression) -> `StreamingDataset(dir, shuffle=True)` read by
  `StreamingDataLoader(batch_size, num_workers=0)`, as LitData's README reads an optimized
  local dataset (chunks read in place, items decoded by its serializers, default collate);
- mds: `MDSWriter(columns audio ndarray:float16:L,768, text ndarray:float16:768, label int,
  no compression)` -> `StreamingDataset(local=dir, shuffle=True, batch_size)` read by a
  torch `DataLoader(batch_size, num_workers=0)`, MDS's documented local reading;
- webdataset_per_row: one tar member set per row (`<key>.audio.npy`, `.text.npy`, `.cls`),
  `WebDataset(urls, shardshuffle, seed).shuffle(1000).decode().to_tuple(...).batched(batch)`.

The loader, device, litdata and raw figures are the best of --passes full passes; mds and
webdataset_per_row (per-row Python work, ~1000x slower) are timed over --slow-rows rows of
an epoch after a short warm-up. Ends with one JSON line keyed by width, rows/s per reader.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings

import numpy as np

from lake.cliargs import at_least, bounded

DIM, CLASSES, BLOCK = 768, 36, 1024


def make_block(start: int, rows: int, layers: int, seed: int = 0, dim: int = DIM) -> dict:
    """Rows start.. of the set (up to 1024), as the shard writer takes them; seeded by block, so every
    layout (and LitData's worker process) writes the same values."""
    rng = np.random.default_rng([seed, start])
    n = min(BLOCK, rows - start)
    return {"audio": rng.standard_normal((n, layers, dim), dtype=np.float32).astype(np.float16),
            "text": rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16),
            "label": rng.integers(0, CLASSES, n).astype(np.int16),
            "meta": {"keys": [f"k{start + i:08d}" for i in range(n)], "durations": [1.0] * n,
                     "transcripts": [""] * n, "source_uris": [""] * n}}


def make_blocks(rows: int, layers: int, dim: int = DIM):
    for start in range(0, rows, BLOCK):
        yield make_block(start, rows, layers, dim=dim)


def bench_manifest(name: str, layers: int = 1, dim: int = DIM):
    """The manifest of every benchmark's synthetic set: `layers` audio layers and text of `dim`, CLASSES labels."""
    from lake.schema import Manifest

    return Manifest(name=name, source={"kind": "benchmark"},
                    encoders={"audio": {"id": "bench", "revision": None, "dim": dim,
                                        "layers": [f"h{i}" for i in range(layers)]},
                              "text": {"id": "bench", "revision": None, "dim": dim}},
                    taxonomy=[f"c{i}" for i in range(CLASSES)], fields=["audio", "text", "label"])


def write_set(out: str, rows: int, layers: int, dim: int = DIM, name: str = "bench", first: int = 0) -> str:
    """Train rows first..rows of the benchmark's rows at `out`, in format v1 (blocks of 1024, shards of 16,384)."""
    from shards.writer import SetWriter

    writer = SetWriter(out, bench_manifest(name, layers, dim), rows_per_shard=16384)
    for start in range(first, rows, BLOCK):
        writer.add_block("train", make_block(start, rows, layers, dim=dim))
    writer.close()
    return out


def write_v1(root: str, rows: int, layers: int) -> str:
    return write_set(os.path.join(root, "v1"), rows, layers)


def write_mixed(root: str, rows: int, layers: int) -> str:
    """The same rows as v1, as two sets: the first 60 % (whole blocks) and the rest."""
    cut = rows * 3 // 5 // BLOCK * BLOCK
    out = os.path.join(root, "mixed")
    write_set(os.path.join(out, "a"), cut, layers, name="bench-a")
    write_set(os.path.join(out, "b"), rows, layers, name="bench-b", first=cut)
    return out


def write_per_row(root: str, rows: int, layers: int) -> str:
    import webdataset as wds

    out = os.path.join(root, "perrow")
    os.makedirs(out)
    sink, written = None, 0
    for block in make_blocks(rows, layers):
        for i, key in enumerate(block["meta"]["keys"]):
            if written % 16384 == 0:
                if sink is not None:
                    sink.close()
                sink = wds.TarWriter(os.path.join(out, f"train-{written // 16384:06d}.tar"))
            sink.write({"__key__": key, "audio.npy": block["audio"][i], "text.npy": block["text"][i],
                        "cls": int(block["label"][i])})
            written += 1
    sink.close()
    return out


def write_litdata(root: str, rows: int, layers: int) -> str:
    import litdata

    out = os.path.join(root, "litdata")
    for var, name in (("DATA_OPTIMIZER_CACHE_FOLDER", "chunks"), ("DATA_OPTIMIZER_DATA_CACHE_FOLDER", "data")):
        os.environ[var] = os.path.join(root, "litdata-cache", name)  # its scratch folders (else under /tmp)
    litdata.optimize(fn=_BlockRows(rows, layers), inputs=list(range(0, rows, BLOCK)), output_dir=out,
                     chunk_bytes="64MB", num_workers=1, verbose=False, start_method="spawn")
    return out


class _BlockRows:
    """LitData's fn: a block's first row -> that block's rows, one {audio, text, label} dict each."""

    def __init__(self, rows: int, layers: int):
        self.rows, self.layers = rows, layers

    def __call__(self, start: int):
        block = make_block(start, self.rows, self.layers)
        for i in range(len(block["label"])):
            yield {"audio": block["audio"][i], "text": block["text"][i], "label": int(block["label"][i])}


def write_mds(root: str, rows: int, layers: int) -> str:
    from streaming import MDSWriter

    out = os.path.join(root, "mds")
    columns = {"audio": f"ndarray:float16:{layers},{DIM}", "text": f"ndarray:float16:{DIM}", "label": "int"}
    with MDSWriter(out=out, columns=columns, compression=None, size_limit=1 << 26) as writer:
        for block in make_blocks(rows, layers):
            for i in range(len(block["label"])):
                writer.write({"audio": block["audio"][i], "text": block["text"][i], "label": int(block["label"][i])})
    return out


def files_under(root: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


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


def warm(paths: list[str]) -> None:
    """Put the files in the page cache as a reader finds them after reading them from storage.

    Pages just written sit in the cache in the small folios of the writes, and a sequential read
    of those ran at 6-8 GB/s here against 16-17 GB/s for the same bytes read back from disk (the
    loaders were barely affected): so every layout is dropped from the cache and read back.
    """
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # only clean pages can be dropped
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    raw_read(paths)


def best_of(passes: int, run) -> tuple[int, float]:
    """(rows, seconds) of the fastest of `passes` calls of run(i) -> rows."""
    best = None
    for i in range(passes):
        t0 = time.perf_counter()
        rows = run(i)
        secs = time.perf_counter() - t0
        if best is None or secs < best[1]:
            best = (rows, secs)
    return best


def count(batches, key, limit: int | None = None) -> int:
    n = 0
    for b in batches:
        n += len(b[key])
        if limit is not None and n >= limit:
            break
    return n


def best_epochs(loader, passes: int) -> tuple[int, float]:
    """(rows, seconds) of the fastest of `passes` epochs after the one already run (warm)."""
    def epoch(i):
        loader.set_epoch(i + 1)
        return count(loader, "row")
    return best_of(passes, epoch)


def time_loader(v1: str, batch: int, passes: int):
    """(rows, seconds) of the best warm epoch, and (rows, seconds) of the first: the one that maps every block and
    checks each member's checksum (lake.blocks.checksum) once in this process."""
    from lake.catalog import open_shard_set
    from shards.loader import ShardLoader

    loader = ShardLoader(open_shard_set(v1), "train", batch, seed=0)
    t0 = time.perf_counter()
    first = count(loader, "row")  # warm: blocks mapped and checked, buffers allocated
    return best_epochs(loader, passes), (first, time.perf_counter() - t0)


def time_mixed(mixed: str, batch: int, passes: int):
    from lake.catalog import open_shard_set
    from shards.loader import ShardLoader

    loader = ShardLoader([open_shard_set(os.path.join(mixed, x)) for x in ("a", "b")], "train", batch, seed=0)
    count(loader, "row")
    return best_epochs(loader, passes)


def time_device(v1: str, batch: int, passes: int, device: str):
    from lake.catalog import open_shard_set
    from shards.device_loader import DeviceLoader

    t0 = time.perf_counter()
    loader = DeviceLoader.of(open_shard_set(v1), "train", batch, device, seed=0)
    load_s = time.perf_counter() - t0
    count(loader, "row")
    return best_epochs(loader, passes), load_s


def time_litdata(out: str, batch: int, passes: int):
    from litdata import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(out, shuffle=True, seed=0)
    loader = StreamingDataLoader(dataset, batch_size=batch, num_workers=0)
    count(loader, "label")  # warm

    return best_of(passes, lambda i: count(loader, "label"))  # each pass a new epoch (StreamingDataLoader counts them)


def time_mds(out: str, batch: int, limit: int):
    import torch
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    # MDS hands out read-only arrays; torch's collate warns once that its tensors of them must not be written
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    clean_stale_shared_memory()
    dataset = StreamingDataset(local=out, shuffle=True, shuffle_seed=0, batch_size=batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=0)
    count(loader, "label", 4 * batch)  # warm: the shuffle computed, threads started
    t0 = time.perf_counter()
    n = count(loader, "label", limit)
    secs = time.perf_counter() - t0
    del loader, dataset
    clean_stale_shared_memory()
    return n, secs


def time_per_row(out: str, batch: int, limit: int):
    import webdataset as wds

    urls = files_under(out)

    def pipeline(seed):
        return (wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False).shuffle(1000)
                .decode().to_tuple("audio.npy", "text.npy", "cls").batched(batch))
    count(pipeline(1), 2, 4 * batch)  # warm
    t0 = time.perf_counter()
    n = count(pipeline(2), 2, limit)
    return n, time.perf_counter() - t0


def written(root: str, rows: int, layers: int, peers: bool) -> dict[str, str]:
    """{layout: directory}: written under root, or found there from an earlier run with --keep."""
    writers = {"v1": write_v1, "mixed": write_mixed, "perrow": write_per_row}
    if peers:
        writers.update(litdata=write_litdata, mds=write_mds)
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, "written.json")
    done = json.load(open(marker)) if os.path.exists(marker) else {}
    if done.get("rows") != rows or done.get("layers") != layers:
        shutil.rmtree(root)
        os.makedirs(root)
        done = {"rows": rows, "layers": layers, "layouts": {}}
    for name, write in writers.items():
        if name not in done["layouts"]:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)  # a layout an interrupted run left half-written
            done["layouts"][name] = write(root, rows, layers)
            with open(marker, "w") as f:
                json.dump(done, f)
    return {k: done["layouts"][k] for k in writers}


def run_width(root: str, rows: int, layers: int, args) -> dict:
    """Write every layout of one width, read each; {reader: (rows/s, MB/s)} plus what was written."""
    t0 = time.perf_counter()
    layouts = written(root, rows, layers, args.peers)
    sizes = {k: sum(os.path.getsize(f) for f in files_under(v)) for k, v in layouts.items()}
    print(f"L={layers}: {rows} rows as {', '.join(f'{k} {v / 1e6:,.0f} MB' for k, v in sizes.items())} "
          f"(written or found in {time.perf_counter() - t0:.0f} s)")
    for path in layouts.values():
        warm(files_under(path))
    shard_files = files_under(os.path.join(layouts["v1"], "shards"))
    per_row_bytes = sizes["v1"] / rows  # MB/s are of the same rows' bytes (v1's), for every reader

    results = {}

    def record(name, n, secs):
        results[name] = {"rows_per_s": n / secs, "mb_per_s": n * per_row_bytes / secs / 1e6, "rows_timed": n}

    n, secs = best_of(args.passes, lambda i: raw_read(shard_files))
    record("raw", rows, secs)
    best, first = time_loader(layouts["v1"], args.batch_size, args.passes)
    record("loader", *best)
    record("loader_first_epoch", *first)
    record("mixed", *time_mixed(layouts["mixed"], args.batch_size, args.passes))
    (n, secs), load_s = time_device(layouts["v1"], args.batch_size, args.passes, args.device)
    record("device", n, secs)
    results["device"]["load_s"] = load_s
    if args.peers:
        record("litdata", *time_litdata(layouts["litdata"], args.batch_size, args.passes))
        record("mds", *time_mds(layouts["mds"], args.batch_size, args.slow_rows))
    record("webdataset_per_row", *time_per_row(layouts["perrow"], args.batch_size, args.slow_rows))
    return {"rows": rows, "layers": layers, "bytes": sizes, "readers": results}


LABELS = {"raw": "raw sequential read (v1 files)", "loader": "ShardLoader (this project)",
          "mixed": "ShardLoader, the rows as two sets",
          "loader_first_epoch": "ShardLoader, first epoch (checksums)",
          "device": "DeviceLoader (split on {device})", "litdata": "LitData StreamingDataset",
          "mds": "MosaicML Streaming (MDS)", "webdataset_per_row": "webdataset, one member set per row"}


def print_table(width: dict, device: str) -> None:
    r = width["readers"]
    peers = [k for k in ("litdata", "mds", "webdataset_per_row") if k in r]
    print(f"mixed / loader: {r['mixed']['rows_per_s'] / r['loader']['rows_per_s']:.2f}")
    best_peer = max(peers, key=lambda k: r[k]["rows_per_s"])
    print(f"\nL={width['layers']} ({width['rows']:,} rows, {width['bytes']['v1'] / width['rows'] / 1e3:.1f} KB a row)")
    print(f"{'reader':<38}{'rows/s':>13}{'MB/s':>9}{'/ raw':>8}{'/ best peer':>13}")
    for k, v in r.items():
        print(f"{LABELS[k].format(device=device):<38}{v['rows_per_s']:>13,.0f}{v['mb_per_s']:>9,.0f}"
              f"{v['rows_per_s'] / r['raw']['rows_per_s']:>8.2f}{v['rows_per_s'] / r[best_peer]['rows_per_s']:>12.1f}x")
    print(f"(best peer: {best_peer}; device load {r['device']['load_s']:.1f} s; "
          f"mds and webdataset_per_row timed over {r[peers[-1]]['rows_timed']:,} rows)")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="1,14", help="row widths, as stored audio layers (default: 1,14)")
    p.add_argument("--rows", default="200000,40000", help="rows at each width (default: 200000,40000)")
    p.add_argument("--batch-size", type=bounded(int, at_least(1)), default=512, help="batch of every reader (default: 512)")
    p.add_argument("--passes", type=bounded(int, at_least(1)), default=3, help="full passes of the fast readers, best kept (default: 3)")
    p.add_argument("--slow-rows", type=bounded(int, at_least(1)), default=30_000,
                   help="rows timed for mds and webdataset_per_row (per-row readers; default: 30000)")
    p.add_argument("--peers", action="store_true", help="also LitData and MDS (needs `uv run --group bench`)")
    p.add_argument("--device", default="cpu", help="where DeviceLoader holds the split (default: cpu)")
    p.add_argument("--keep", help="write the layouts under this directory and keep them; a later run with the same "
                                  "directory reads them again instead of rewriting (default: a temporary one)")
    args = p.parse_args(argv)
    widths = [int(x) for x in args.layers.split(",")]
    counts = [int(x) for x in args.rows.split(",")]
    if len(counts) != len(widths):
        p.error(f"--rows needs one count per width in --layers ({len(widths)})")
    if args.peers:
        try:
            import litdata  # noqa: F401
            import streaming  # noqa: F401
        except ImportError as e:
            p.exit(2, f"error: --peers needs the bench group ({e.name} is missing); run "
                      "`uv run --group bench python -m benchmarks.loader --peers`\n")
    base = args.keep or tempfile.mkdtemp(prefix="bench-loader-")
    out = {}
    try:
        for layers, rows in zip(widths, counts):
            root = os.path.join(base, f"L{layers}")
            out[f"L{layers}"] = run_width(root, rows, layers, args)
            print_table(out[f"L{layers}"], args.device)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)  # the next width gets the page cache
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    detail = {"benchmark": "loader", "batch_size": args.batch_size, "device": args.device, "cpus": os.cpu_count(),
              "load_avg": os.getloadavg(), "machine": platform.machine(), "python": platform.python_version(),
              "widths": out}
    print(json.dumps(detail, default=float))
    summary = {w: {k: round(v["rows_per_s"]) for k, v in d["readers"].items()} for w, d in out.items()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
