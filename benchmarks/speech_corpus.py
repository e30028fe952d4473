"""Real synthesised speech in LAION's layout, six emotions carried mostly by prosody.

    python -m benchmarks.speech_corpus --out DIR --seed S [--clips 720]

The built-in synthetic corpus (ingest.synthetic) is a numpy source-filter voice: the
recipe tuned on it might be tuned to it. This one is speech from a real synthesiser,
Debian's espeak-ng (formant synthesis with a real lexicon, accents and voice variants),
driven through SSML with emotion-dependent prosody: pitch level and range, rate, volume,
pauses, now and then a voice variant (a whisper in fear, a croak in sadness) and the
punctuation's intonation. Each clip draws how strongly its emotion shows (its intensity,
sometimes almost none) and a wide per-clip spread around its speaker's own baseline, so
the classes overlap: a linear probe of fbank + MiniLM vectors scores about 0.7, not 1.0.
Transcripts name the emotion only now and then (a phrase of the class in ~30% of clips,
of another class in ~7%); the rest are neutral sentences built from a word pool.

Every clip is encoded by the `ffmpeg` CLI (per-speaker channel band-pass, pink noise at a
per-clip level, 22.05 kHz mono mp3) and packed with its `.json` (flash_transcription,
duration, detailed_caption, the synthesis settings) into tars named as LAION's:
`en_{voice}_intense_{prompt}.tar`, prompts from lake.taxonomy.EMONET_PROMPTS, so
`python -m ingest --source laion --input DIR` reads it unchanged. Deterministic for a seed
(same bytes on the same espeak-ng/ffmpeg build); another seed draws other speakers (accent,
variant, base pitch, rate, channel) and other sentences. `DIR/corpus.json` (written last)
records the arguments, the speakers and the tools' versions; a folder holding it is this
generator's, which `--overwrite` may replace.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from lake.cli import run_cli
from lake.cliargs import HelpFormatter, at_least, bounded
from lake.errors import LakeError
from lake.taxonomy import EMONET_PROMPTS

TOOLS = {"espeak-ng": "espeak-ng", "ffmpeg": "ffmpeg"}  # command -> Debian package
SR = 22050  # espeak-ng's own rate
MARKER = "corpus.json"

# Per emotion, the shift from the speaker's neutral delivery at full intensity: pitch (percent of
# the base), and log factors of pitch range, rate and volume; pauses (breaks per clause, their
# length in ms); punctuation; the share of clips in the emotion's voice variant (if any).
@dataclass(frozen=True)
class Profile:
    pitch: float
    log_range: float
    log_rate: float
    log_volume: float
    breaks: float
    break_ms: tuple[int, int]
    punct: str
    variant: str = ""
    variant_share: float = 0.0


PROFILES: dict[str, Profile] = {
    "Anger": Profile(8, 0.35, 0.18, 0.45, 0.1, (80, 200), "!"),
    "Elation": Profile(25, 0.55, 0.12, 0.25, 0.1, (80, 200), "!"),
    "Sadness": Profile(-15, -0.6, -0.25, -0.45, 0.6, (300, 800), ".", "croak", 0.15),
    "Fear": Profile(22, -0.25, 0.22, -0.25, 0.7, (100, 300), ".", "whisper", 0.15),
    "Contentment": Profile(-6, -0.1, -0.12, -0.15, 0.3, (200, 450), "."),
    "Astonishment/Surprise": Profile(35, 0.75, 0.0, 0.2, 0.25, (150, 350), "?"),
}
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd"]
VARIANTS = {"m1": "m", "m2": "m", "m3": "m", "m4": "m", "m5": "m", "m6": "m", "m7": "m", "m8": "m", "f1": "f",
            "f2": "f", "f3": "f", "f4": "f", "f5": "f", "klatt": "m", "klatt2": "m", "klatt3": "m", "adam": "m",
            "david": "m", "linda": "f", "steph": "f", "anika": "f", "belinda": "f", "john": "m", "robert": "m"}
SPREAD = {"pitch": 2.7, "log_range": 0.09, "log_rate": 0.03, "log_volume": 0.07}  # per-clip spread (sd)

SUBJECTS = ["I", "We", "My sister", "The new manager", "Our neighbour", "He", "She", "They", "The driver",
            "My uncle", "The teacher", "Everyone in the office", "The kids", "Your friend", "The landlord"]
VERBS = ["put the boxes in", "left the keys in", "painted the fence behind", "found an old map in",
         "moved the table into", "parked the car near", "cleaned the windows of", "checked the lights in",
         "dropped the letters at", "fixed the door of", "carried the chairs to", "locked the gate of"]
PLACES = ["the kitchen", "the garage", "the station", "the library", "the office", "the back garden",
          "the post office", "the school", "the basement", "the old barn", "the hotel lobby", "the market"]
TIMES = ["this morning", "on Tuesday", "after lunch", "last night", "around nine", "before the meeting",
         "yesterday", "on the weekend", "at half past four", "earlier today", "two days ago", "after dinner"]
TAILS = ["and then went home", "without saying a word", "as usual", "like we planned", "for the second time",
         "before anyone noticed", "and called me about it", "just as the rain started"]
REVEALING = {
    "Anger": ["I am absolutely furious about this", "this makes me so angry", "I am sick and tired of it",
              "how dare they do that to me", "I could scream right now"],
    "Elation": ["this is the best news ever", "I am so happy right now", "we actually did it",
                "I could dance all night", "this is wonderful"],
    "Sadness": ["I miss them so much", "it breaks my heart", "nothing feels right anymore",
                "I feel so alone", "I just want to cry"],
    "Fear": ["I am really scared", "please do not leave me here", "something is wrong, I can feel it",
             "I am terrified of what comes next", "did you hear that noise"],
    "Contentment": ["this feels so peaceful", "I am perfectly happy with how things are",
                    "everything is calm and easy", "what a relaxing afternoon", "I feel at ease"],
    "Astonishment/Surprise": ["I cannot believe my eyes", "no way, really", "that is unbelievable",
                              "I had no idea at all", "wow, I never expected that"],
}
REVEAL_SHARE, MISLEAD_SHARE = 0.30, 0.07


@dataclass(frozen=True)
class Speaker:
    voice: str  # the tar name's voice field: letters and digits only
    accent: str  # espeak-ng language voice
    variant: str  # espeak-ng variant (!v/...)
    gender: str
    pitch: float  # percent offset of this speaker's base pitch
    log_rate: float
    lowpass: int  # the channel: band-pass edges in Hz
    highpass: int
    noise: float  # pink noise amplitude, mean over clips


def require_tools() -> dict[str, str]:
    """The version line of each tool; a missing one is one line saying how to install it."""
    missing = [cmd for cmd in TOOLS if shutil.which(cmd) is None]
    if missing:
        pkgs = " ".join(TOOLS[c] for c in missing)
        raise LakeError(f"{', '.join(missing)} not found on PATH; this corpus is spoken by espeak-ng and encoded by "
                        f"the ffmpeg CLI: install with `apt-get install -y {pkgs}` (Debian/Ubuntu)")
    out = {}
    for cmd, flag in (("espeak-ng", "--version"), ("ffmpeg", "-version")):
        text = subprocess.run([cmd, flag], capture_output=True, text=True, check=False).stdout
        out[cmd] = text.splitlines()[0].strip() if text else "?"
    return out


def draw_speakers(n: int, rng: np.random.Generator) -> list[Speaker]:
    """`n` speakers: distinct (accent, variant) pairs, each with its own base pitch, rate and channel."""
    pairs = [(a, v) for a in ACCENTS for v in VARIANTS]
    chosen = rng.choice(len(pairs), n, replace=False)
    speakers = []
    for i in chosen:
        accent, variant = pairs[int(i)]
        name = (accent.replace("en-", "").replace("-", "").replace("x", "") + variant).lower()
        speakers.append(Speaker(voice=name, accent=accent, variant=variant, gender=VARIANTS[variant],
                                pitch=float(rng.normal(0, 8)), log_rate=float(rng.normal(0, 0.1)),
                                lowpass=int(rng.choice([3400, 4500, 6000, 8000, 10000])),
                                highpass=int(rng.choice([60, 100, 150, 250])),
                                noise=float(np.exp(rng.uniform(np.log(0.002), np.log(0.02))))))
    return speakers


def sentence(emotion: str, rng: np.random.Generator) -> tuple[str, str | None]:
    """(the clip's words without final punctuation, the emotion its phrase names or None)."""
    words = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)} {rng.choice(TIMES)}"
    if rng.random() < 0.4:
        words += f" {rng.choice(TAILS)}"
    u = rng.random()
    named = emotion if u < REVEAL_SHARE else None
    if u >= 1 - MISLEAD_SHARE:
        named = str(rng.choice([e for e in PROFILES if e != emotion]))
    if named is None:
        return words, None
    phrase = str(rng.choice(REVEALING[named]))
    text = f"{phrase[0].upper()}{phrase[1:]}, {words[0].lower()}{words[1:]}" if rng.random() < 0.5 else \
        f"{words}, {phrase}"
    return text.replace(", i ", ", I "), named


