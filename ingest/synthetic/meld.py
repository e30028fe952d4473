"""The MELD part: the three CSVs with all columns and quirks, and dia{D}_utt{U}.mp4 clips in the real folders."""

from __future__ import annotations

import csv
import os

import numpy as np
from scipy.signal import resample_poly

from lake.taxonomy import MELD_CLASSES
from ingest.synthetic.spec import CP1252_READABLE, MAX_S, MELD_FOLDERS, MELD_HEADER, MELD_PROFILE, MELD_SHARES, MELD_SR, MIN_S, SR
from ingest.synthetic.voice import MELD_SPEAKERS, meld_voice, profile, sample_cues, syllables, synthesize
from ingest.synthetic.media import clip_rng, write_mp4
from ingest.synthetic.laion import share


MELD_LINES = {
    "neutral": ["So, what are you guys doing tonight?", "I'm gonna get some coffee.", "Okay, so, the thing is, um,",
                "He's at the museum, I think.", "We should probably get going.", "Does anybody want a bagel?",
                "It's, uh, it's on the table.", "She said she'd call me back.", "Wait, which apartment is it?",
                "I was just talking to Ross about it."],
    "joy": ["Oh my God, this is so great!", "I got the job!", "Yay, I love you guys!"],
    "surprise": ["What? You're getting married?!", "No way!", "Are you serious?"],
    "anger": ["Get out of my apartment!", "You ate my sandwich?!", "I told you a hundred times, no!"],
    "sadness": ["I just miss him, you know?", "I'm never gonna find anyone.", "It's over. It's really over."],
    "fear": ["There's someone out there!", "Oh no, oh no, what do we do?", "I'm not going in there."],
    "disgust": ["Ew, that is so gross!", "Eww, who would eat that?", "That's disgusting, Joey."],
}
MELD_QUOTED = ['He said, "Hey, you\'re not Bob."', 'She goes, "Fine," and just leaves!',
               'And I\'m like, "Yeah, sure."', 'What do you mean, "we"?']
# One utterance per cp1252 control, UTF-8 encoded as in MELD.Raw's CSVs.
MELD_CONTROLS = ["I was the point person on my company\x92s transition.", "Well\x85 okay, fine.",
                 "He keeps saying \x93we were on a break\x94 like it matters.", "Monday \x96 Friday, right?",
                 "Wait\x97what did you just say?", "Oh\xa0my God."]


def readable(utterance: str) -> str:
    """MELD.Raw's cp1252 control characters mapped to readable ASCII (what a reader should produce)."""
    return "".join(CP1252_READABLE.get(ch, ch) for ch in utterance)


def _sentiment(emotion: str, rng: np.random.Generator) -> str:
    if emotion == "neutral":
        return "neutral"
    if emotion == "joy":
        return "positive"
    if emotion == "surprise":
        return "positive" if rng.random() < 0.5 else "negative"
    return "negative"


