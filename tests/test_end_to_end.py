"""The whole system from the command line on a synthetic corpus, as a user runs it:
ingest (offline encoders) -> CLAP -> export -> SLM -> MELD -> evaluation of every stage -> predict."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(module: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=400)
    if check:
        assert proc.returncode == 0, f"{module} {args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from ingest.synthetic import generate

    tmp = tmp_path_factory.mktemp("e2e")
    generate(str(tmp / "corpus"), clips=540, meld_clips=220, seed=11, workers=2)
    laion, meld = tmp / "sets" / "laion", tmp / "sets" / "meld"
    common = ["--decode-workers", "1", "--block-rows", "128", "--rows-per-shard", "512"]
    run("ingest", "--source", "laion", "--input", tmp / "corpus" / "laion", "--out", laion, "--languages", "en,de",
        "--val-fraction", "0.15", "--test-fraction", "0.2", *common)
    run("ingest", "--source", "meld", "--input", tmp / "corpus" / "meld", "--out", meld, *common)
    ck = tmp / "ck"
    run("trainers.clap", "--data-root", laion, "--save-dir", ck / "clap", "--epochs", "15", "--batch-size", "128",
        "--lr", "2e-3", "--warmup-steps", "10", "--no-progress")
    run("trainers.clap", "export", "--checkpoint", ck / "clap" / "clap_best.pt", "--out", ck / "clap_projectors.pt")
    run("trainers.slm", "--data-root", laion, "--clap-ckpt", ck / "clap_projectors.pt", "--num-emotions", "9",
        "--save-dir", ck / "slm", "--epochs", "25", "--batch-size", "64", "--lr", "1e-3", "--no-progress")
    run("trainers.meld", "--data-root", meld, "--stage3-ckpt", ck / "slm" / "slm_stage3_best.pt", "--clap-ckpt",
        ck / "clap_projectors.pt", "--mode", "A", "--epochs", "20", "--batch-size", "32", "--lr", "1e-3",
        "--weight-decay", "0.01", "--num-workers", "0", "--save-dir", ck / "meld", "--seed", "17", "--no-progress")
    return tmp, laion, meld, ck


def test_every_stage_reports_and_the_slm_learned(pipeline):
    tmp, laion, meld, ck = pipeline
    reports = tmp / "reports"
    run("evaluation", "stage2", "--clap-ckpt", ck / "clap_projectors.pt", "--data-root", laion, "--out", reports / "s2")
    run("evaluation", "stage3", "--stage3-ckpt", ck / "slm" / "slm_stage3_best.pt", "--data-root", laion,
        "--out", reports / "s3")
    run("evaluation", "stage4", "--meld-ckpt", ck / "meld" / "meld_slm_A_best.pt", "--data-root", meld,
        "--out", reports / "s4")
    for stage in ("s2", "s3", "s4"):
        for name in ("metrics.json", "report.md", "confusion.png"):
            assert (reports / stage / name).stat().st_size > 100, (stage, name)
    s2 = json.load(open(reports / "s2" / "metrics.json"))
    s3 = json.load(open(reports / "s3" / "metrics.json"))
    s4 = json.load(open(reports / "s4" / "metrics.json"))
    assert s3["context"]["split"] == "test" and s3["context"]["fingerprint"]
    assert s3["metrics"]["macro_f1"] > 3 * (1 / 9)  # 9 classes: chance is 0.11
    probe = {r["model"]: r["macro_f1"] for r in s3["metrics"]["baselines"]}
    assert s3["metrics"]["macro_f1"] >= probe["linear probe: both"] - 0.02, probe  # the SLM wins its own inputs' probe
    ablation = {r["input"]: r["change"] for r in s3["metrics"]["ablation"]}
    assert ablation["without audio"] < -0.1, ablation  # the synthetic labels live in the prosody
    n2 = s2["context"]["num_rows"]
    assert s2["metrics"]["audio_to_text"]["R@10"] > 3 * 10 / n2  # far above chance retrieval
    support = [c["support"] for c in s4["metrics"]["per_class"]]
    share = max(support) / sum(support)
    majority_weighted_f1 = share * 2 * share / (1 + share)  # always answering the most frequent class
    assert s4["metrics"]["weighted_f1"] > 1.3 * majority_weighted_f1
    report = (reports / "s4" / "report.md").read_text()
    assert "meld_slm_A_best.pt" in report and s4["context"]["fingerprint"] in report


def test_predict_on_three_formats(pipeline, tmp_path):
    import av

    tmp, _, _, ck = pipeline
    truth = [json.loads(line) for line in open(tmp / "corpus" / "truth.jsonl")]
    clip = next(t for t in truth if t["source"] == "meld" and t["status"] == "ok")
    mp4 = tmp / "corpus" / clip["file"]
    from ingest.decode import decode_audio

    wave = decode_audio(str(mp4)).wave
    files = {"clip.mp4": tmp_path / "clip.mp4"}  # all three beside clip.txt: the same audio, the same transcript
    shutil.copyfile(mp4, files["clip.mp4"])
    for name, codec, fmt in (("clip.wav", "pcm_s16le", "wav"), ("clip.flac", "flac", "flac")):
        path = tmp_path / name
        with av.open(str(path), "w", format=fmt) as c:
            s = c.add_stream(codec, rate=16000, layout="mono")
            frame = av.AudioFrame.from_ndarray((wave[None] * 0.5 * 32767).astype(np.int16), format="s16", layout="mono")
            frame.sample_rate = 16000
            for p in s.encode(frame):
                c.mux(p)
            for p in s.encode(None):
                c.mux(p)
        files[name] = path
    (tmp_path / "clip.txt").write_text(clip["transcript"])  # a transcript beside clip.wav and clip.flac
    proc = run("evaluation", "predict", "--stage3-ckpt", ck / "slm" / "slm_stage3_best.pt", "--clap-ckpt",
               ck / "clap_projectors.pt", "--meld-ckpt", ck / "meld" / "meld_slm_A_best.pt", "--json", "--top", "3",
               *files.values())
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == [str(p) for p in files.values()]
    for r in results:
        assert len(r["slm"]) == 3 and abs(sum(p["prob"] for p in r["meld"]) - 1) < 1e-3
        assert all(0 <= p["prob"] <= 1 for p in r["slm"])
    assert results[0]["transcript"] == results[1]["transcript"] == results[2]["transcript"] == clip["transcript"]
    # the same audio (and transcript) in three containers: the same answer
    assert results[0]["meld"][0]["label"] == results[1]["meld"][0]["label"] == results[2]["meld"][0]["label"]
    text = run("evaluation", "predict", "--stage3-ckpt", ck / "slm" / "slm_stage3_best.pt", files["clip.wav"]).stdout
    assert "SLM:" in text
    bad = tmp_path / "notaudio.mp3"
    bad.write_bytes(b"this is not audio")
    proc = run("evaluation", "predict", "--stage3-ckpt", ck / "slm" / "slm_stage3_best.pt", bad, check=False)
    assert proc.returncode == 1 and "cannot decode" in proc.stdout


def test_wrong_inputs_get_one_clear_message(pipeline):
    tmp, laion, meld, ck = pipeline
    proc = run("evaluation", "stage3", "--stage3-ckpt", ck / "slm" / "slm_stage3_best.pt", "--data-root", meld,
               "--out", tmp / "x", check=False)
    assert proc.returncode == 2 and "taxonomy" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("trainers.slm", "--data-root", laion, "--clap-ckpt", ck / "clap_projectors.pt", "--num-emotions", "7",
               "--save-dir", tmp / "y", check=False)
    assert proc.returncode == 2 and "pass --num-emotions 9" in proc.stderr


def test_predict_flags_inputs_outside_what_the_model_saw(pipeline, tmp_path):
    import av

    _, _, _, ck = pipeline
    def wav(name, samples):
        path = tmp_path / name
        with av.open(str(path), "w", format="wav") as c:
            s = c.add_stream("pcm_s16le", rate=16000, layout="mono")
            frame = av.AudioFrame.from_ndarray(samples[None].astype(np.int16), format="s16", layout="mono")
            frame.sample_rate = 16000
            for p in list(s.encode(frame)) + list(s.encode(None)):
                c.mux(p)
        return path

    rng = np.random.default_rng(0)
    blip = wav("blip.wav", rng.integers(-8000, 8000, 800))  # 50 ms of sound
    hush = wav("hush.wav", np.zeros(16000 * 120))  # two minutes of silence: longer than any training clip
    proc = run("evaluation", "predict", "--stage3-ckpt", ck / "slm" / "slm_stage3_best.pt", "--json", blip, hush)
    blip_r, hush_r = json.loads(proc.stdout)
    assert any(w.startswith("too short: 0.05 s; the model was trained on clips of") for w in blip_r["warnings"])
    assert any(w.startswith("silent") for w in hush_r["warnings"])
    assert any(w.startswith("far longer than the training clips") for w in hush_r["warnings"])
    text = run("evaluation", "predict", "--stage3-ckpt", ck / "slm" / "slm_stage3_best.pt", blip).stdout
    assert "warning: too short" in text
