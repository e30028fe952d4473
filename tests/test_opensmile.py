"""`egemaps` / `compare`: openSMILE functionals on really decoded mp3, wav and 48 kHz AAC; the
too-short rule (quarantine below 0.06 s); fp16-safe storage; an ingest run that computes them in
the decode workers and a rebuild from the manifest that gives the stored rows again."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from fractions import Fraction

import av
import numpy as np
import pytest

from ingest.decode import decode_audio
from ingest.encoders import build_audio_encoder, encoders_from_manifest
from ingest.encoders.opensmile import FP16_MAX, KNEE, compress, expand
from lake.schema import reason_category
from ingest.synthetic.media import encode_mp3, write_mp4
from ingest.synthetic.voice import VOICES, profile, sample_cues, syllables, synthesize
from lake.errors import LakeError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIMS = {"egemaps": 88, "compare": 6373}


@pytest.fixture(scope="module")
def encoders():
    return {name: build_audio_encoder(name) for name in DIMS}


def speech(sr: int, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A synthetic voice (glottal pulses, formants, prosody), cut to `seconds`."""
    rng = np.random.default_rng(seed)
    voice = VOICES["onyx"]
    wave, _ = synthesize(sample_cues(profile("Anger"), voice, rng), voice,
                         syllables("well I told you so and you did not listen to a single word of it"), rng, sr=sr)
    return wave[: int(seconds * sr)]


