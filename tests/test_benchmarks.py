"""The benchmark commands start and finish; their timings are not checked (that is the benchmarks' job)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: benchmarks.gpu would measure")
def test_gpu_benchmark_without_cuda_says_so_and_exits_0():
    proc = run_module("benchmarks.gpu")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "no CUDA GPU" in lines[0] and "nothing measured" in lines[0]
    assert json.loads(lines[-1]) == {"benchmark": "gpu", "cuda": False}
    assert "Traceback" not in proc.stderr


def test_train_benchmark_help_and_a_bad_flag():
    proc = run_module("benchmarks.train", "--help")
    assert proc.returncode == 0 and "--stages" in proc.stdout and "--keep" in proc.stdout
    bad = run_module("benchmarks.train", "--stages", "clap,bert")
    assert bad.returncode == 2 and "--stages: choose from clap,slm,meld" in bad.stderr


def test_train_benchmark_runs_every_stage_on_both_paths(tmp_path):
    """A tiny run: each stage's Run is built (SLM from CLAP's exported projectors, MELD from the SLM's
    checkpoint) and stepped on the streaming and the on-device loader; the set is kept for a rerun."""
    from benchmarks.train import main

    out = main(["--rows", "2048", "--steps", "2", "--warmup", "1", "--device", "cpu", "--keep", str(tmp_path)])
    assert set(out["stages"]) == {"clap", "slm", "meld"}
    for stage, batch in (("clap", 1024), ("slm", 512), ("meld", 128)):
        paths = out["stages"][stage]
        assert paths["streaming"]["loader"] == "ShardLoader" and paths["device"]["loader"] == "DeviceLoader"
        for f in paths.values():
            assert f["batch_size"] == batch and f["steps"] == 2 and f["rows_per_s"] > 0
            assert 0 <= f["loader_wait_share"] < 1
    assert out["projection_hours_reference_slm"]["streaming"] > 0
    assert sorted(os.listdir(tmp_path)) == ["set", "set.json"]  # this run's checkpoints removed, the set kept


def test_gpu_benchmark_hf_encoder_code_path_on_cpu(tmp_path):
    """benchmarks.gpu's wav2vec2-base part with a tiny shape on the CPU: the model folder, the three
    timings and their figures (no timing is checked)."""
    from benchmarks.gpu import hf_encoder, table

    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2)
    out = hf_encoder(4, 100.0, str(tmp_path), device="cpu", shape=tiny, batch=2, equal_s=0.25, lengths_s=(0.1, 0.4))
    assert (out["batching"], out["dtype"], out["batch"]) == ("exact", "fp32", 2)  # group norm: never padded
    for key, clips in (("forward", 4), ("encode_equal", 4), ("encode_varied", 4)):
        f = out[key]
        assert f["clips"] == clips and f["clips_per_s"] > 0 and f["audio_hours_per_gpu_hour"] > 0
        assert f["tflops"] >= 0 and 0 <= f["mfu"] < 1
    assert out["forward"]["audio_s"] == 1.0 and out["encode_equal"]["audio_s"] == 1.0
    encoder = {"transformer_clips_per_s": 1.0, "transformer_audio_seconds_per_s": 1.0, "transformer_tflops": 0.0,
               "dtype": "fp32", "tokenize_audio_seconds_per_s": 1.0, "encode_clips_per_s": 1.0,
               "encode_audio_seconds_per_s": 1.0, "clips": 4, "audio_s": 1.0}
    slm = {p: {"steps_per_s": 1.0, "loader_wait_share": 0.0} for p in ("streaming", "device")}
    text = table({"gpu": "cpu", "gpu_memory_gb": 0, "cpus": 2, "torch": "x", "cuda": None, "rows": 1, "steps": 1,
                  "encoder": encoder, "hf_encoder": out, "slm": slm})
    assert text.count("wav2vec2-base shape (`hf:`)") == 3


# -- the held-out speech corpus (benchmarks.speech_corpus) and the SLM against its probe (benchmarks.slm_probe) --

needs_speech_tools = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None,
                                        reason="espeak-ng and ffmpeg (Debian packages) make the corpus")


@needs_speech_tools
def test_speech_corpus_clip_is_real_decodable_speech_and_the_same_for_a_seed():
    """One clip through espeak-ng and the ffmpeg CLI (the corpus is 720 of these, ~0.3 s each)."""
    import io

    import av

    from benchmarks.speech_corpus import draw_speakers, make_clip

    speaker = draw_speakers(1, np.random.default_rng(3))[0]
    mp3, meta = make_clip(speaker, "Anger", "t/000000", 3)
    assert make_clip(speaker, "Anger", "t/000000", 3) == (mp3, meta)  # deterministic for a seed and key
    assert make_clip(speaker, "Anger", "t/000001", 3)[0] != mp3
    with av.open(io.BytesIO(mp3)) as f:
        s = f.streams.audio[0]
        assert s.codec_context.name.startswith("mp3") and s.rate == 22050 and s.channels == 1
        samples = np.concatenate([fr.to_ndarray().reshape(-1) for fr in f.decode(audio=0)])
    assert abs(len(samples) / 22050 - meta["duration"]) < 0.1 and np.abs(samples).max() > 0.05  # not silence
    assert meta["flash_transcription"] and "<prosody" in meta["synthesis"]["ssml"]


def test_speech_corpus_plans_every_emotion_of_every_speaker_in_laion_names():
    from benchmarks.speech_corpus import PROFILES, draw_speakers, plan, tar_name
    from lake.taxonomy import EMONET_PROMPTS

    cast = draw_speakers(3, np.random.default_rng(0))
    cells = plan(40, cast)
    assert len(cells) == 18 and sum(n for _, _, n in cells) == 40 and {n for _, _, n in cells} == {2, 3}
    assert {(s.voice, e) for s, e, _ in cells} == {(s.voice, e) for s in cast for e in PROFILES}
    assert tar_name("usm1", "Fear") == f"en_usm1_intense_{EMONET_PROMPTS['Fear']}.tar"
    proc = run_module("benchmarks.speech_corpus", "--out", "/nonexistent/x", "--clips", "12", "--speakers", "3")
    assert proc.returncode == 2 and "need at least 18 clips" in proc.stderr and "Traceback" not in proc.stderr


def test_slm_probe_help_and_its_mistakes_are_one_line():
    proc = run_module("benchmarks.slm_probe", "--help")
    assert proc.returncode == 0 and "--variant" in proc.stdout and "--corpus-seed" in proc.stdout
    proc = run_module("benchmarks.slm_probe")
    assert proc.returncode == 2 and "give --work DIR" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_module("benchmarks.slm_probe", "--data-root", "s", "--clap-ckpt", "p", "--variant", "noequals")
    assert proc.returncode == 2 and "NAME=" in proc.stderr and "Traceback" not in proc.stderr
