"""Ingest throughput: the CPU pipeline on a synthetic corpus.

    python -m benchmarks.ingest [--clips 600] [--decode-workers W] [--audio-encoder fbank|egemaps|compare]

`python -m ingest` (in-process) on a freshly generated synthetic corpus: FFmpeg
decode in worker processes + the audio encoder (fbank in the main process; egemaps/compare,
openSMILE, inside the decode workers) + hashing + block packing + shard writing; then the
stages alone (decode, the audio encoder) in one process on the same clips, i.e. per core, to
show what limits the pipeline. Ends with one JSON line of the figures.

The GPU encoder (AuriStream-100M-shaped, MFU) is measured by `python -m benchmarks.gpu`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time

import numpy as np

from lake.cliargs import at_least, bounded

def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decode workers, once joined): what a
    stage costs in core-seconds, which other jobs on a shared machine do not inflate as they do wall
    time (torch's threads spinning while they wait for work count, though)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def cpu_pipeline(clips: int, decode_workers: int, root: str, audio_encoder: str = "fbank") -> dict:
    from ingest.run import main as ingest
    from ingest.synthetic import generate

    corpus, out = os.path.join(root, "corpus"), os.path.join(root, "set")
    generate(corpus, clips=clips, meld_clips=0, seed=0, workers=decode_workers)
    t0, c0 = time.perf_counter(), cpu_seconds()
    code = ingest(["--source", "laion", "--input", os.path.join(corpus, "laion"), "--out", out, "--languages", "en,de",
                   "--decode-workers", str(decode_workers), "--audio-encoder", audio_encoder,
                   "--text-encoder", "hashing"])
    secs, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if code:
        raise SystemExit(f"ingest failed ({code})")
    from lake.catalog import open_shard_set

    shards = open_shard_set(out)
    rows = shards.index.num_rows
    audio_s = float(np.sum(shards.index.column("duration_s").to_numpy()))
    # the stages alone, on the same clips, in this process
    from ingest.decode import decode_audio
    from ingest.encoders import build_audio_encoder
    from ingest.sources.laion import LaionSource
    from ingest.sources.base import Clip

    src = LaionSource(os.path.join(corpus, "laion"), languages=("en", "de"))
    items = [c for u in src.units() for c in src.read(u) if isinstance(c, Clip)]
    t0 = time.perf_counter()
    waves = []
    for c in items:
        try:
            waves.append(decode_audio(c.audio).wave)
        except Exception:  # noqa: BLE001 - the corrupt clips of the corpus
            pass
    decode_s = time.perf_counter() - t0
    import torch

    enc = build_audio_encoder(audio_encoder)
    enc.encode(waves[:2])  # warm-up (first-call set-up)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core (fbank is torch; openSMILE is single-threaded anyway)
    t0 = time.process_time()
    for i in range(0, len(waves), 32):
        enc.encode(waves[i:i + 32])
    enc_s = time.process_time() - t0  # CPU seconds: per core, whatever else runs
    torch.set_num_threads(threads)
    wave_s = sum(len(w) for w in waves) / 16000
    return {"audio_encoder": audio_encoder, "rows": rows, "seconds": round(secs, 2),
            "clips_per_s": round(rows / secs, 1), "audio_seconds_per_s": round(audio_s / secs, 1),
            "audio_hours": round(audio_s / 3600, 3), "cpu_seconds": round(cpu, 1),
            "audio_seconds_per_cpu_s": round(audio_s / cpu, 1),
            "decode_only_clips_per_s_1proc": round(len(waves) / decode_s, 1),
            "encoder_only_clips_per_cpu_s": round(len(waves) / enc_s, 1),
            "encoder_only_audio_seconds_per_cpu_s": round(wave_s / enc_s, 1),
            "encoder_ms_per_audio_second": round(1000 * enc_s / wave_s, 2), "decode_workers": decode_workers}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=bounded(int, at_least(1)), default=600, help="synthetic LAION clips for the CPU pipeline (default: 600)")
    p.add_argument("--decode-workers", type=bounded(int, at_least(1)), default=max(1, (os.cpu_count() or 2) - 1),
                   help="decode processes (default: cores - 1)")
    p.add_argument("--audio-encoder", default="fbank", choices=["fbank", "egemaps", "compare"],
                   help="the CPU pipeline's audio encoder (default: fbank)")
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench-ingest-")
    result = {"benchmark": "ingest", "cpus": os.cpu_count(), "machine": platform.machine()}
    try:
        cpu = cpu_pipeline(args.clips, args.decode_workers, root, args.audio_encoder)
        print(f"\nCPU pipeline (decode x{cpu['decode_workers']} + {args.audio_encoder} + hashing + writing): "
              f"{cpu['clips_per_s']} clips/s, {cpu['audio_seconds_per_s']} audio-s/s over {cpu['rows']} clips "
              f"({cpu['audio_hours']} h); {cpu['cpu_seconds']} CPU-s = {cpu['audio_seconds_per_cpu_s']} audio-s "
              "per core-second")
        print(f"  alone, one process: decode {cpu['decode_only_clips_per_s_1proc']} clips/s; {args.audio_encoder} "
              f"{cpu['encoder_only_clips_per_cpu_s']} clips = {cpu['encoder_only_audio_seconds_per_cpu_s']} "
              f"audio-s per CPU-second ({cpu['encoder_ms_per_audio_second']} ms per audio second)")
        print("(the GPU encoder, AuriStream-100M-shaped, and its MFU: python -m benchmarks.gpu)")
        result.update(cpu)
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
