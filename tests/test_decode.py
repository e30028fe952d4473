"""ingest.decode: any container/codec/rate/channel count in, 16 kHz mono peak-1 float32 out;
anything unusable out as DecodeError with a category. Inputs are written with PyAV here."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from ingest.decode import DecodeError, decode_audio

LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 220.0) -> np.ndarray:
    """[channels, n] float32: a different tone per channel, so channel handling shows."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]).astype(np.float32)


def write(path, planes: np.ndarray, rate: int, fmt: str, codec: str, video: bool = False) -> str:
    layout = LAYOUTS[planes.shape[0]]
    with av.open(str(path), "w", format=fmt) as out:
        if video:
            v = out.add_stream("libx264", rate=5)
            v.width = v.height = 32
            v.pix_fmt = "yuv420p"
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
        if codec.startswith("pcm_s16") or codec == "flac":
            frame = av.AudioFrame.from_ndarray((planes * 32767).astype(np.int16), format="s16p", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if video:
            for i in range(int(planes.shape[1] / rate * 5) + 1):
                vf = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 9 * i % 256, np.uint8), format="rgb24")
                vf.pts = i
                for packet in v.encode(vf):
                    out.mux(packet)
            for packet in v.encode(None):
                out.mux(packet)
    return str(path)


# (name, seconds, rate, channels, format, codec, length tolerance in 16 kHz samples)
CASES = [
    ("mp3-24k-mono", 2.0, 24000, 1, "mp3", "libmp3lame", 64),
    ("mp3-44k-stereo", 1.5, 44100, 2, "mp3", "libmp3lame", 64),
    ("mp4-aac-48k-stereo", 2.0, 48000, 2, "mp4", "aac", 700),
    ("mp4-aac-48k-5.1", 1.0, 48000, 6, "mp4", "aac", 700),
    ("flac-44k", 1.0, 44100, 1, "flac", "flac", 2),
    ("wav-8k", 1.0, 8000, 1, "wav", "pcm_s16le", 2),
    ("wav-22k-stereo", 1.3, 22050, 2, "wav", "pcm_s16le", 2),
    ("wav-48k-f32", 0.7, 48000, 1, "wav", "pcm_f32le", 2),
    ("wav-16k-0.1s", 0.1, 16000, 1, "wav", "pcm_s16le", 2),
    ("wav-u8-11k", 1.0, 11025, 1, "wav", "pcm_u8", 2),
    ("wav-s24-96k-stereo", 0.5, 96000, 2, "wav", "pcm_s24le", 2),
    ("mp3-0.1s", 0.1, 24000, 1, "mp3", "libmp3lame", 64),
]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    files = {}
    for name, seconds, rate, channels, fmt, codec, _ in CASES:
        files[name] = write(root / f"{name}.{fmt}", tone(seconds, rate, channels), rate, fmt, codec)
    files["video-only"] = str(root / "video-only.mp4")
    with av.open(files["video-only"], "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=5)
        v.width = v.height = 32
        v.pix_fmt = "yuv420p"
        for i in range(5):
            vf = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            vf.pts = i
            for packet in v.encode(vf):
                out.mux(packet)
        for packet in v.encode(None):
            out.mux(packet)
    files["av-mp4"] = write(root / "av.mp4", tone(2.0, 48000, 2), 48000, "mp4", "aac", video=True)
    return root, files


def check_wave(d, seconds: float, tol: int):
    assert d.wave.dtype == np.float32 and d.wave.ndim == 1
    assert abs(len(d.wave) - seconds * 16000) <= tol, (len(d.wave), seconds * 16000)
    assert abs(d.duration_s - len(d.wave) / 16000) < 1e-9 and not d.cut
    assert float(np.abs(d.wave).max()) == 1.0  # divided by its own peak: exactly 1
    assert np.all(np.abs(d.wave) <= 1.0) and np.isfinite(d.wave).all()


@pytest.mark.parametrize("name,seconds,rate,channels,fmt,codec,tol", CASES, ids=[c[0] for c in CASES])
def test_decodes_to_16k_mono_peak_one(media, name, seconds, rate, channels, fmt, codec, tol):
    _, files = media
    d = decode_audio(files[name])
    check_wave(d, seconds, tol)
    with open(files[name], "rb") as f:  # bytes (a tar member) give the same wave as the path
        b = decode_audio(f.read())
    np.testing.assert_array_equal(b.wave, d.wave)


def test_mp4_with_video_takes_the_audio(media):
    d = decode_audio(media[1]["av-mp4"])
    check_wave(d, 2.0, 700)


def test_mono_is_the_mean_of_the_channels(tmp_path):
    x = tone(1.0, 44100)[0]
    path = write(tmp_path / "opposite.wav", np.stack([x, -x]), 44100, "wav", "pcm_f32le")
    assert not decode_audio(path).wave.any()  # L + R = 0: silence, not the left channel
    path = write(tmp_path / "half.wav", np.stack([x, 0.5 * x]), 16000, "wav", "pcm_f32le")
    ref = write(tmp_path / "ref.wav", x[None], 16000, "wav", "pcm_f32le")
    np.testing.assert_allclose(decode_audio(path).wave, decode_audio(ref).wave, atol=1e-5)


def test_mean_first_equals_resample_then_mean(media):
    """decode_audio mixes to mono before the rate change (faster); the spec's order, resample
    every channel and then take the mean, gives the same wave."""
    path = media[1]["mp4-aac-48k-5.1"]
    with av.open(path) as c:
        resampler = av.AudioResampler(format="fltp", layout=None, rate=16000)
        frames = [f for fr in c.decode(audio=0) for f in resampler.resample(fr)] + resampler.resample(None)
    ref = np.concatenate([f.to_ndarray() for f in frames], axis=1).mean(axis=0)
    ref /= np.abs(ref).max()
    got = decode_audio(path).wave
    assert len(got) == len(ref) and np.abs(got - ref).max() < 1e-4


def test_tone_survives_resampling(media):
    """A 220 Hz tone from 44.1 kHz flac is still 220 Hz at 16 kHz (rate really converted)."""
    w = decode_audio(media[1]["flac-44k"]).wave
    spectrum = np.abs(np.fft.rfft(w))
    assert abs(np.argmax(spectrum) * 16000 / len(w) - 220) < 2


def test_silence_stays_zeros(tmp_path):
    path = write(tmp_path / "silence.wav", np.zeros((1, 8000), np.float32), 16000, "wav", "pcm_f32le")
    d = decode_audio(path)
    assert len(d.wave) == 8000 and not d.wave.any() and np.isfinite(d.wave).all()


def test_max_seconds_cuts_but_keeps_full_duration(media):
    d = decode_audio(media[1]["wav-22k-stereo"], max_seconds=0.5)
    assert d.cut and len(d.wave) == 8000 and abs(d.duration_s - 1.3) < 1e-3
    assert float(np.abs(d.wave).max()) == 1.0
    full = decode_audio(media[1]["wav-22k-stereo"], max_seconds=5.0)
    assert not full.cut and abs(len(full.wave) - 1.3 * 16000) <= 2


def test_other_sample_rate(media):
    d = decode_audio(media[1]["wav-8k"], sample_rate=8000)
    assert abs(len(d.wave) - 8000) <= 2


@pytest.mark.parametrize("data,category", [
    (b"", "empty audio"),
    (np.random.default_rng(0).bytes(20000), "decode error"),
    (b"this is a text file, not audio\n" * 40, "decode error"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(300), "decode error"),
], ids=["empty", "random", "text", "id3-header-only"])
def test_bad_bytes_raise_decode_error(data, category):
    with pytest.raises(DecodeError) as e:
        decode_audio(data)
    assert e.value.category == category and str(e.value).startswith(category + ":")


def test_bad_files_raise_decode_error(media, tmp_path):
    root, files = media
    cases = {str(tmp_path / "missing.mp3"): "not found", files["video-only"]: "no audio stream"}
    (tmp_path / "empty.mp3").write_bytes(b"")
    cases[str(tmp_path / "empty.mp3")] = "empty audio"
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(1).bytes(30000))  # MELD's dia125_utt3
    cases[str(tmp_path / "garbage.mp4")] = "decode error"
    (tmp_path / "notes.txt").write_text("not audio at all\n" * 50)
    cases[str(tmp_path / "notes.txt")] = "no audio stream"  # FFmpeg reads a .txt as ANSI art: video
    mp4 = open(files["mp4-aac-48k-stereo"], "rb").read()
    (tmp_path / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])
    cases[str(tmp_path / "cut.mp4")] = "decode error"
    for path, category in cases.items():
        with pytest.raises(DecodeError) as e:
            decode_audio(path)
        assert e.value.category == category, (path, str(e.value))


@pytest.mark.parametrize("name", ["mp3-24k-mono", "flac-44k"])
def test_truncated_input_raises(media, name):
    data = open(media[1][name], "rb").read()
    with pytest.raises(DecodeError) as e:
        decode_audio(data[: len(data) // 2])
    assert e.value.category == "truncated"


def test_damaged_input_never_escapes_as_another_exception(media):
    """Random bytes, and real mp3/mp4 files with spans overwritten: a wave or a DecodeError."""
    rng = np.random.default_rng(7)
    originals = [open(media[1][n], "rb").read() for n in ("mp3-24k-mono", "mp4-aac-48k-stereo")]
    for i in range(30):
        if i % 3 == 0:
            data = rng.bytes(int(rng.integers(1, 5000)))
        else:
            data = bytearray(originals[i % 2])
            start = int(rng.integers(0, len(data) - 200))
            data[start: start + 200] = rng.bytes(200)
            data = bytes(data)
        try:
            d = decode_audio(data)
        except DecodeError:
            continue
        assert d.wave.dtype == np.float32 and np.isfinite(d.wave).all() and np.abs(d.wave).max() <= 1.0
