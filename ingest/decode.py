"""Decode any audio FFmpeg reads to a 16 kHz mono, peak-normalised float32 wave, in-process.

Decoding goes through PyAV (FFmpeg's libraries inside the process), not an `ffmpeg`
subprocess per clip: ~1.2M clips make a process spawn and a pipe per clip the larger
cost (`python -m benchmarks.decode` measures both). The input is either encoded bytes
(an mp3 read out of a LAION tar; nothing is extracted to disk) or a path FFmpeg opens
itself (a MELD mp4, whose first audio stream is taken and video ignored).

The wave is what the reference run fed its encoders: **mono = mean over channels**
(not FFmpeg's `-ac 1` downmix matrix, which weights a 5.1 centre channel differently),
resampled with FFmpeg's resampler (`av.AudioResampler`, flushed so the tail is kept),
then divided by its peak and clamped to +-1. The mean is taken before the rate change:
the same wave as resampling every channel and then averaging (resampling is linear),
for a sixth of the resampling work on 5.1. A clip that cannot be used raises
`DecodeError("category: detail")`; ingest counts skips by the category, so every
failure of FFmpeg, PyAV or numpy comes out as that one type.

A segment of a long recording (`start`/`end` seconds, from a manifest) is decoded alone:
FFmpeg seeks to just before `start` (exact for PCM/FLAC, to the frame for compressed
audio), frames are cut to the span by their timestamps, and decoding stops at `end`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import av
import numpy as np

from lake.schema import SAMPLE_RATE

# FFmpeg skips a packet it cannot decode and goes on (as the `ffmpeg` CLI does); a clip
# with more bad packets than this share of all its packets (and more than one) is garbage,
# not a glitch.
_MAX_BAD_PACKET_SHARE = 0.1
_SILENCE_PEAK = 1e-8
# A clip decoding to less than its header's duration by more than this (s, or share) was cut
# short: its transcript and label describe audio that is not there. The same slack applies to
# a segment that ends past the end of its file.
_TRUNCATED_S, _TRUNCATED_SHARE = 0.25, 0.05
# Seek this far before a segment's start, so a compressed stream's decoder is primed (mp3's bit
# reservoir spans a few frames) before the first sample kept; a start within it decodes from 0.
_SEEK_MARGIN_S = 0.5


class DecodeError(Exception):
    """A clip that cannot be decoded. Its message is `"category: detail"`; the category
    (`not found`, `decode error`, `no audio stream`, `empty audio`, `truncated`) is what
    ingest counts."""

    @property
    def category(self) -> str:
        return str(self).split(":", 1)[0].strip()


@dataclass
class Decoded:
    wave: np.ndarray  # [n] float32, mono, `sample_rate` Hz, peak 1 (all zeros for silence)
    duration_s: float  # of the whole decoded clip, before any `max_seconds` cut
    cut: bool  # True when `max_seconds` shortened the wave

    @property
    def samples(self) -> int:
        """Samples of the (possibly cut) wave: what was encoded."""
        return len(self.wave)


def _describe(src: bytes | str) -> str:
    return f"{len(src)} bytes" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)


def _open(src: bytes | str):
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise DecodeError("empty audio: empty input (0 bytes)")
        return av.open(io.BytesIO(src), mode="r")
    path = os.fspath(src)
    if os.path.isdir(path):
        raise DecodeError(f"not a file: {path} is a directory")
    if not os.path.isfile(path):
        raise DecodeError(f"not found: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeError(f"empty audio: {path} is an empty file (0 bytes)")
    return av.open(path, mode="r")


def _mp3_has_length_tag(head: bytes) -> bool:
    """Whether an mp3 carries a Xing/Info/VBRI frame: only then is its declared duration
    exact. Without one FFmpeg estimates it from the first frame's bitrate, which is far off
    for a VBR file that starts quietly, so a length check would quarantine good clips."""
    start = 0
    if head[:3] == b"ID3" and len(head) >= 10:  # skip the ID3v2 tag (syncsafe size)
        size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        start = 10 + size + (10 if head[5] & 0x10 else 0)
    frame = head[start: start + 2048]
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


def _declared_seconds(container, src: bytes | str) -> float | None:
    """The audio stream's duration as the header states it, where that is exact (else None).
    The stream's own, not the container's: an mp4's video track may run longer."""
    stream = container.streams.audio[0]
    if stream.duration and stream.time_base:
        declared = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:
        declared = container.duration / 1e6
    else:
        return None
    if container.format.name == "mp3":
        if isinstance(src, (bytes, bytearray, memoryview)):
            head = bytes(src[:65536])
        else:
            with open(src, "rb") as f:
                head = f.read(65536)
        if not _mp3_has_length_tag(head):
            return None
    elif container.format.name in ("aac", "wav", "ogg"):  # estimated, or clamped to the file's size
        return None
    return declared