def write_wav(path, wave: np.ndarray, sr: int) -> str:
    """16-bit PCM wav through PyAV (FFmpeg's muxer)."""
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray((wave[None, :] * 32767).astype(np.int16), format="s16p", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sr, 0, Fraction(1, sr)
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            out.mux(packet)
    return str(path)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("opensmile-media")
    (root / "clip.mp3").write_bytes(encode_mp3(speech(24000)))  # LAION's: mono mp3 at 24 kHz
    write_wav(root / "clip.wav", speech(44100, seed=1), 44100)
    stereo = speech(48000, seed=2)
    write_mp4(str(root / "clip.mp4"), np.stack([stereo, 0.5 * stereo]), sr=48000)  # MELD's: AAC 48 kHz + video
    return {k: str(root / f"clip.{k}") for k in ("mp3", "wav", "mp4")}


@pytest.mark.parametrize("fmt", ["mp3", "wav", "mp4"])
def test_features_of_decoded_media(encoders, media, fmt):
    dec = decode_audio(media[fmt])
    assert abs(dec.duration_s - 3.0) < 0.1
    for name, enc in encoders.items():
        out = enc.encode([dec.wave])
        assert out.shape == (1, 1, DIMS[name]) == (1, len(enc.layers), enc.dim) and out.dtype == np.float32
        assert enc.info()["dim"] == len(enc.info()["config"]["feature_names"]) == DIMS[name]
        assert np.isfinite(out).all() and np.isfinite(out.astype(np.float16)).all()
        assert np.abs(out).max() <= FP16_MAX
        raw = enc._smile(dec.wave * np.float32(32767 / 32768), 16000)[0, :, 0]
        small = np.abs(raw) <= KNEE
        np.testing.assert_array_equal(out[0, 0, small], raw[small])  # stored as openSMILE gives them
        np.testing.assert_allclose(expand(out[0, 0]), raw, rtol=1e-5)  # and the rest invertibly compressed
        if name == "egemaps":
            assert small.all()
            assert enc.worker_features(dec.wave)[1] is None  # the decode workers' path: the same features
            np.testing.assert_array_equal(enc.worker_features(dec.wave)[0], out[0])
        else:
            assert (np.abs(raw) > FP16_MAX).sum() > 20  # ComParE: spectral variance, LPC gains (~1e6..1e12)


def test_egemaps_measures_pitch_and_loudness(encoders, tmp_path):
    """On a harmonic 200 Hz tone through a wav, eGeMAPS finds its pitch (semitones above 27.5 Hz)."""
    t = np.arange(48000) / 16000
    tone = sum(np.sin(2 * np.pi * 200 * k * t) / k for k in range(1, 8)).astype(np.float32) * 0.3
    dec = decode_audio(write_wav(tmp_path / "tone.wav", tone, 16000))
    enc = encoders["egemaps"]
    f = dict(zip(enc.feature_names, enc.encode([dec.wave])[0, 0]))
    assert abs(f["F0semitoneFrom27.5Hz_sma3nz_amean"] - 12 * np.log2(200 / 27.5)) < 0.5
    assert f["F0semitoneFrom27.5Hz_sma3nz_stddevNorm"] < 0.02 and f["loudness_sma3_amean"] > 0.5


def test_too_short_clips_are_refused(encoders, tmp_path):
    """Below 0.06 s openSMILE computes nothing: the clip is refused with a `too short` reason."""
    t = np.arange(int(0.05 * 24000)) / 24000
    short = (0.5 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    (tmp_path / "short.mp3").write_bytes(encode_mp3(short))
    files = [str(tmp_path / "short.mp3"), write_wav(tmp_path / "short.wav", short, 24000)]
    for path in files:
        dec = decode_audio(path)
        assert len(dec.wave) == 800  # 0.05 s at 16 kHz
        for name, enc in encoders.items():
            feats, reason = enc.worker_features(dec.wave)
            assert feats is None and reason_category(reason) == "too short" and "0.050 s" in reason
            with pytest.raises(LakeError, match="too short"):
                enc.encode([dec.wave])
    just_enough = decode_audio(files[1]).wave
    just_enough = np.concatenate([just_enough, just_enough[:160]])  # 960 samples: 0.06 s
    for enc in encoders.values():
        feats, reason = enc.features(just_enough)
        assert reason is None and np.isfinite(feats).all()


def test_compression_is_fp16_safe_monotone_and_invertible():
    y = np.concatenate([-np.geomspace(1e38, 1e-3, 4000), [0.0], np.geomspace(1e-3, 1e38, 4000)])
    f = compress(y)
    stored = f.astype(np.float16)
    assert np.isfinite(stored).all() and np.all(np.diff(f) >= 0)
    small = np.abs(y) <= KNEE
    np.testing.assert_array_equal(f[small], y[small].astype(np.float32))
    fits = np.abs(y) < 1e28  # saturates (clipped at 65,504) only beyond ~1.7e28
    assert np.abs(f[fits]).max() < FP16_MAX
    big = fits & ~small
    assert np.abs(expand(stored[big].astype(np.float32)) / y[big] - 1).max() < 0.016


def test_ingest_egemaps_in_decode_workers(tmp_path):
    from ingest.synthetic import generate
    from lake.catalog import open_shard_set
    from shards.mapped import ShardMap
    from shards.verify import verify_set

    corpus = tmp_path / "corpus"
    generate(str(corpus), clips=40, meld_clips=0, seed=5, workers=2)
    truth = [json.loads(line) for line in open(corpus / "truth.jsonl")]
    good = next(t for t in truth if t["status"] == "ok" and t["language"] == "en")
    # one more clip of 0.05 s in a tar, with a good clip's json (less its duration, which would quarantine the
    # clip as a duration mismatch before the encoder sees it)
    tar_path = corpus / good["file"]
    with tarfile.open(tar_path) as tar:
        record = json.loads(tar.extractfile(good["member"][: -len(".mp3")] + ".json").read())
    record.pop("duration", None)
    meta = json.dumps(record).encode()
    prefix = good["member"].rsplit("/", 1)[0] + "/" if "/" in good["member"] else ""
    with tarfile.open(tar_path, "a") as tar:
        for name, data in ((f"{prefix}short.mp3", encode_mp3(speech(24000, seconds=0.05))),
                           (f"{prefix}short.json", meta)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "set"
    proc = subprocess.run([sys.executable, "-m", "ingest", "--source", "laion", "--input", corpus / "laion",
                           "--out", out, "--languages", "en,de", "--decode-workers", "2", "--audio-encoder", "egemaps",
                           "--block-rows", "16"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 too short" in proc.stdout
    assert verify_set(str(out))[0] == []
    shards = open_shard_set(str(out))
    rec = shards.manifest.encoders["audio"]
    assert (rec["id"], rec["dim"], rec["layers"], rec["standardize"]) == ("egemaps", 88, ["functionals"], True)
    cfg = rec["config"]
    assert cfg["feature_set"] == "eGeMAPSv02" and len(cfg["feature_names"]) == 88
    assert cfg["opensmile"] and cfg["openSMILE"][0].isdigit()
    short = [q for q in shards.quarantine() if q["key"].endswith("/short")]
    assert [(q["stage"], reason_category(q["reason"])) for q in short] == [("encode", "too short")]
    ok = {t["key"] for t in truth if t["status"] == "ok"}
    rows = {}
    for e in shards.manifest.shards:
        m = ShardMap(shards.shard_path(e), e)
        for b in range(len(e.blocks)):
            blk = m.block(b)
            assert blk["audio"].dtype == np.float16 and blk["audio"].shape[1:] == (1, 88)
            assert np.isfinite(blk["audio"]).all()
            rows.update(zip(blk["meta"]["keys"], blk["audio"]))
    assert set(rows) == ok
    # the encoder rebuilt from the record (as `predict` does) lands on the stored rows
    audio, _ = encoders_from_manifest(shards.manifest.encoders)
    with tarfile.open(tar_path) as tar:
        wave = decode_audio(tar.extractfile(good["member"]).read()).wave
    np.testing.assert_array_equal(audio.encode([wave]).astype(np.float16)[0], rows[good["key"]])
