"""Decode the same clips two ways: in-process PyAV (`ingest.decode`) vs one `ffmpeg` process per clip.

    python -m benchmarks.decode [--clips 300] [--meld-clips 60] [--workers W] [--corpus DIR]

The previous tooling ran `ffmpeg -i in -ar 16000 -ac 1 ...` once per clip. Here both
ways read the same inputs: LAION mp3 bytes taken out of the synthetic corpus's tars
(fed to ffmpeg on stdin, `-i pipe:0`; to PyAV as bytes) and MELD mp4 paths (AAC, 2 or
6 channels, with a video track). Both produce a 16 kHz mono float32 wave divided by its
peak; ffmpeg writes raw f32le to stdout, read back through a pipe. Tar reading is done
before the clock starts: only decoding is timed. Each way runs in one process, then,
with --workers W, over a pool of W processes (a worker returns only the sample count,
so the wave's trip back is not part of the figure).

The corpus is generated once into the temp dir and reused by later runs with the same
arguments (or pass --corpus DIR). Without an `ffmpeg` on PATH the subprocess side is
skipped, with the command that installs it. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

from ingest.decode import decode_audio
from ingest.synthetic.spec import MAX_S
from lake.cli import run_cli
from lake.cliargs import at_least, bounded

FFMPEG_HINT = "install it with `apt-get install -y ffmpeg` (Debian/Ubuntu) or `brew install ffmpeg` (macOS)"

_CLIPS: list[tuple[str, bytes | str]] = []  # (source, bytes or path): in the workers, set by `_set_clips`


def load_clips(corpus: str) -> list[tuple[str, bytes | str]]:
    """The corpus's decodable clips (status ok in truth.jsonl), LAION as bytes, MELD as paths."""
    clips, tars = [], {}
    with open(os.path.join(corpus, "truth.jsonl"), encoding="utf-8") as f:
        truth = [json.loads(line) for line in f]
    for rec in truth:
        if rec["status"] != "ok":
            continue
        if rec["source"] == "laion":
            path = os.path.join(corpus, rec["file"])
            if path not in tars:
                with tarfile.open(path) as tar:
                    tars[path] = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
            clips.append(("laion mp3", tars[path][rec["member"]]))
        else:
            clips.append(("meld mp4", os.path.join(corpus, rec["file"])))
    return clips