# Full scale of each sample format (its name without the planar `p`): ints become floats in +-1.
_FULL_SCALE = {"u8": 128.0, "s16": 2.0 ** 15, "s32": 2.0 ** 31, "s64": 2.0 ** 63, "flt": 1.0, "dbl": 1.0}


def _frame_mono(frame) -> np.ndarray:
    """One decoded frame as float32 mono at its own rate: the mean over its channels.

    Taking the mean before the rate change (not after, as in "resample, then mix") gives
    the same wave to float rounding, because resampling is linear with one filter for
    every channel, and it resamples 1 channel instead of 6 (3x faster on MELD's 5.1).
    """
    n, fmt = frame.samples, frame.format
    if fmt.name == "fltp":  # mp3, aac, opus, vorbis: sum the planes in place, no stacked copy
        planes = [np.frombuffer(p, dtype=np.float32, count=n) for p in frame.planes]
        mono = planes[0].copy()
        for p in planes[1:]:
            mono += p
        if len(planes) > 1:
            mono *= np.float32(1.0 / len(planes))
        return mono
    x = frame.to_ndarray()  # planar: [channels, n]; packed: [1, n * channels], interleaved
    if not fmt.is_planar:
        x = x.reshape(n, -1).T
    base = fmt.name.rstrip("p")
    x = x.astype(np.float32) - (128.0 if base == "u8" else 0.0)
    return (x.mean(axis=0) if len(x) > 1 else x[0]) / np.float32(_FULL_SCALE.get(base, 1.0))