def clip_rng(seed: int, key: str) -> np.random.Generator:
    """A clip's own generator: its audio depends on (seed, key) only, never on the order of work."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"speech/{seed}/{key}".encode()).digest()[:8], "little"))


def delivery(speaker: Speaker, emotion: str, rng: np.random.Generator) -> dict:
    """How one clip is spoken: its intensity, then each cue from the speaker's baseline, the emotion's
    shift scaled by the intensity, and the per-clip spread."""
    p = PROFILES[emotion]
    k = float(rng.uniform(0.6, 1.0))
    variant = speaker.variant
    if p.variant and rng.random() < p.variant_share * 2 * k:
        variant = p.variant + ("f" if p.variant == "whisper" and speaker.gender == "f" else "")
    return {"intensity": round(k, 3),
            "pitch": round(speaker.pitch + k * p.pitch + rng.normal(0, SPREAD["pitch"]), 1),
            "range": round(100 * np.exp(k * p.log_range + rng.normal(0, SPREAD["log_range"])), 1),
            "rate": round(100 * np.exp(speaker.log_rate + k * p.log_rate + rng.normal(0, SPREAD["log_rate"])), 1),
            "volume": round(100 * np.exp(k * p.log_volume + rng.normal(0, SPREAD["log_volume"])), 1),
            "variant": variant, "punct": p.punct if rng.random() < 0.6 * k else ".",
            "break_share": 0.03 + k * p.breaks / 4, "break_ms": p.break_ms,
            "noise": round(speaker.noise * float(np.exp(rng.normal(0, 0.4))), 5)}


def ssml(text: str, d: dict, rng: np.random.Generator) -> str:
    """The SSML espeak-ng speaks: one prosody element, with breaks between some words."""
    words = text.split(" ")
    out = [words[0]]
    for w in words[1:]:
        if rng.random() < d["break_share"]:
            out.append(f'<break time="{int(rng.integers(*d["break_ms"]))}ms"/>')
        out.append(w)
    sign = "+" if d["pitch"] >= 0 else ""
    return (f'<speak><prosody pitch="{sign}{d["pitch"]}%" range="{d["range"]}%" rate="{d["rate"]}%" '
            f'volume="{d["volume"]}%">{" ".join(out)}{d["punct"]}</prosody></speak>')


def _run(cmd: list[str], data: bytes, what: str) -> bytes:
    proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise LakeError(f"{what} failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace').strip()[:300]}"
                        f"; command: {' '.join(cmd)}")
    return proc.stdout


def synthesize(markup: str, accent: str, variant: str) -> bytes:
    """A 16-bit mono WAV at 22.05 kHz from espeak-ng."""
    return _run(["espeak-ng", "-m", "--stdin", "-v", f"{accent}+{variant}", "--stdout"], markup.encode(), "espeak-ng")


def encode_mp3(wav: bytes, speaker: Speaker, noise: float, rng: np.random.Generator) -> tuple[bytes, float]:
    """The ffmpeg CLI: leading and trailing silence, the speaker's channel, pink noise, mp3 (48 kb/s).
    Returns the mp3 and the clip's duration in seconds."""
    lead, tail = (float(x) for x in rng.uniform(0.08, 0.4, 2))
    duration = (len(wav) - 44) / 2 / SR + lead + tail  # espeak-ng's header is 44 bytes; its sizes are unset
    graph = (f"[0:a]adelay={int(lead * 1000)}:all=1,apad=pad_dur={tail:.3f},highpass=f={speaker.highpass},"
             f"lowpass=f={speaker.lowpass}[s];[s][1:a]amix=inputs=2:duration=first:normalize=0[m]")
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1", "-f", "wav", "-i", "pipe:0",
           "-f", "lavfi", "-i", f"anoisesrc=r={SR}:a={noise}:c=pink:s={int(rng.integers(1, 2**31))}",
           "-filter_complex", graph, "-map", "[m]", "-ac", "1", "-ar", str(SR), "-c:a", "libmp3lame", "-b:a", "48k",
           "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact", "-f", "mp3", "pipe:1"]
    return _run(cmd, wav, "ffmpeg"), round(duration, 3)


