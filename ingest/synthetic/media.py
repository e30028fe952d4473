"""Encoding the synthetic audio as the real data is: mp3 (LAION) and mp4 with AAC + a tiny video (MELD)."""

from __future__ import annotations

import hashlib
import io
from fractions import Fraction

import numpy as np

from ingest.synthetic.spec import AAC_BITRATE_PER_CHANNEL, MELD_SR, MP3_BITRATE, SR


def encode_mp3(wave: np.ndarray, sr: int = SR) -> bytes:
    """Mono mp3 (libmp3lame, 48 kb/s) in memory."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=sr, layout="mono")
        stream.bit_rate = MP3_BITRATE
        stream.codec_context.options = {"compression_level": "7"}  # LAME's fast search: ~2x faster, same size
        for packet in stream.encode(_audio_frame(wave[None, :], sr, "mono")):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _audio_frame(planes: np.ndarray, sr: int, layout: str):
    import av

    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes, dtype=np.float32), format="fltp", layout=layout)
    frame.sample_rate, frame.pts, frame.time_base = sr, 0, Fraction(1, sr)
    return frame


def write_mp4(path: str, planes: np.ndarray, sr: int = MELD_SR, fps: int = 5) -> None:
    """An mp4 like MELD's: AAC audio (2 or 6 channels) plus a tiny 32x32 H.264 video track."""
    import av

    layout = {1: "mono", 2: "stereo", 6: "5.1"}[planes.shape[0]]
    with av.open(path, "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        video.codec_context.options = {"preset": "ultrafast", "threads": "1"}
        audio = out.add_stream("aac", rate=sr, layout=layout)
        audio.bit_rate = AAC_BITRATE_PER_CHANNEL * planes.shape[0]
        # the default coder is ~4x slower on 5.1; the cutoff: the voice is made at 24 kHz (spec.SR), so
        # it has nothing above 12 kHz for the encoder to analyse (a third of its time, saved)
        audio.codec_context.options = {"aac_coder": "fast", "cutoff": str(SR // 2)}
        for packet in audio.encode(_audio_frame(planes, sr, layout)):
            out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
        shade = int(hashlib.sha256(path.rsplit("/", 1)[-1].encode()).digest()[0])
        for i in range(int(planes.shape[1] / sr * fps) + 1):
            img = np.full((32, 32, 3), (shade + 9 * i) % 256, dtype=np.uint8)
            img[:, : (i % 32)] = 255 - img[:, : (i % 32)]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)


def clip_rng(seed: int, key: str) -> np.random.Generator:
    """A clip's own generator: its audio depends on (seed, key) only, not on the worker or the order."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "little"))
