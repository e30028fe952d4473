"""Training batches from an object store: cold (first epoch), warm (the shard cache), ranged reads, local.

    python -m benchmarks.objstore [--url s3://bucket/set] [--rows 100000] [--dim 768] [--batch-size 512]

Without --url it writes a set of --rows rows (audio 1 layer x --dim + text --dim, fp16), starts
moto's S3 server on 127.0.0.1 in a separate process (so that serving does not share this process's
interpreter lock) and uploads the set with `shards cp`. With --url it reads that set, with the
credentials and endpoint of the AWS environment, and downloads a local copy for the local figure.

Figures, each one epoch of shuffled training batches in one process (`ShardLoader`, no workers):
  local    the local copy on a warm page cache (best of three epochs);
  cold     the set behind the URL with an empty shard cache: ranged reads while the prefetcher
           fetches whole shards in the background;
  warm     the next epochs, after the prefetcher finished: every shard memory-mapped from the cache
           (best of two);
  ranged   no cache (--cache-limit 0): every epoch reads the recorded block ranges;
plus `shards cp` local -> store and store -> local in MB/s. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from benchmarks.loader import count, write_set
from lake.cliargs import at_least, bounded


def start_s3_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process on a free loopback port; returns (process, endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto's S3 server did not start")


def epoch_rate(loader, epoch: int) -> float:
    """Rows per second of one epoch."""
    loader.set_epoch(epoch)
    t0 = time.perf_counter()
    return count(loader, "label") / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.objstore", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an existing shard set behind a URL (default: write one and serve it from a "
                                 "loopback S3 server)")
    p.add_argument("--rows", type=bounded(int, at_least(1)), default=100_000, help="rows of the written set (default: 100000)")
    p.add_argument("--dim", type=bounded(int, at_least(1)), default=768, help="embedding width of the written set (default: 768)")
    p.add_argument("--batch-size", type=bounded(int, at_least(1)), default=512, help="loader batch (default: 512)")
    args = p.parse_args(argv)

    from lake.catalog import open_shard_set
    from shards.copy import copy_set
    from shards.loader import ShardLoader

    tmp = tempfile.mkdtemp(prefix="bench-objstore-")
    server = None
    try:
        local = os.path.join(tmp, "local")
        if args.url:
            url = args.url
        else:
            server, endpoint = start_s3_server()
            os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                              AWS_DEFAULT_REGION="us-east-1")
            import s3fs

            s3fs.S3FileSystem().mkdir("bench-bucket")
            url = "s3://bench-bucket/set"
            write_set(os.path.join(tmp, "written"), args.rows, 1, args.dim, name="bench-objstore")
            up = copy_set(os.path.join(tmp, "written"), url)
            print(f"uploaded {up.bytes_copied / 1e6:.0f} MB in {up.seconds:.1f} s")
        down = copy_set(url, local)
        nbytes = sum(e.bytes for e in open_shard_set(local).manifest.shards_of("train"))
        print(f"downloaded {down.bytes_copied / 1e6:.0f} MB in {down.seconds:.1f} s")

        def loader(root, **kw):
            return ShardLoader(open_shard_set(root, **kw), "train", args.batch_size, seed=0)

        base = loader(local)
        epoch_rate(base, 0)  # warm the page cache
        local_rows = max(epoch_rate(base, e) for e in (1, 2, 3))
        remote = loader(url, cache_dir=os.path.join(tmp, "cache"), cache_limit_gb=2 * nbytes / 1e9 + 1)
        t0 = time.perf_counter()
        cold_rows = epoch_rate(remote, 0)
        remote.prefetcher.wait()
        fill_s = time.perf_counter() - t0
        warm_rows = max(epoch_rate(remote, e) for e in (1, 2))
        ranged_rows = epoch_rate(loader(url, cache_limit_gb=0), 0)
        rows = base.num_rows
        print(f"\n{'reader (one epoch, shuffled batches of ' + str(args.batch_size) + ')':<52}{'rows/s':>12}{'MB/s':>8}")
        for name, r in (("local copy, warm page cache", local_rows), ("object store, cold (empty shard cache)", cold_rows),
                        ("object store, warm (from the shard cache)", warm_rows),
                        ("object store, no cache (ranged reads)", ranged_rows)):
            print(f"{name:<52}{r:>12,.0f}{r * nbytes / rows / 1e6:>8,.0f}")
        print(f"\ncache filled in {fill_s:.1f} s after the cold epoch began; warm / local {warm_rows / local_rows:.2f}")
        result = {"benchmark": "objstore", "url": url if args.url else "loopback moto server", "rows": rows,
                  "bytes": nbytes, "batch_size": args.batch_size, "local_rows_per_s": round(local_rows),
                  "cold_rows_per_s": round(cold_rows), "warm_rows_per_s": round(warm_rows),
                  "ranged_rows_per_s": round(ranged_rows), "cache_fill_s": round(fill_s, 2),
                  "warm_vs_local": round(warm_rows / local_rows, 3),
                  "upload_mb_per_s": None if args.url else round(up.bytes_copied / up.seconds / 1e6, 1),
                  "download_mb_per_s": round(down.bytes_copied / down.seconds / 1e6, 1),
                  "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
        print(json.dumps(result))
        return result
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