def make_clip(speaker: Speaker, emotion: str, key: str, seed: int) -> tuple[bytes, dict]:
    """(mp3, its JSON record) of one clip."""
    rng = clip_rng(seed, key)
    text, named = sentence(emotion, rng)
    d = delivery(speaker, emotion, rng)
    markup = ssml(text, d, rng)
    mp3, duration = encode_mp3(synthesize(markup, speaker.accent, d["variant"]), speaker, d["noise"], rng)
    caption = (f"A {'female' if speaker.gender == 'f' else 'male'} synthetic voice ({speaker.accent}) reads a "
               "sentence.")
    meta = {"duration": duration, "flash_transcription": text + d["punct"], "detailed_caption": caption,
            "speaker": speaker.voice, "text_names": named,
            "synthesis": {k: v for k, v in d.items() if k not in ("break_ms",)} | {"ssml": markup}}
    return mp3, meta


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uname, info.gname = len(data), 0o644, 1_700_000_000, "laion", "laion"
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: str, speaker: Speaker, emotion: str, count: int, seed: int) -> None:
    """One speaker's clips of one emotion, `<id>.mp3` + `<id>.json` pairs; written under a temporary
    name and renamed, so an interrupted run leaves no half tar."""
    stem = os.path.basename(path)[: -len(".tar")]
    tmp = path + ".part"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(count):
            cid = f"{i:06d}"
            mp3, meta = make_clip(speaker, emotion, f"{stem}/{cid}", seed)
            _tar_add(tar, f"{cid}.mp3", mp3)
            _tar_add(tar, f"{cid}.json", json.dumps(meta, ensure_ascii=False).encode())
    os.replace(tmp, path)