class _Wave:
    """The decoded wave, written where it will stay: one float32 buffer at the target rate.

    Sized from the duration the header states (when it does) and grown in place (`ndarray.resize`:
    a realloc, which the C library serves with mremap for a buffer this size, so the samples are not
    copied), then cut to its length the same way. Only the first `keep` samples are stored
    (`max_seconds`); the rest are counted (`total`) for the clip's duration.
    """

    def __init__(self, expected: int, keep: int | None):
        self.keep = keep
        self.buf = np.empty(max(1, min(expected, keep) if keep is not None else expected), np.float32)
        self.n = 0  # samples stored
        self.total = 0  # samples decoded

    def write(self, x: np.ndarray) -> None:
        self.total += len(x)
        if self.keep is not None:
            x = x[: max(0, self.keep - self.n)]
        need = self.n + len(x)
        if need > len(self.buf):
            grown = max(need, len(self.buf) + len(self.buf) // 4)
            self.buf.resize(grown if self.keep is None else min(grown, self.keep), refcheck=False)
        self.buf[self.n:need] = x
        self.n = need

    def result(self) -> np.ndarray:
        self.buf.resize(self.n, refcheck=False)  # frees the tail
        return self.buf


class _Runs:
    """Decoded frames -> one mono wave at `rate`, written into a `_Wave`.

    Each frame is mixed to mono at once and its samples gathered into a staging buffer of `STAGE`
    samples; a full stage goes through FFmpeg's resampler in one call (resampling frame by frame, an
    mp3 frame being 24 ms, costs several times the decoding itself) and its output straight into the
    wave. One resampler per run of same-rate frames, fed stage by stage, carries its filter state
    across stages and is flushed (`resample(None)`) at the run's end, so the tail is kept; a rate
    change mid-stream starts a new run. Memory: the wave, plus a stage and its resampled frame.
    """

    STAGE = 1 << 18  # source samples resampled per call: 5.5 s at 48 kHz

    def __init__(self, rate: int, wave: _Wave):
        self.rate, self.wave, self.source_rate = rate, wave, None
        self.stage = np.empty(self.STAGE, np.float32)  # mono, at source_rate
        self.staged = 0
        self.resampler = None

    def add(self, frame, lo: int = 0, hi: int | None = None) -> None:
        """Add the frame's samples [lo, hi) (all by default)."""
        if frame.sample_rate != self.source_rate:
            self._end_run()
            self.source_rate = frame.sample_rate
        mono = _frame_mono(frame)
        mono = mono[lo:hi] if lo or hi is not None else mono
        if self.source_rate == self.rate:
            self.wave.write(mono)
            return
        while len(mono):
            k = min(len(mono), self.STAGE - self.staged)
            self.stage[self.staged:self.staged + k] = mono[:k]
            self.staged, mono = self.staged + k, mono[k:]
            if self.staged == self.STAGE:
                self._resample()

    def _resample(self, flush: bool = False) -> None:
        if self.resampler is None:
            self.resampler = av.AudioResampler(format="fltp", layout="mono", rate=self.rate)
        out = []
        if self.staged:
            frame = av.AudioFrame.from_ndarray(self.stage[None, :self.staged], format="fltp", layout="mono")
            frame.sample_rate = self.source_rate
            out += self.resampler.resample(frame)
            self.staged = 0
        if flush:
            out += self.resampler.resample(None)
        for f in out:
            self.wave.write(np.frombuffer(f.planes[0], dtype=np.float32, count=f.samples))

    def _end_run(self) -> None:
        if self.resampler is not None or self.staged:
            self._resample(flush=True)
        self.resampler = None

    def finish(self) -> np.ndarray:
        self._end_run()
        return self.wave.result()


class _Span:
    """Keeps the samples of [start, end) seconds of a stream, placing each frame by its timestamp."""

    def __init__(self, start: float, end: float):
        self.start, self.end = start, end
        self.origin = 0.0  # the stream's first timestamp (mp3: its encoder delay), which is second 0
        self.t = None  # where the next frame starts (s), for frames without a timestamp
        self.done = False  # a frame at or past `end` was seen
        self.kept = False  # some samples fell in the span

    def add(self, runs: _Runs, frame) -> None:
        t0 = frame.time - self.origin if frame.time is not None else (self.t or 0.0)
        rate = frame.sample_rate
        self.t = t0 + frame.samples / rate
        if t0 >= self.end:
            self.done = True
            return
        lo = max(0, int(round((self.start - t0) * rate)))
        hi = frame.samples if self.end == float("inf") else min(frame.samples, int(round((self.end - t0) * rate)))
        if hi > lo:
            runs.add(frame, lo, hi)
            self.kept = True


def _expected_samples(container, stream, sample_rate: int, span: _Span | None) -> int:
    """About how many samples the wave will have: what its buffer starts at (grown if short)."""
    seconds = 30.0
    if span is not None and span.end != float("inf"):
        seconds = span.end - span.start
    elif stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base) - (span.start if span else 0.0)
    elif container.duration:
        seconds = container.duration / 1e6 - (span.start if span else 0.0)
    return int(max(0.1, seconds) * sample_rate * 1.01) + 4096