def ffmpeg_decode(src: bytes | str, sample_rate: int = 16000) -> np.ndarray:
    """One `ffmpeg` process: decode, resample to 16 kHz, downmix to mono, raw f32le on stdout."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1",
           "-i", "pipe:0" if isinstance(src, bytes) else src, "-vn", "-ar", str(sample_rate), "-ac", "1",
           "-f", "f32le", "pipe:1"]
    proc = subprocess.run(cmd, input=src if isinstance(src, bytes) else None, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
    wave = np.frombuffer(proc.stdout, dtype=np.float32).copy()
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak >= 1e-8:
        wave /= peak
    return wave


def pyav_decode(src: bytes | str) -> np.ndarray:
    return decode_audio(src).wave


_METHODS = {"pyav": pyav_decode, "subprocess": ffmpeg_decode}


def _set_clips(clips: list[tuple[str, bytes | str]]) -> None:
    global _CLIPS
    _CLIPS = clips


def _one(args: tuple[str, int]) -> int:
    method, i = args
    return len(_METHODS[method](_CLIPS[i][1]))


def run(method: str, indices: list[int], workers: int) -> tuple[float, int]:
    """Seconds to decode `indices` with `method`, and the samples produced."""
    t0 = time.perf_counter()
    if workers <= 1:
        samples = sum(_one((method, i)) for i in indices)
    else:
        # spawned, as ingest's decode pool is (ingest.pipeline); start-up counted: a real run pays it too, once
        with mp.get_context("spawn").Pool(workers, _set_clips, (_CLIPS,)) as pool:
            samples = sum(pool.imap_unordered(_one, [(method, i) for i in indices], chunksize=4))
    return time.perf_counter() - t0, samples


def agreement(indices: list[int]) -> dict:
    """How close the two waves are, per source: length difference and correlation."""
    out = {}
    for source in sorted({_CLIPS[i][0] for i in indices}):
        lens, corrs = [], []
        for i in [i for i in indices if _CLIPS[i][0] == source][:20]:
            a, b = pyav_decode(_CLIPS[i][1]), ffmpeg_decode(_CLIPS[i][1])
            n = min(len(a), len(b))
            lens.append(abs(len(a) - len(b)))
            corrs.append(float(np.corrcoef(a[:n], b[:n])[0, 1]))
        out[source] = {"max_len_diff_samples": int(max(lens)), "min_corr": round(min(corrs), 4)}
    return out


def ensure_corpus(clips: int, meld_clips: int, corpus: str | None, max_seconds: float = MAX_S) -> str:
    """`corpus` if it holds a corpus, else a new one there (or in the temp dir); `max_seconds`: the longest
    LAION clip."""
    from ingest.synthetic import generate

    if corpus and os.path.exists(os.path.join(corpus, "truth.jsonl")):
        return corpus
    corpus = corpus or os.path.join(tempfile.gettempdir(), f"emolake-bench-decode-{clips}-{meld_clips}")
    if not os.path.exists(os.path.join(corpus, "truth.jsonl")):
        shutil.rmtree(corpus, ignore_errors=True)
        t0 = time.perf_counter()
        generate(corpus, clips=clips, meld_clips=meld_clips, seed=0, max_seconds=max_seconds)
        print(f"generated a synthetic corpus in {time.perf_counter() - t0:.1f} s: {corpus}")
    else:
        print(f"reusing the synthetic corpus in {corpus}")
    return corpus


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=bounded(int, at_least(1)), default=300, help="LAION clips in the generated corpus (default: 300)")
    p.add_argument("--meld-clips", type=bounded(int, at_least(0)), default=60, help="MELD clips in the generated corpus (default: 60)")
    p.add_argument("--workers", type=bounded(int, at_least(0)), default=0,
                   help="also time both ways over a pool of this many processes (default: 0, one process only)")
    p.add_argument("--corpus", help="a synthetic corpus to use (made there if missing; default: one in the temp dir)")
    args = p.parse_args(argv)

    global _CLIPS
    corpus = ensure_corpus(args.clips, args.meld_clips, args.corpus)
    _CLIPS = load_clips(corpus)
    indices = list(range(len(_CLIPS)))
    by_source = {s: [i for i in indices if _CLIPS[i][0] == s] for s in sorted({c[0] for c in _CLIPS})}
    ffmpeg = shutil.which("ffmpeg")
    ffmpeg_version = None
    if ffmpeg:
        ffmpeg_version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    else:
        print(f"ffmpeg not found on PATH: the subprocess baseline is skipped; {FFMPEG_HINT}", file=sys.stderr)

    for i in indices[:10]:  # warm up: imports, page cache, FFmpeg's codec tables
        pyav_decode(_CLIPS[i][1])
    audio_s = {s: sum(len(pyav_decode(_CLIPS[i][1])) for i in ix) / 16000 for s, ix in by_source.items()}
    total_audio = sum(audio_s.values())
    methods = ["pyav"] + (["subprocess"] if ffmpeg else [])
    modes = [1] + ([args.workers] if args.workers > 1 else [])
    rows, result = [], {}
    for workers in modes:
        for method in methods:
            total_secs = 0.0
            for source, ix in by_source.items():  # "all" is the sum of the sources' runs
                secs, _ = run(method, ix, workers)
                total_secs += secs
                rows.append((method, workers, source, len(ix), secs, len(ix) / secs, audio_s[source] / secs))
            rows.append((method, workers, "all", len(indices), total_secs, len(indices) / total_secs,
                         total_audio / total_secs))
            suffix = "" if workers == 1 else "_pool"
            result[f"{method}{suffix}_clips_per_s"] = round(len(indices) / total_secs, 1)
            result[f"{method}{suffix}_audio_s_per_s"] = round(total_audio / total_secs, 1)

    print(f"\n{len(indices)} clips, {total_audio:.0f} s of audio "
          f"({', '.join(f'{len(ix)} {s}' for s, ix in by_source.items())}); {os.cpu_count()} CPUs\n")
    print(f"{'method':<12}{'procs':>6}  {'clips':<10}{'n':>6}{'seconds':>10}{'clips/s':>10}{'audio s/s':>11}")
    for method, workers, source, n, secs, cps, aps in rows:
        print(f"{method:<12}{workers:>6}  {source:<10}{n:>6}{secs:>10.2f}{cps:>10.1f}{aps:>11.0f}")
    if ffmpeg:
        print(f"\nPyAV in-process vs one ffmpeg process per clip: "
              f"{result['pyav_clips_per_s'] / result['subprocess_clips_per_s']:.1f}x the clips/s in one process"
              + (f", {result['pyav_pool_clips_per_s'] / result['subprocess_pool_clips_per_s']:.1f}x with "
                 f"{args.workers} workers" if args.workers > 1 else ""))
        agree = agreement(indices)
        print("agreement (first 20 clips per source): "
              + "; ".join(f"{s}: max length diff {v['max_len_diff_samples']} samples, min corr {v['min_corr']}"
                          for s, v in agree.items()))
        print("(a 5.1 mp4 differs by design: ffmpeg's -ac 1 weights the channels, ingest takes their mean)")
        result["agreement"] = agree
    else:
        result.update(subprocess_clips_per_s=None, subprocess_audio_s_per_s=None)
        print(f"\nsubprocess baseline skipped: ffmpeg not found; {FFMPEG_HINT}")
    result = {"benchmark": "decode", "clips": len(indices), "audio_s": round(total_audio, 1),
              "clips_by_source": {s: len(ix) for s, ix in by_source.items()}, "workers": args.workers,
              **result, "speedup_one_process": (round(result["pyav_clips_per_s"] / result["subprocess_clips_per_s"], 2)
                                                if ffmpeg else None),
              "ffmpeg": ffmpeg_version, "pyav": __import__("av").__version__, "cpus": os.cpu_count(),
              "machine": platform.machine(), "processor": platform.processor() or None,
              "python": platform.python_version()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main() and 0))  # a bad --corpus (a file, no room): one line, not a traceback