def _write_tar(task: tuple) -> None:
    write_tar(*task)


def tar_name(voice: str, emotion: str) -> str:
    return f"en_{voice}_intense_{EMONET_PROMPTS[emotion]}.tar"


def plan(clips: int, speakers: list[Speaker]) -> list[tuple[Speaker, str, int]]:
    """(speaker, emotion, clip count) per tar: every speaker speaks every emotion, counts as even as they go."""
    cells = [(s, e) for s in speakers for e in PROFILES]
    base, extra = divmod(clips, len(cells))
    return [(s, e, base + (i < extra)) for i, (s, e) in enumerate(cells)]


def _prepare(out: str, overwrite: bool) -> None:
    """Refuse a folder holding anything but this generator's corpus; empty ours with --overwrite."""
    os.makedirs(out, exist_ok=True)
    present = sorted(os.listdir(out))
    if not present:
        return
    if not overwrite:
        raise LakeError(f"{out} is not empty; pass --overwrite to replace a corpus written here, or another --out")
    if MARKER not in present or any(not (n.endswith(".tar") or n.endswith(".tar.part") or n == MARKER)
                                    for n in present):
        raise LakeError(f"{out} holds files this generator did not write (no {MARKER}, or other names); "
                        "choose another --out")
    for n in present:
        os.remove(os.path.join(out, n))


def generate(out: str, seed: int, clips: int = 720, speakers: int = 8, overwrite: bool = False,
             workers: int = 2) -> dict:
    """Write the corpus into `out`; returns what corpus.json records."""
    if clips < speakers * len(PROFILES):
        raise LakeError(f"--clips {clips}: {speakers} speaker(s) x {len(PROFILES)} emotions need at least "
                        f"{speakers * len(PROFILES)} clips (one tar each); raise --clips or lower --speakers")
    versions = require_tools()
    args = {"seed": seed, "clips": clips, "speakers": speakers}
    done = os.path.join(out, MARKER)
    if os.path.exists(done) and not overwrite:
        record = json.load(open(done, encoding="utf-8"))
        if record.get("args") == args:
            print(f"{out}: already complete ({clips} clips, seed {seed})")
            return record
    _prepare(out, overwrite)
    t0 = time.time()
    cast = draw_speakers(speakers, np.random.default_rng(seed))
    tars = [(os.path.join(out, tar_name(spk.voice, emotion)), spk, emotion, n, seed)
            for spk, emotion, n in plan(clips, cast)]
    # the work is in espeak-ng and ffmpeg processes: a few single-threaded workers keep them busy
    with mp.get_context("spawn").Pool(workers) as pool:
        for i, _ in enumerate(pool.imap_unordered(_write_tar, tars)):
            print(f"\r{i + 1}/{len(tars)} tars", end="", flush=True)
    print()
    record = {"args": args, "tools": versions, "emotions": list(PROFILES), "speakers": [asdict(s) for s in cast],
              "tars": len(tars), "seconds": round(time.time() - t0, 1)}
    with open(done + ".part", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(done + ".part", done)
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speech_corpus", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="folder for the tars and corpus.json")
    p.add_argument("--seed", type=bounded(int, at_least(0)), default=0, help="draws the speakers, sentences, delivery")
    p.add_argument("--clips", type=bounded(int, at_least(len(PROFILES))), default=720,
                   help="clips in all (at least six per speaker: one per emotion)")
    p.add_argument("--speakers", type=bounded(int, at_least(1)), default=8, help="voices (accent + variant)")
    p.add_argument("--workers", type=bounded(int, at_least(1)), default=2, help="processes writing tars")
    p.add_argument("--overwrite", action="store_true", help="replace a corpus this generator wrote in --out")
    args = p.parse_args(argv)

    def work() -> int:
        rec = generate(args.out, args.seed, args.clips, args.speakers, args.overwrite, args.workers)
        print(json.dumps({"out": args.out, "seed": args.seed, "clips": args.clips, "tars": rec["tars"],
                          "speakers": [s["voice"] for s in rec["speakers"]], "seconds": rec.get("seconds")}))
        return 0

    return run_cli(work, kept="finished tars are kept")


if __name__ == "__main__":
    sys.exit(main())