def _decode_mono(container, sample_rate: int, span: _Span | None = None,
                 keep: int | None = None) -> tuple[np.ndarray, int]:
    """(the first `keep` samples, the count of all of them) of the first audio stream (or of `span`),
    mean over channels, float32 at `sample_rate`."""
    if not container.streams.audio:
        raise DecodeError("no audio stream: the container holds "
                          + (", ".join(s.type for s in container.streams) or "no streams"))
    stream = container.streams.audio[0]
    runs = _Runs(sample_rate, _Wave(_expected_samples(container, stream, sample_rate, span), keep))
    add = runs.add if span is None else (lambda frame: span.add(runs, frame))
    if span is not None and stream.start_time is not None and stream.time_base:
        span.origin = float(stream.start_time * stream.time_base)
    if span is not None and span.start > _SEEK_MARGIN_S and stream.time_base:
        try:
            container.seek(int((span.origin + span.start - _SEEK_MARGIN_S) / stream.time_base), stream=stream,
                           backward=True)
        except av.error.FFmpegError:
            pass  # not seekable: decode from the start, the span check drops what comes before
    packets = bad = 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        packets += 1
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            bad += 1
            continue
        for frame in frames:
            add(frame)
        if span is not None and span.done:
            break
    if span is None or not span.done:
        try:  # frames the decoder still holds (codec delay)
            for frame in stream.codec_context.decode(None):
                add(frame)
        except av.error.FFmpegError:
            pass
    if bad > max(1, _MAX_BAD_PACKET_SHARE * packets):  # one: often a cut-off last packet (see truncated)
        raise DecodeError(f"decode error: {bad} of {packets} packets could not be decoded")
    if span is not None and not span.done:
        if span.t is not None:
            file_end = span.t
        elif stream.duration and stream.time_base:  # nothing after a seek past the end
            file_end = float(stream.duration * stream.time_base)
        else:
            file_end = container.duration / 1e6 if container.duration else 0.0
        short = span.end - file_end
        if not span.kept or (span.end != float("inf") and
                             short > max(_TRUNCATED_S, _TRUNCATED_SHARE * (span.end - span.start))):
            raise DecodeError(f"segment past end: the file ends at {file_end:.2f} s, the segment is "
                              f"{span.start:.2f}-{span.end:.2f} s")
    return runs.finish(), runs.wave.total


def decode_audio(src: bytes | str, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None,
                 start: float | None = None, end: float | None = None) -> Decoded:
    """Decode `src` (encoded bytes, or a path) to a mono wave at `sample_rate`, peak 1.

    `max_seconds` keeps only the first seconds (`cut=True`); `duration_s` stays the
    whole clip's. The cut is taken before the peak division, so the returned wave always
    peaks at exactly 1 (or is all zeros for a silent clip). `start`/`end` (seconds; either
    may be None: the file's start or end) decode only that segment, and `duration_s` is the
    segment's. Raises `DecodeError` only.
    """
    span = None
    if start is not None or end is not None:
        s0, s1 = float(start or 0.0), float("inf") if end is None else float(end)
        if not (0 <= s0 < s1):
            raise DecodeError(f"bad segment: start {s0} s, end {s1} s (needs 0 <= start < end)")
        span = _Span(s0, s1)
    keep = max(1, int(max_seconds * sample_rate)) if max_seconds is not None else None
    try:
        with _open(src) as container:
            wave, n = _decode_mono(container, sample_rate, span, keep)
            declared = _declared_seconds(container, src) if span is None else None
    except DecodeError:
        raise
    except av.error.FileNotFoundError:
        raise DecodeError(f"not found: {_describe(src)}") from None
    except av.error.FFmpegError as e:
        raise DecodeError(f"decode error: {_describe(src)}: {e.strerror or e}") from None
    except Exception as e:  # PyAV raises plain ValueError/OSError for some broken inputs
        raise DecodeError(f"decode error: {_describe(src)}: {type(e).__name__}: {e}") from None

    if n == 0:
        raise DecodeError(f"empty audio: {_describe(src)} decoded to 0 samples")
    duration_s = n / sample_rate
    if declared and declared - duration_s > max(_TRUNCATED_S, _TRUNCATED_SHARE * declared):
        raise DecodeError(f"truncated: {_describe(src)} decoded to {duration_s:.2f} s of the {declared:.2f} s "
                          "its header declares")
    # max and min, not abs: no temporary the size of the wave (a NaN or an inf shows in one of them)
    hi, lo = float(wave.max()), float(wave.min())
    if not (np.isfinite(hi) and np.isfinite(lo)):
        raise DecodeError(f"decode error: {_describe(src)} decoded to non-finite samples")
    peak = max(hi, -lo)
    if peak < _SILENCE_PEAK:
        wave[:] = 0.0
    else:
        wave /= np.float32(peak)
        np.clip(wave, -1.0, 1.0, out=wave)
    return Decoded(wave=wave, duration_s=duration_s, cut=len(wave) < n)
