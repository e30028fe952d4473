"""Memory of decoding one long clip: the peak of `decode_audio` and of a decode worker's round trip.

    python -m benchmarks.decode_memory [--minutes 60] [--rate 24000]

A long mp3 (a sweep, mono, `--rate` Hz, 32 kbit/s) is written with PyAV into the temp dir once.
Measured, in wave-sized copies (the 16 kHz float32 wave of the whole clip is one copy):

  decode_tracemalloc   the peak of Python-visible allocations (numpy buffers) inside `decode_audio`
  decode_rss           the rise of the process's peak RSS over `decode_audio` in a fresh process
                       (FFmpeg's own frames and buffers too)
  worker_parent_rss    the parent's peak RSS rise over one `decode_chunk` in a spawned worker, the
                       wave's trip back and one read of it (what a long clip costs ingest's main process)
  worker_rss           the worker's peak RSS rise over that decode and the trip

Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

import av
import numpy as np

from ingest.decode import SAMPLE_RATE, decode_audio
from ingest.decode_pool import decode_chunk
from ingest.sources.base import Clip
from lake.cliargs import at_least, bounded


def long_mp3(minutes: float, rate: int) -> str:
    """A mono mp3 of `minutes` (made once per length and rate, in the temp dir)."""
    path = os.path.join(tempfile.gettempdir(), f"emolake-long-{minutes:g}min-{rate}.mp3")
    if os.path.exists(path):
        return path
    tmp = path + f".{os.getpid()}.tmp"
    with av.open(tmp, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="mono")
        stream.bit_rate = 32000
        n, step, pts = int(minutes * 60 * rate), rate * 10, 0
        while pts < n:  # 10 s frames: the encoder splits them into mp3 frames
            t = (pts + np.arange(min(step, n - pts))) / rate
            wave = (0.4 * np.sin(2 * np.pi * (200 + 50 * np.sin(t / 7)) * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(wave[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
            pts += len(t)
        for packet in stream.encode(None):
            out.mux(packet)
    os.replace(tmp, path)
    return path


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def decode_tracemalloc(path: str) -> int:
    """Peak bytes traced inside decode_audio (numpy's buffers; not FFmpeg's own)."""
    data = open(path, "rb").read()
    tracemalloc.start()
    decode_audio(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def decode_rss(path: str) -> int:
    """Peak RSS rise over decode_audio (FFmpeg's frames and buffers too)."""
    data = open(path, "rb").read()
    base = _rss_now()
    decode_audio(data)
    return _peak_rss() - base


def worker_rss(path: str) -> tuple[int, int]:
    """(the parent's peak RSS rise over one clip decoded in a spawned worker, sent back and read once,
    the worker's peak RSS rise over decoding and sending it)."""
    clip = Clip(key="long", transcript="", label="x", source_uri=path, audio=open(path, "rb").read())
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        worker_base = pool.submit(_rss_now).result()  # the worker is up before the baselines
        base = _rss_now()
        out = pool.submit(decode_chunk, [(clip, 0.0)]).result()
        if out[0][1] is None:
            raise SystemExit(out[0][2])
        float(out[0][1].wave.sum())  # every page of it read, as an encoder does
        rise = _peak_rss() - base
    return rise, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 - worker_base


MEASURES = {"decode_tracemalloc": decode_tracemalloc, "decode_rss": decode_rss,
            "worker_parent_rss": lambda path: worker_rss(path)[0], "worker_rss": lambda path: worker_rss(path)[1]}


def measure(name: str, path: str) -> int:
    """One measure in a fresh process: a peak already reached by an earlier one would hide it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "benchmarks.decode_memory", "--one", name, path], check=True,
                         capture_output=True, text=True, cwd=repo)
    return int(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=bounded(float, at_least(0.1)), default=60.0, help="length of the clip")
    p.add_argument("--rate", type=bounded(int, at_least(8000)), default=24000, help="the mp3's sample rate (Hz)")
    p.add_argument("--one", nargs=2, metavar=("MEASURE", "MP3"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(MEASURES[args.one[0]](args.one[1]))
        return {}
    path = long_mp3(args.minutes, args.rate)
    wave_bytes = int(args.minutes * 60 * SAMPLE_RATE) * 4
    figures = {"benchmark": "decode_memory", "minutes": args.minutes, "mp3_mb": round(os.path.getsize(path) / 1e6, 2),
               "source_rate": args.rate, "wave_mb": round(wave_bytes / 1e6, 1),
               **{f"{name}_copies": round(measure(name, path) / wave_bytes, 2) for name in MEASURES}}
    print(f"{args.minutes:g} min mp3 ({figures['mp3_mb']} MB, {args.rate} Hz): the wave is {figures['wave_mb']} MB; "
          f"decode_audio peaks at {figures['decode_tracemalloc_copies']} wave copies (tracemalloc), "
          f"{figures['decode_rss_copies']} (RSS); in a decode worker it costs the worker "
          f"{figures['worker_rss_copies']} and the parent {figures['worker_parent_rss_copies']}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