def plan_meld(total: int, rng: np.random.Generator) -> list[dict]:
    """Rows of the three CSVs plus the extra files, as dicts (durations filled in later)."""
    n = dict(zip(["train", "dev", "test"], share(total, [0.72, 0.1, 0.18], minimum=0)))
    n["dev"], n["test"] = max(n["dev"], 4), max(n["test"], 7)
    n["train"] = max(total - n["dev"] - n["test"], 10)
    emotions = MELD_CLASSES
    rows: list[dict] = []
    controls = list(MELD_CONTROLS)
    for split in ("train", "dev", "test"):
        per_class = share(n[split], [MELD_SHARES[e] for e in emotions], minimum=1 if n[split] >= 14 else 0)
        labels = [e for e, c in zip(emotions, per_class) for _ in range(c)]
        labels = [labels[i] for i in rng.permutation(len(labels))]
        sr_no, dia, utt = 1, -1, 99
        season = episode = 0
        for j, emotion in enumerate(labels):
            if utt >= int(rng.integers(2, 9)) or dia < 0:
                dia += 1 + int(rng.random() < 0.05)
                utt = 0
                season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
                cast = list(rng.choice(list(MELD_SPEAKERS)[:6], size=3, replace=False))
                if rng.random() < 0.2:
                    cast.append(str(rng.choice(list(MELD_SPEAKERS)[6:])))
            else:
                utt += 1
            if controls and split == "train" and j % 3 == 1:
                text = controls.pop(0)
            elif rng.random() < 0.05 or (split != "train" and j == 0):  # at least two, for small corpora
                text = str(rng.choice(MELD_QUOTED))
            elif emotion != "neutral" and rng.random() < 0.35:
                text = str(rng.choice(MELD_LINES[emotion]))
            else:
                text = str(rng.choice(MELD_LINES["neutral"]))
                if rng.random() < 0.05:
                    text = text.replace("'", "\x92")
            # MELD's utterances average 3.6 s: one of these lines is ~3.4 s in these voices, two ~5.5 s
            if not text.endswith(",") and rng.random() < 0.1 and text not in MELD_CONTROLS:
                text += " " + str(rng.choice(MELD_LINES["neutral"]))
            if rng.random() < 0.04:
                text = text.replace(" ", "  ", 1)  # MELD has double spaces inside utterances
            rows.append({"split": split, "sr_no": sr_no, "utterance": text, "speaker": str(rng.choice(cast)),
                         "emotion": emotion, "sentiment": _sentiment(emotion, rng), "dia": dia, "utt": utt,
                         "season": season, "episode": episode, "status": "ok", "prefix": False, "twin": False,
                         "long": False, "in_csv": True, "channels": 6 if rng.random() < 0.5 else 2})
            gap = rng.random() < 0.1 or (split == "train" and j == 2)  # MELD's Sr No. skips (21, 22 missing)
            sr_no += 1 + (int(rng.integers(1, 4)) if gap else 0)

    def pick(split: str, skip: int = 0) -> dict:
        cands = [r for r in rows if r["split"] == split and r["status"] == "ok" and not (r["prefix"] or r["long"])]
        return cands[(len(cands) * 5 // 11 + skip) % len(cands)]

    pick("train")["status"] = "corrupt_audio"  # like MELD's train dia125_utt3.mp4
    pick("dev")["status"] = "missing_clip"  # like MELD's dev dia110_utt7.mp4 (Sr No. 1153)
    for k in range(3):  # correct clip under final_videos_test*, a wrong clip under the plain name
        r = pick("test", k)
        r["prefix"] = r["twin"] = True
    pick("test")["prefix"] = True  # only the prefixed file exists
    long = pick("test")
    long["long"], long["utterance"] = True, " ".join(MELD_LINES["neutral"][:6])
    # An mp4 with no CSV row (like dev dia66_utt9): an extra utterance id of a dev dialogue.
    last = [r for r in rows if r["split"] == "dev"][-1]
    rows.append({**last, "utt": last["utt"] + 1, "status": "no_csv_row", "in_csv": False, "sr_no": None,
                 "utterance": str(rng.choice(MELD_LINES["neutral"]))})
    return rows


def _meld_file(row: dict, twin: bool = False) -> str:
    name = f"dia{row['dia']}_utt{row['utt']}.mp4"
    if row["prefix"] and not twin:
        name = "final_videos_test" + name
    return f"meld/{MELD_FOLDERS[row['split']]}/{name}"


def _meld_wave(row: dict, emotion: str, text: str, rng: np.random.Generator, min_s: float = MIN_S,
               max_s: float = MAX_S) -> np.ndarray:
    """[channels, n] at 48 kHz: the voice in the centre (5.1) or both channels, a faint echo around it.

    No extra noise: the clip already has its floor, and a second one shifts log-mel
    statistics of the pauses more than any emotion does (the LAION part would not transfer).
    """
    voice = meld_voice(row["speaker"])
    cues = sample_cues(profile(MELD_PROFILE[emotion]), voice, rng)
    wave, _ = synthesize(cues, voice, syllables(text), rng, sr=SR, min_s=min_s, max_s=max_s)
    wave = resample_poly(wave, 2, 1).astype(np.float32)

    def echo(delay_s: float, gain: float) -> np.ndarray:
        k = int(delay_s * MELD_SR)
        return np.concatenate([np.zeros(k, np.float32), gain * wave[: len(wave) - k]])

    if row["channels"] == 6:  # FL FR FC LFE BL BR
        return np.stack([0.3 * wave, 0.3 * wave + echo(0.011, 0.05), wave, 0.1 * wave, echo(0.023, 0.08),
                         echo(0.031, 0.08)])
    return np.stack([0.9 * wave + echo(0.017, 0.06), 0.85 * wave + echo(0.013, 0.06)])


def build_meld_clips(rows: list[dict], root: str, seed: int) -> list[dict]:
    """Write the mp4s of `rows`; returns one dict per row with its duration and files."""
    out = []
    for row in rows:
        key = f"meld/{row['split']}/dia{row['dia']}_utt{row['utt']}"
        rng = clip_rng(seed, key)
        res = {"key": key, "duration_s": None, "twin_duration_s": None}
        if row["status"] == "missing_clip":
            res["duration_s"] = round(float(rng.uniform(1.0, 4.0)), 3)
        elif row["status"] == "corrupt_audio":
            res["duration_s"] = round(float(rng.uniform(1.0, 4.0)), 3)
            with open(os.path.join(root, _meld_file(row)), "wb") as f:
                f.write(rng.bytes(int(rng.integers(20000, 60000))))
        else:
            text = readable(row["utterance"])
            planes = _meld_wave(row, row["emotion"], text, rng, min_s=11.5 if row["long"] else MIN_S,
                                max_s=12.5 if row["long"] else MAX_S)
            write_mp4(os.path.join(root, _meld_file(row)), planes)
            res["duration_s"] = planes.shape[1] / MELD_SR
            if row["twin"]:  # a different, wrong clip: other words, other emotion, >= 1.5 s longer or shorter
                d = res["duration_s"]
                other = "anger" if row["emotion"] != "anger" else "sadness"
                if d < 4.5:
                    tw = _meld_wave(row, other, " ".join(MELD_LINES["neutral"][3:6]), rng, min_s=d + 1.5)
                else:
                    tw = _meld_wave(row, other, "No way!", rng, max_s=max(MIN_S, d - 1.5))
                write_mp4(os.path.join(root, _meld_file(row, twin=True)), tw)
                res["twin_duration_s"] = tw.shape[1] / MELD_SR
        out.append(res)
    return out


def _timestamp(seconds: float, one_digit_hour: bool) -> str:
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:d}:{m:02d}:{s:02d},{ms:03d}" if one_digit_hour else f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def write_meld_csvs(rows: list[dict], durations: dict[str, float], meld_dir: str, rng: np.random.Generator):
    clock: dict[tuple, float] = {}  # (split, dialogue) -> where its next utterance starts, s
    one_digit_hour: dict[tuple, bool] = {}  # MELD writes "0:36:59,425" in some dialogues
    for split in ("train", "dev", "test"):
        with open(os.path.join(meld_dir, f"{split}_sent_emo.csv"), "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(MELD_HEADER)
            for r in rows:
                if r["split"] != split or not r["in_csv"]:
                    continue
                dkey = (split, r["dia"])
                if dkey not in clock:
                    clock[dkey] = float(rng.uniform(30, 2400))
                    one_digit_hour[dkey] = bool(rng.random() < 0.3)
                start = clock[dkey]
                end = start + durations[f"meld/{split}/dia{r['dia']}_utt{r['utt']}"]
                clock[dkey] = end + float(rng.uniform(0.2, 2.0))
                one = one_digit_hour[dkey]
                w.writerow([r["sr_no"], r["utterance"], r["speaker"], r["emotion"], r["sentiment"], r["dia"],
                            r["utt"], r["season"], r["episode"], _timestamp(start, one), _timestamp(end, one)])


def meld_truth(rows: list[dict], results: dict[str, dict]) -> list[dict]:
    out = []
    for r in rows:
        key = f"meld/{r['split']}/dia{r['dia']}_utt{r['utt']}"
        res = results[key]
        rec = {"source": "meld", "key": key, "label": r["emotion"] if r["in_csv"] else None,
               "transcript": readable(r["utterance"]) if r["in_csv"] else None, "caption": None,
               "split": r["split"], "status": r["status"], "duration_s": res["duration_s"], "file": _meld_file(r),
               "language": "en", "voice": r["speaker"], "channels": r["channels"]}
        if r["twin"]:
            rec["twin_file"] = _meld_file(r, twin=True)  # the plain-named file: a different, wrong clip
            rec["twin_duration_s"] = res["twin_duration_s"]
        if r["status"] == "corrupt_audio":
            rec["note"] = "garbage bytes under an .mp4 name, like MELD's train dia125_utt3.mp4"
        elif r["status"] == "missing_clip":
            rec["note"] = "CSV row whose clip file is missing, like MELD's dev dia110_utt7.mp4"
        elif r["status"] == "no_csv_row":
            rec["note"] = "mp4 with no CSV row, like MELD's dev dia66_utt9.mp4"
        elif r["long"]:
            rec["note"] = "a long (~12 s) clip"
        elif r["prefix"] and not r["twin"]:
            rec["note"] = "exists only with the final_videos_test prefix"
        out.append(rec)
    return out
