"""The GPU check: AuriStream-100M-shaped encoding, tokenisation apart, a wav2vec2-base-shaped `hf:`
encoder, and SLM training steps, in one run.

    uv run python -m benchmarks.gpu [--clips 2048] [--hf-clips 1024] [--peak-tflops T] [--rows 200000] [--steps 500]

Needs CUDA; on a machine without it, it says so and exits 0. Under 5 minutes on one GPU:

- encoder: the real `auristream` encoder code (`ingest.encoders.auristream.AuriStreamEncoder`:
  batching, windows, masked pooling, bf16 autocast) on a randomly initialised model of the real
  100M shape (12 layers, 768 wide, 12 heads, RoPE, vocab 8192, seq_len 4096) built from the
  stand-in remote code in tests/fixtures (auristream_tiny: the librilight interface, our code),
  on --clips synthetic 16 kHz clips of 2 - 12 s in batches of 32 sorted by length in runs of 16
  batches, as ingest hands them over (its --batch-size default).
  Timed twice over the same clips: the tokeniser alone (`_tokenize`: the WavCoch stand-in of
  tests/fixtures/wavcoch_tiny, a strided conv, so this is not the real WavCoch's cost) and the
  whole `encode`; the transformer's share is the difference. Reported: clips/s and audio-s/s of
  the transformer and of the whole encode, and model FLOPs utilisation of the transformer
  (`flops_per_token` x tokens / its time) against the GPU's dense bf16 peak (the table below,
  or --peak-tflops).
- hf encoder: the real `hf:` encoder code (`ingest.encoders.hf_speech`: feature extractor,
  windows, batching rule, masked pooling, bf16 autocast) on a randomly initialised model of
  wav2vec2-base's shape (`Wav2Vec2Config()`'s defaults: 7 conv layers of 512, 12 layers, 768 wide,
  12 heads, FFN 3072; feat_extract_norm="group", so no attention mask: clips are never padded).
  Three timings: the bare model forward at batch 16 on 10 s clips (the published anchor's setting:
  ~1,800x real time on one A100 in bf16, NVIDIA's DeepLearningExamples), `encode` of --hf-clips
  10 s clips in batches of 16 (equal lengths share a forward), and `encode` of --hf-clips clips of
  2 - 12 s as ingest hands them over (batches of 32; no two lengths equal, so one forward each).
  Reported: clips/s, audio hours per GPU hour, TFLOP/s (`HfSpeechEncoder.cost`: every conv and
  linear layer plus attention, checked against torch's FLOP counter in the tests) and MFU.
- SLM training: `benchmarks.train` for the SLM stage alone (the trainers' `Run`, batch 512, bf16
  autocast) on a synthetic set of --rows rows, streaming (`ShardLoader`, pinned batches) vs the
  split on the GPU (`DeviceLoader`): steps/s with a synchronisation per step, and as the loop
  runs (one at the end).

Prints a table ready for BENCHMARKS.md, then one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from lake.cliargs import above, at_least, bounded

# dense bf16 tensor-core peaks, TFLOP/s (the first key found in the device's name wins)
PEAK_BF16 = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0,
             "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
SHAPE_100M = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=8192, seq_len=4096)
SHAPE_W2V2_BASE: dict = {}  # Wav2Vec2Config()'s defaults are wav2vec2-base's shape
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")


def peak_of(name: str) -> float | None:
    squash = name.replace(" ", "").lower()
    return next((v for k, v in PEAK_BF16.items() if k.replace(" ", "").lower() in squash), None)


def random_auristream(root: str, shape: dict) -> str:
    """A model folder: the fixture's remote code and config with `shape`, random (seeded) weights."""
    import torch
    from transformers import AutoConfig, AutoModel

    model_dir = os.path.join(root, "auristream_random")
    shutil.copytree(os.path.join(FIXTURES, "auristream_tiny"), model_dir)
    os.remove(os.path.join(model_dir, "model.safetensors"))
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    for k, v in shape.items():
        setattr(config, k, v)
    torch.manual_seed(0)
    AutoModel.from_config(config, trust_remote_code=True).save_pretrained(model_dir)
    return model_dir


