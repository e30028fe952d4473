"""Synthetic voices: per-voice traits, per-emotion prosody profiles, and source-filter synthesis.

A glottal pulse train with an f0 contour (declination, syllable accents, final rise or fall,
tremor), jitter and shimmer, aspiration noise, vowel formants through resonators scaled by
each voice's vocal tract, frication at syllable onsets, loudness envelopes and pauses. Each
emotion sets the means of these cues; every clip draws from the mean plus a wide spread plus
its voice's offsets, so classes overlap.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, replace

import numpy as np
from scipy.signal import lfilter, sosfilt

from ingest.synthetic.spec import MAX_S, MIN_S, NOISE_FLOOR, SR


@dataclass(frozen=True)
class Voice:
    name: str
    gender: str  # "female" | "male"
    f0: float  # base pitch, Hz
    formant_scale: float  # > 1: shorter vocal tract (higher formants)
    breath: float  # added to the clip's breathiness
    tension: float  # added to the clip's vocal tension (brightness)


# The 11 OpenAI voices behind LAION's Got Talent (6 female, 5 male), each a distinct speaker.
VOICES: dict[str, Voice] = {v.name: v for v in [
    Voice("alloy", "female", 205, 1.14, 0.05, 0.00), Voice("ash", "male", 112, 1.00, 0.00, 0.06),
    Voice("ballad", "female", 226, 1.18, 0.08, -0.06), Voice("coral", "female", 194, 1.12, 0.02, 0.05),
    Voice("echo", "male", 126, 1.04, 0.06, -0.05), Voice("fable", "male", 136, 1.06, 0.02, 0.00),
    Voice("nova", "female", 216, 1.16, 0.00, 0.08), Voice("onyx", "male", 96, 0.94, 0.04, -0.03),
    Voice("sage", "female", 186, 1.10, 0.07, -0.04), Voice("shimmer", "female", 236, 1.20, 0.03, 0.02),
    Voice("verse", "male", 118, 1.02, 0.00, 0.07)]}
VOICE_NAMES = list(VOICES)

# MELD's speakers: new voices (not LAION's), gender from the show.
MELD_SPEAKERS = {"Chandler": ("male", 116), "Joey": ("male", 104), "Ross": ("male", 122), "Monica": ("female", 198),
                 "Rachel": ("female", 214), "Phoebe": ("female", 232), "Gunther": ("male", 110),
                 "Janice": ("female", 240), "Mr. Geller": ("male", 100), "Mrs. Geller": ("female", 190),
                 "Mike": ("male", 124), "Emily": ("female", 206)}


def meld_voice(speaker: str) -> Voice:
    gender, f0 = MELD_SPEAKERS.get(speaker, ("male", 120))
    h = hashlib.sha256(speaker.encode()).digest()
    scale = (1.13 if gender == "female" else 0.99) + (h[0] / 255 - 0.5) * 0.08
    return Voice(speaker, gender, f0, scale, (h[1] / 255 - 0.5) * 0.1, (h[2] / 255 - 0.5) * 0.1)


@dataclass(frozen=True)
class Cues:
    """Prosodic cues of one clip (or, as a profile, the mean of a class)."""

    f0_st: float  # mean pitch, semitones from the voice's base
    range_st: float  # size of syllable accents, semitones
    rate: float  # syllables per second
    loud_db: float  # relative loudness; couples to tension in the glottal source
    tension: float  # 0 lax/dark .. 1 tense/bright (open quotient, spectral tilt)
    breath: float  # 0..1 share of aspiration noise in the source
    jitter: float  # cycle-to-cycle f0 perturbation (fraction)
    shimmer: float  # cycle-to-cycle amplitude perturbation (fraction)
    pause: float  # chance of a pause after a phrase-internal syllable
    pause_s: float  # mean pause length, s
    decl_st: float  # f0 fall across a phrase, semitones
    tremor_st: float  # 5-8 Hz f0 tremor depth, semitones
    rise: float  # chance that a phrase ends rising
    dyn_db: float  # spread of per-syllable loudness, dB
    formant: float  # formant scale from articulation: > 1 smiling/spread lips, < 1 rounded/pharyngeal


_C = Cues
PROFILES: dict[str, Cues] = {
    # f0_st range rate loud tension breath jitter shimmer pause pause_s decl tremor rise dyn formant
    "Elation": _C(4.0, 4.5, 5.2, 4, 0.65, 0.10, 0.008, 0.05, 0.04, 0.25, 2.0, 0.10, 0.35, 3.5, 1.05),
    "Anger": _C(2.0, 3.5, 5.3, 6, 0.85, 0.05, 0.015, 0.08, 0.05, 0.20, 3.0, 0.00, 0.05, 4.5, 1.01),
    "Sadness": _C(-2.0, 1.2, 3.1, -5, 0.20, 0.40, 0.020, 0.10, 0.12, 0.55, 4.0, 0.15, 0.05, 1.5, 0.97),
    "Fear": _C(5.0, 2.5, 5.8, -1, 0.55, 0.30, 0.025, 0.09, 0.10, 0.30, 1.0, 0.60, 0.40, 3.0, 1.02),
    "Contentment": _C(0.0, 2.2, 3.9, -2, 0.30, 0.25, 0.008, 0.04, 0.05, 0.40, 2.5, 0.00, 0.15, 2.0, 1.04),
    "Astonishment/Surprise": _C(5.0, 6.0, 4.5, 3, 0.60, 0.15, 0.010, 0.05, 0.06, 0.30, 0.0, 0.05, 0.70, 4.0, 1.02),
    "Disgust": _C(-2.0, 2.5, 3.5, 0, 0.70, 0.12, 0.040, 0.15, 0.08, 0.35, 3.5, 0.00, 0.05, 3.0, 0.93),
    "Contemplation": _C(-1.0, 1.4, 3.0, -3, 0.40, 0.15, 0.010, 0.05, 0.18, 0.55, 2.0, 0.00, 0.35, 2.0, 0.99),
    "Fatigue/Exhaustion": _C(-3.0, 0.9, 2.8, -6, 0.15, 0.45, 0.030, 0.12, 0.12, 0.60, 3.0, 0.00, 0.05, 1.5, 0.97),
}
NEUTRAL = _C(0.0, 2.0, 4.2, 0, 0.45, 0.15, 0.010, 0.05, 0.06, 0.30, 2.0, 0.00, 0.20, 2.5, 1.0)


def profile(category: str) -> Cues:
    """The cue means of a class; a category without a hand-set profile gets a fixed,
    hash-seeded variation of a neutral voice (so any EmoNet class list works)."""
    if category in PROFILES:
        return PROFILES[category]
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(category.encode()).digest()[:8], "little"))
    n = NEUTRAL
    return replace(n, f0_st=n.f0_st + rng.normal(0, 2), range_st=n.range_st * np.exp(rng.normal(0, 0.4)),
                   rate=n.rate * np.exp(rng.normal(0, 0.15)), loud_db=rng.normal(0, 3),
                   tension=float(np.clip(n.tension + rng.normal(0, 0.2), 0.05, 0.95)),
                   breath=float(np.clip(n.breath + rng.normal(0, 0.12), 0.0, 0.6)))


def sample_cues(mean: Cues, voice: Voice, rng: np.random.Generator) -> Cues:
    """One clip's cues: class mean, a wide within-class spread, and the voice's offsets."""
    ln = lambda sd: float(np.exp(rng.normal(0, sd)))  # noqa: E731 - multiplicative spread
    loud = mean.loud_db + rng.normal(0, 2.5)
    return Cues(
        f0_st=mean.f0_st + rng.normal(0, 1.8),
        range_st=max(0.3, mean.range_st * ln(0.35)),
        rate=float(np.clip(mean.rate * ln(0.15), 1.8, 8.0)),
        loud_db=loud,
        tension=float(np.clip(mean.tension + voice.tension + 0.02 * (loud - mean.loud_db) + rng.normal(0, 0.15),
                              0.02, 0.98)),
        breath=float(np.clip(mean.breath + voice.breath + rng.normal(0, 0.1), 0.0, 0.8)),
        jitter=min(0.08, mean.jitter * ln(0.4)),
        shimmer=min(0.3, mean.shimmer * ln(0.35)),
        pause=float(np.clip(mean.pause * ln(0.4), 0.0, 0.5)),
        pause_s=mean.pause_s * ln(0.3),
        decl_st=mean.decl_st + rng.normal(0, 1.0),
        tremor_st=mean.tremor_st * ln(0.4),
        rise=float(np.clip(mean.rise + rng.normal(0, 0.15), 0.0, 1.0)),
        dyn_db=mean.dyn_db * ln(0.3),
        formant=mean.formant * ln(0.02),
    )


# Vowel formants F1-F4 (adult male reference, Hz); a voice scales them by its tract length.
VOWELS = {"a": (730, 1090, 2440, 3400), "ae": (660, 1720, 2410, 3400), "e": (530, 1840, 2480, 3500),
          "i": (270, 2290, 3010, 3700), "o": (570, 840, 2410, 3400), "u": (300, 870, 2240, 3400),
          "ah": (640, 1190, 2390, 3400), "er": (490, 1350, 1690, 3300)}
_BANDWIDTHS = np.array([70.0, 90.0, 130.0, 170.0])
_VOWEL_OF = {"a": "a", "e": "e", "i": "i", "o": "o", "u": "ah", "y": "i", "ee": "i", "ea": "i", "oo": "u",
             "ou": "ah", "ai": "e", "ay": "e", "au": "o", "oa": "o", "ie": "i", "ei": "e", "ue": "u", "ui": "u",
             "ä": "ae", "ö": "er", "ü": "u"}


def syllables(text: str) -> list[tuple[str, bool]]:
    """(vowel, ends a phrase) per syllable of `text`: one per vowel group, phrases end at
    punctuation. The audio is not intelligible, but its vowels and phrasing follow the text."""
    out: list[tuple[str, bool]] = []
    for token in re.findall(r"[^\W\d_]+|[.,!?;:\u2014\u2013-]", text.lower()):
        if not token[0].isalpha():
            if out:
                out[-1] = (out[-1][0], True)
            continue
        groups = re.findall(r"[aeiouyäöü]+", token)
        if len(groups) > 1 and token.endswith("e") and not token.endswith(("ee", "ie")):
            groups = groups[:-1]  # silent final e
        for g in groups or ["ah"]:
            out.append((_VOWEL_OF.get(g[:2], _VOWEL_OF.get(g[0], "ah")), False))
    if out:
        out[-1] = (out[-1][0], True)
    return out or [("ah", True)]


_PULSE_BITS = 11
_PULSE_N = 1 << _PULSE_BITS  # samples of one pulse cycle in the table


@functools.lru_cache(maxsize=64)
def _rosenberg(oq: float) -> np.ndarray:
    """One glottal flow cycle (Rosenberg pulse) on a `_PULSE_N` grid: looking the cycle up is
    several times faster than evaluating it per sample. Open quotient `oq`: a tense voice
    closes early (short open phase, stronger harmonics), a lax one late."""
    frac = np.arange(_PULSE_N) / _PULSE_N
    tp = 0.62 * oq
    return np.where(frac < tp, 0.5 * (1 - np.cos(np.pi * frac / tp)),
                    np.where(frac < oq, np.cos(0.5 * np.pi * (frac - tp) / (oq - tp)), 0.0)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """Zero-mean, unit-sd noise smoothed over ~`width` samples (slow drifts)."""
    x = rng.standard_normal(n + width)
    x = np.convolve(x, np.hanning(width + 2)[1:-1], mode="same")[:n]
    return (x - x.mean()) / (x.std() + 1e-9)


@dataclass(frozen=True)
class _Timing:
    """Where the syllables fall (s from the clip's start): what every contour is built on."""

    dur: np.ndarray  # [n] voiced length of each syllable
    stress: np.ndarray  # [n] bool
    ends: np.ndarray  # [n] bool: the syllable ends a phrase (the last one always does)
    starts: np.ndarray  # [n]
    total: float  # clip length


def _timing(cues: Cues, sylls: list[tuple[str, bool]], rng: np.random.Generator, max_s: float,
            min_s: float) -> _Timing:
    """Durations and pauses; syllables that do not fit in `max_s` are dropped from the end."""
    n = len(sylls)
    stress = rng.random(n) < 0.35
    dur = np.exp(rng.normal(0, 0.22, n)) / cues.rate * np.where(stress, 1.25, 1.0)
    ends = np.array([e for _, e in sylls])
    long_pause = cues.pause_s * np.exp(rng.normal(0, 0.3, n)) + 0.08
    short_pause = np.where(rng.random(n) < cues.pause, 0.6 * cues.pause_s * np.exp(rng.normal(0, 0.4, n)), 0.0)
    pause = np.where(ends, long_pause, short_pause)
    lead, tail = rng.uniform(0.05, 0.25), rng.uniform(0.08, 0.3)
    span = np.cumsum(dur + pause) - pause  # end of syllable i's voice after the lead
    k = max(1, int(np.searchsorted(span, max_s - lead - tail, side="right")))
    dur, pause, stress, ends = dur[:k], pause[:k], stress[:k], ends[:k].copy()
    ends[-1] = True
    starts = lead + np.concatenate([[0.0], np.cumsum(dur + pause)[:-1]])
    return _Timing(dur, stress, ends, starts, max(min_s, min(max_s, starts[-1] + dur[-1] + tail)))


def _pitch(cues: Cues, voice: Voice, tm: _Timing, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """f0 in semitones at the control times `t`: declination and a final rise or fall per phrase,
    syllable accents, tremor; and whether each phrase rose."""
    st = 12 * np.log2(voice.f0) + cues.f0_st + 0.3 * _smooth_noise(rng, len(t), 40)
    p0 = 0
    rising = []
    for pe in np.flatnonzero(tm.ends):
        a, b = tm.starts[p0], tm.starts[pe] + tm.dur[pe]
        m = (t >= a) & (t < b)
        st[m] += cues.decl_st * (0.5 - (t[m] - a) / max(b - a, 1e-3))
        up = rng.random() < cues.rise
        rising.append(bool(up))
        ramp = np.clip((t - tm.starts[pe]) / tm.dur[pe], 0, 1) * (t < b + 0.05)
        st += (1.3 if up else -0.5) * cues.range_st * ramp
        p0 = pe + 1
    n = len(tm.dur)
    amp = cues.range_st * np.where(tm.stress, 1.0, 0.3) * np.maximum(0.0, rng.normal(1, 0.35, n))
    centre, width = tm.starts + 0.55 * tm.dur, 0.35 * tm.dur
    st += (amp[:, None] * np.exp(-0.5 * ((t[None, :] - centre[:, None]) / width[:, None]) ** 2)).sum(0)
    st += cues.tremor_st * np.sin(2 * np.pi * rng.uniform(5, 8) * t + rng.uniform(0, 6.3))
    return st, rising


def _envelopes(cues: Cues, tm: _Timing, rng: np.random.Generator, frames_per_s: float,
               m: int) -> tuple[np.ndarray, np.ndarray]:
    """Voicing and frication amplitude at the `m` control times: a consonant onset (fricative,
    stop burst, sonorant or none) before each syllable's vowel, per-syllable and slow loudness."""
    n = len(tm.dur)
    voiced, fric = np.zeros(m), np.zeros(m)
    gain_db = rng.normal(0, cues.dyn_db, n) + 3.0 * tm.stress
    kinds = rng.choice(4, size=n, p=[0.35, 0.25, 0.25, 0.15])  # fricative, stop, sonorant, none
    for i in range(n):
        g = 10 ** (gain_db[i] / 20)
        c = tm.dur[i] * (rng.uniform(0.15, 0.35) if kinds[i] < 3 else 0.0)
        a, b, e = (int(round(x * frames_per_s)) for x in (tm.starts[i], tm.starts[i] + c, tm.starts[i] + tm.dur[i]))
        if e > b:
            voiced[b:e] = np.maximum(voiced[b:e], g * np.sin(np.linspace(0, np.pi, e - b)) ** 0.6)
        if b > a:
            if kinds[i] == 0:
                fric[a:b] = 0.5 * g * np.sin(np.linspace(0, np.pi, b - a))
            elif kinds[i] == 1:
                fric[max(a, b - 3):b] = 0.8 * g
            elif kinds[i] == 2:
                voiced[a:b] = 0.35 * g
    dyn = 10 ** (0.5 * cues.dyn_db * _smooth_noise(rng, m, 120) / 20)
    return voiced * dyn, fric * dyn


def _to_samples(control: np.ndarray, hop: int, n: int) -> np.ndarray:
    """[k, m] values at samples 0, hop, 2 hop, ... -> [k, n] float32, linearly interpolated between
    them (np.interp on a uniform grid, for all k rows at once)."""
    control = control.astype(np.float32)
    step = np.diff(control, axis=1)[:, :, None] * (np.arange(hop, dtype=np.float32) / hop)
    return (control[:, :-1, None] + step).reshape(len(control), -1)[:, :n]


def _glottal_source(cues: Cues, f0: np.ndarray, rng: np.random.Generator, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Rosenberg pulses along the f0 track, with jitter and shimmer per cycle: the differentiated
    glottal flow, spectrally tilted (a lax voice is darker), and the flow itself."""
    cyc0 = (np.cumsum(f0, dtype=np.float64) * (1.0 / sr)).astype(np.int64)
    jit = (1 + cues.jitter * rng.standard_normal(int(cyc0[-1]) + 2)).astype(np.float32)
    # phase in pulse-table steps: the cycle is the high bits, the position within it the low ones
    steps = (np.cumsum(f0 * jit[cyc0], dtype=np.float64) * (_PULSE_N / sr)).astype(np.int64)
    cyc = steps >> _PULSE_BITS
    pulse = _rosenberg(round(float(np.clip(0.8 - 0.4 * cues.tension, 0.35, 0.85)), 2))
    flow = pulse[steps & (_PULSE_N - 1)]
    shim = np.exp(cues.shimmer * rng.standard_normal(int(cyc[-1]) + 2)).astype(np.float32)
    glot = np.diff(flow, prepend=np.float32(0)) * shim[cyc]
    a = np.float32(np.clip(0.05 + 0.8 * (1 - cues.tension), 0.0, 0.9))  # spectral tilt
    return lfilter(np.array([1 - a], np.float32), np.array([1, -a], np.float32), glot), flow


def _vocal_tract(src: np.ndarray, cues: Cues, voice: Voice, sylls: list[tuple[str, bool]], tm: _Timing,
                 rng: np.random.Generator, sr: int) -> np.ndarray:
    """A cascade of four formant resonators (unit gain at 0 Hz), per syllable, state carried over."""
    n, N = len(tm.dur), len(src)
    scale = voice.formant_scale * cues.formant * np.exp(rng.normal(0, 0.04, (n, 4)))
    freqs = np.array([VOWELS[sylls[i][0]] for i in range(n)]) * scale
    r = np.exp(-np.pi * _BANDWIDTHS * (1 + 0.6 * cues.breath) / sr)
    c = 2 * r * np.cos(2 * np.pi * np.minimum(freqs, 0.45 * sr) / sr)  # [n, 4]
    sos = np.zeros((n, 4, 6), np.float32)
    sos[..., 0], sos[..., 3], sos[..., 4], sos[..., 5] = 1 - c + r * r, 1.0, -c, r * r
    y = np.empty(N, np.float32)
    zi = np.zeros((4, 2), np.float32)
    bounds = np.minimum(np.concatenate([[0], (tm.starts[1:] * sr).astype(np.int64), [N]]), N)
    for i in np.flatnonzero(bounds[1:] > bounds[:-1]):
        y[bounds[i]:bounds[i + 1]], zi = sosfilt(sos[i], src[bounds[i]:bounds[i + 1]], zi=zi)
    return y


def synthesize(cues: Cues, voice: Voice, sylls: list[tuple[str, bool]], rng: np.random.Generator,
               sr: int = SR, max_s: float = MAX_S, min_s: float = MIN_S) -> tuple[np.ndarray, dict]:
    """One clip: float32 mono wave at `sr` (peak < 1) and what was realised (for the caption).

    Syllables that do not fit in `max_s` are dropped from the end; a clip shorter than
    `min_s` gets trailing silence. Contours are built at a 5 ms control rate, then
    interpolated to samples; everything at the sample rate is float32.
    """
    tm = _timing(cues, sylls, rng, max_s, min_s)
    N = int(round(tm.total * sr))
    hop = sr // 200
    m = N // hop + 2
    st, rising = _pitch(cues, voice, tm, np.arange(m) * (hop / sr), rng)
    voiced, fric = _envelopes(cues, tm, rng, sr / hop, m)
    st, v_env, n_env = _to_samples(np.stack([st, voiced, fric]), hop, N)
    f0 = np.exp2(st * np.float32(1 / 12))
    glot, flow = _glottal_source(cues, f0, rng, sr)
    white = rng.standard_normal(N + 1, dtype=np.float32)
    noise = white[1:] - white[:-1]  # differenced: brighter, like turbulence
    asp = noise * (0.4 + flow)
    asp *= glot.std() / (asp.std() + 1e-12)
    src = ((1 - cues.breath) * glot + cues.breath * asp) * v_env
    y = _vocal_tract(src, cues, voice, sylls, tm, rng, sr)
    level = y[v_env > 0.3 * v_env.max()].std() if v_env.max() > 0 else 1.0
    # Frication bypasses the tract; the same noise, shifted, so it is not aspiration's copy.
    y += (0.35 * level) * np.roll(noise, N // 3) * n_env
    peak = float(np.abs(y).max()) or 1.0
    gain = float(np.clip(0.3 * 10 ** (cues.loud_db / 20), 0.05, 0.95)) / peak
    y *= np.float32(gain)
    y += white[:N] * np.float32(NOISE_FLOOR * gain * peak)  # a noise floor, as in any recording
    return y, {"rising_end": rising[-1] if rising else False, "syllables": len(tm.dur)}
