"""Ingest throughput: the CPU pipeline on a synthetic corpus; AuriStream-shaped encoding on a GPU.

    python -m benchmarks.ingest [--clips 600] [--decode-workers W] [--audio-encoder fbank|egemaps|compare]
                                [--gpu-clips 512] [--peak-tflops T]

CPU part: `python -m ingest` (in-process) on a freshly generated synthetic corpus: FFmpeg
decode in worker processes + the audio encoder (fbank in the main process; egemaps/compare,
openSMILE, inside the decode workers) + hashing + block packing + shard writing; then the
stages alone (decode, the audio encoder) in one process on the same clips, i.e. per core, to
show what limits the pipeline.

GPU part (only where CUDA is available): the real `auristream` encoder code path with a
randomly initialised model of the real 100M shape (12 layers, 768 wide, 12 heads, RoPE,
vocab 8192, seq_len 4096), built from the stand-in remote code in tests/fixtures, on
synthetic 16 kHz clips; clips/s, audio-seconds/s and model FLOPs utilisation against the
GPU's dense bf16 peak. The WavCoch tokenizer there is the tiny stand-in, so the figure is
the transformer's, not the real tokenizer's. Ends with one JSON line of the figures.
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

# dense bf16 tensor-core peaks, TFLOP/s
PEAK_BF16 = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0,
             "A10": 125.0, "L4": 121.0}


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


def gpu_auristream(n_clips: int, peak_tflops: float | None, root: str) -> dict:
    import torch
    from transformers import AutoConfig, AutoModel

    from ingest.encoders.auristream import AuriStreamEncoder

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fixtures = os.path.join(here, "tests", "fixtures")
    model_dir = os.path.join(root, "auristream_100m_random")
    shutil.copytree(os.path.join(fixtures, "auristream_tiny"), model_dir)
    os.remove(os.path.join(model_dir, "model.safetensors"))
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    for k, v in dict(n_layer=12, n_head=12, n_embd=768, vocab_size=8192, seq_len=4096).items():
        setattr(config, k, v)
    torch.manual_seed(0)
    AutoModel.from_config(config, trust_remote_code=True).save_pretrained(model_dir)
    enc = AuriStreamEncoder(device="cuda", layers="all", model=model_dir, tokenizer=os.path.join(fixtures, "wavcoch_tiny"))
    rng = np.random.default_rng(0)
    lengths = rng.uniform(2.0, 12.0, n_clips)  # LAION clips: a few seconds each
    waves = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in lengths]
    enc.encode(waves[:32])  # warm-up (cuDNN/cuBLAS autotune, allocator)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, n_clips, 64):
        enc.encode(waves[i:i + 64])
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tokens = sum(len(w) // enc.hop for w in waves)
    flops = sum(enc.flops_per_token(min(len(w) // enc.hop, enc.seq_len)) * (len(w) // enc.hop) for w in waves)
    name = torch.cuda.get_device_name(0)
    if peak_tflops is None:
        peak_tflops = next((v for k, v in PEAK_BF16.items() if k.replace(" ", "").lower() in name.replace(" ", "").lower()), None)
    out = {"gpu": name, "clips": n_clips, "clips_per_s": round(n_clips / secs, 1),
           "audio_seconds_per_s": round(float(lengths.sum()) / secs, 1), "tokens_per_s": round(tokens / secs),
           "achieved_tflops": round(flops / secs / 1e12, 2)}
    if peak_tflops:
        out["peak_bf16_tflops"] = peak_tflops
        out["mfu"] = round(flops / secs / 1e12 / peak_tflops, 4)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=600, help="synthetic LAION clips for the CPU pipeline (default: 600)")
    p.add_argument("--decode-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="decode processes (default: cores - 1)")
    p.add_argument("--audio-encoder", default="fbank", choices=["fbank", "egemaps", "compare"],
                   help="the CPU pipeline's audio encoder (default: fbank)")
    p.add_argument("--gpu-clips", type=int, default=512, help="clips for the GPU AuriStream measurement")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the built-in table")
    p.add_argument("--skip-cpu", action="store_true", help="only the GPU part")
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench-ingest-")
    result = {"benchmark": "ingest", "cpus": os.cpu_count(), "machine": platform.machine()}
    try:
        if not args.skip_cpu:
            cpu = cpu_pipeline(args.clips, args.decode_workers, root, args.audio_encoder)
            print(f"\nCPU pipeline (decode x{cpu['decode_workers']} + {args.audio_encoder} + hashing + writing): "
                  f"{cpu['clips_per_s']} clips/s, {cpu['audio_seconds_per_s']} audio-s/s over {cpu['rows']} clips "
                  f"({cpu['audio_hours']} h); {cpu['cpu_seconds']} CPU-s = {cpu['audio_seconds_per_cpu_s']} audio-s "
                  "per core-second")
            print(f"  alone, one process: decode {cpu['decode_only_clips_per_s_1proc']} clips/s; {args.audio_encoder} "
                  f"{cpu['encoder_only_clips_per_cpu_s']} clips = {cpu['encoder_only_audio_seconds_per_cpu_s']} "
                  f"audio-s per CPU-second ({cpu['encoder_ms_per_audio_second']} ms per audio second)")
            result.update(cpu)
        import torch

        if torch.cuda.is_available():
            gpu = gpu_auristream(args.gpu_clips, args.peak_tflops, root)
            print(f"GPU auristream (100M shape, random weights) on {gpu['gpu']}: {gpu['clips_per_s']} clips/s, "
                  f"{gpu['audio_seconds_per_s']} audio-s/s, {gpu['achieved_tflops']} TFLOP/s"
                  + (f", MFU {gpu['mfu']:.1%}" if "mfu" in gpu else ""))
            result["gpu"] = gpu
            if args.skip_cpu:
                result.update(clips_per_s=gpu["clips_per_s"], audio_seconds_per_s=gpu["audio_seconds_per_s"])
            if "mfu" in gpu:
                result["mfu"] = gpu["mfu"]
        else:
            print("no CUDA GPU here: the AuriStream figure and MFU need one")
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