def random_wav2vec2(root: str, shape: dict) -> str:
    """A model folder as `save_pretrained` writes it: random (seeded) weights of `shape` over
    Wav2Vec2Config's defaults, and facebook/wav2vec2-base's feature extractor settings."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    model_dir = os.path.join(root, "wav2vec2_random")
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**shape)).save_pretrained(model_dir)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(model_dir)
    return model_dir


def synthetic_clips(n_clips: int, lo_s: float, hi_s: float, seed: int = 0) -> list[np.ndarray]:
    """Noise clips of uniform lengths in [lo_s, hi_s] seconds (LAION clips: a few seconds each)."""
    rng = np.random.default_rng(seed)
    return [0.1 * rng.standard_normal(int(s * 16000), dtype=np.float32) for s in rng.uniform(lo_s, hi_s, n_clips)]


def ingest_groups(waves: list[np.ndarray], batch: int) -> list[list[np.ndarray]]:
    """As ingest hands clips to the encoder: sorted by length in runs of 16 batches, then batched."""
    runs = [sorted(waves[i:i + 16 * batch], key=len) for i in range(0, len(waves), 16 * batch)]
    return [r[i:i + batch] for r in runs for i in range(0, len(r), batch)]


def timed(fn, groups, sync) -> float:
    sync()
    t0 = time.perf_counter()
    for g in groups:
        fn(g)
    sync()
    return time.perf_counter() - t0


def throughput(clips: int, audio_s: float, flops: float, seconds: float, peak_tflops: float | None) -> dict:
    out = {"clips": clips, "audio_s": round(audio_s, 1), "seconds": round(seconds, 3),
           "clips_per_s": round(clips / seconds, 1), "audio_hours_per_gpu_hour": round(audio_s / seconds, 1),
           "tflops": round(flops / seconds / 1e12, 2)}
    if peak_tflops:
        out["mfu"] = round(flops / seconds / 1e12 / peak_tflops, 4)
    return out


def hf_encoder(n_clips: int, peak_tflops: float | None, root: str, device: str = "cuda",
               shape: dict = SHAPE_W2V2_BASE, batch: int = 16, equal_s: float = 10.0,
               lengths_s: tuple[float, float] = (2.0, 12.0)) -> dict:
    """The wav2vec2-base-shaped `hf:` encoder: the bare forward at `batch`, then `encode` of equal and of
    varied clip lengths (module docstring)."""
    import torch

    from ingest.encoders import build_audio_encoder
    from ingest.encoders.compute import autocast

    enc = build_audio_encoder("hf:" + random_wav2vec2(root, shape), device=device, layers="all")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    n = int(equal_s * 16000)
    x = (0.1 * torch.randn(batch, n)).to(device)

    def forward(_):
        with torch.inference_mode(), autocast(enc.device, enc.autocast_dtype):
            enc.model(x, output_hidden_states=True)

    equal = synthetic_clips(n_clips, equal_s, equal_s, seed=1)
    varied = synthetic_clips(n_clips, *lengths_s)
    equal_groups = [equal[i:i + batch] for i in range(0, n_clips, batch)]
    varied_groups = ingest_groups(varied, 32)
    forward(None)  # warm-up: cuDNN/cuBLAS choices, the allocator
    enc.encode(equal_groups[0])
    steps = list(range(max(1, n_clips // batch)))
    out = {"params": sum(p.numel() for p in enc.model.parameters()), "batching": enc.batching,
           "dtype": enc.config()["dtype"], "batch": batch, "equal_s": equal_s}
    out["forward"] = throughput(len(steps) * batch, len(steps) * batch * equal_s,
                                len(steps) * batch * enc.cost(n), timed(forward, steps, sync), peak_tflops)
    for key, waves, groups in (("encode_equal", equal, equal_groups), ("encode_varied", varied, varied_groups)):
        seconds = timed(enc.encode, groups, sync)
        out[key] = throughput(len(waves), sum(len(w) for w in waves) / 16000, sum(enc.cost(len(w)) for w in waves),
                              seconds, peak_tflops)
    return out


def encoder(n_clips: int, peak_tflops: float | None, root: str, device: str = "cuda", shape: dict = SHAPE_100M,
            batch: int = 32) -> dict:
    """Tokenisation and the whole encode, timed apart over the same clips; the transformer is the difference."""
    import torch

    from ingest.encoders.auristream import AuriStreamEncoder

    enc = AuriStreamEncoder(device=device, layers="all", model=random_auristream(root, shape),
                            tokenizer=os.path.join(FIXTURES, "wavcoch_tiny"))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    waves = synthetic_clips(n_clips, 2.0, 12.0)
    groups = ingest_groups(waves, batch)
    enc.encode(groups[0])  # warm-up: cuDNN/cuBLAS choices, the allocator, remote-code imports

    with torch.inference_mode():  # as inside encode
        tokenize_s = timed(enc._tokenize, groups, sync)
    encode_s = timed(enc.encode, groups, sync)
    transformer_s = max(encode_s - tokenize_s, 1e-9)
    audio_s = sum(len(w) for w in waves) / 16000
    tokens = [len(w) // enc.hop for w in waves]
    # windows of seq_len: a clip of n tokens is full windows plus one of the rest (enc.cost counts the same)
    flops = sum(enc.cost(len(w)) for w in waves)
    out = {"clips": n_clips, "audio_s": round(audio_s, 1), "tokens": int(sum(tokens)),
           "tokenize_s": round(tokenize_s, 3), "encode_s": round(encode_s, 3), "transformer_s": round(transformer_s, 3),
           "tokenize_audio_seconds_per_s": round(audio_s / tokenize_s, 1),
           "transformer_clips_per_s": round(n_clips / transformer_s, 1),
           "transformer_audio_seconds_per_s": round(audio_s / transformer_s, 1),
           "encode_clips_per_s": round(n_clips / encode_s, 1),
           "encode_audio_seconds_per_s": round(audio_s / encode_s, 1),
           "transformer_tflops": round(flops / transformer_s / 1e12, 2),
           "block_params": enc._block_params, "dtype": enc.config()["dtype"]}
    if peak_tflops:
        out["peak_bf16_tflops"] = peak_tflops
        out["mfu"] = round(flops / transformer_s / 1e12 / peak_tflops, 4)
    return out


def slm_steps(rows: int, steps: int, root: str, device: str = "cuda") -> dict:
    """SLM training steps on both loader paths (benchmarks.train on the SLM stage)."""
    from benchmarks.train import BATCH, measure, write_set

    data = write_set(root, rows)
    work = os.path.join(root, "work")
    out = {}
    for path in ("streaming", "device"):
        f = measure("slm", data, work, device, path, steps, 10)
        out[path] = {"steps_per_s": round(1000 / f["step_ms_mean"], 1), "step_ms_p50": round(f["step_ms_p50"], 3),
                     "loader_wait_share": round(f["loader_wait_share"], 4), "rows_per_s": round(f["rows_per_s"]),
                     "setup_s": round(f["setup_s"], 2), "amp": f["amp"], "gflop_per_step": round(f["gflop_per_step"], 2)}
        if "rows_per_s_pipelined" in f:
            out[path]["steps_per_s_pipelined"] = round(f["rows_per_s_pipelined"] / BATCH["slm"], 1)
    return out


def table(r: dict) -> str:
    e, s = r["encoder"], r["slm"]
    lines = [f"GPU check on {r['gpu']} ({r['gpu_memory_gb']} GB), {r['cpus']} CPUs, torch {r['torch']}, "
             f"CUDA {r['cuda']}:", "",
             "| figure | value |", "|---|---|",
             f"| AuriStream-100M shape, transformer: clips/s | {e['transformer_clips_per_s']:,} |",
             f"| transformer: audio-seconds/s | {e['transformer_audio_seconds_per_s']:,} |",
             f"| transformer: TFLOP/s ({e['dtype']}) | {e['transformer_tflops']} |",
             f"| transformer: MFU vs dense bf16 peak ({e.get('peak_bf16_tflops', '?')} TFLOP/s) | "
             + (f"{e['mfu']:.1%} |" if "mfu" in e else "no peak known (--peak-tflops) |"),
             f"| WavCoch stand-in tokenisation alone: audio-seconds/s | {e['tokenize_audio_seconds_per_s']:,} |",
             f"| whole encode (tokenise + transformer + pooling): clips/s, audio-s/s | {e['encode_clips_per_s']:,}, "
             f"{e['encode_audio_seconds_per_s']:,} |"]
    h = r["hf_encoder"]
    for key, label in (("forward", f"bare forward, batch {h['batch']} x {h['equal_s']:g} s"),
                       ("encode_equal", f"`encode`, {h['equal_s']:g} s clips in batches of {h['batch']}"),
                       ("encode_varied", "`encode`, 2 - 12 s clips as ingest hands them (one forward each)")):
        f = h[key]
        mfu = f"{f['mfu']:.1%}" if "mfu" in f else "?"
        lines.append(f"| wav2vec2-base shape (`hf:`), {label}: clips/s, audio h per GPU h, TFLOP/s, MFU | "
                     f"{f['clips_per_s']:,}, {f['audio_hours_per_gpu_hour']:,}, {f['tflops']}, {mfu} |")
    for path, label in (("streaming", "streaming (`ShardLoader`)"), ("device", "split on the GPU (`DeviceLoader`)")):
        f = s[path]
        lines.append(f"| SLM training (batch 512), {label}: steps/s synchronised, as the loop runs | "
                     f"{f['steps_per_s']:,}, {f.get('steps_per_s_pipelined', '-')} (loader wait "
                     f"{f['loader_wait_share']:.1%}) |")
    lines.append(f"\n({e['clips']} clips, {e['audio_s']:,.0f} s of audio; SLM on {r['rows']:,} rows, {r['steps']} "
                 "steps a path)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=bounded(int, at_least(1)), default=2048, help="synthetic clips for the encoder (default: 2048)")
    p.add_argument("--hf-clips", type=bounded(int, at_least(16)), default=1024,
                   help="synthetic clips for each `hf:` encoder timing (default: 1024)")
    p.add_argument("--peak-tflops", type=bounded(float, above(0)), help="the GPU's dense bf16 peak, if not in the built-in table")
    p.add_argument("--rows", type=bounded(int, at_least(512)), default=200_000,
                   help="rows of the SLM training set, at least one batch (default: 200000)")
    p.add_argument("--steps", type=bounded(int, at_least(1)), default=500, help="SLM steps timed per loader path (default: 500)")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA GPU is visible to PyTorch on this machine; nothing measured "
              "(run it on a CUDA machine)")
        print(json.dumps({"benchmark": "gpu", "cuda": False}))
        return 0
    props = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or peak_of(name)
    root = tempfile.mkdtemp(prefix="bench-gpu-")
    t0 = time.perf_counter()
    try:
        result = {"benchmark": "gpu", "cuda": torch.version.cuda, "gpu": name,
                  "gpu_memory_gb": round(props.total_memory / 2**30), "cpus": os.cpu_count(),
                  "machine": platform.machine(), "torch": torch.__version__, "rows": args.rows, "steps": args.steps}
        result["encoder"] = encoder(args.clips, peak, root)
        print(f"encoder done in {time.perf_counter() - t0:.0f} s", flush=True)
        result["hf_encoder"] = hf_encoder(args.hf_clips, peak, root)
        print(f"hf encoder done in {time.perf_counter() - t0:.0f} s", flush=True)
        result["slm"] = slm_steps(args.rows, args.steps, root)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        print(table(result))
        print(json.dumps(result))
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
