"""ingest.synthetic: the corpus is deterministic, has both real layouts exactly, holds every
bad case its truth.jsonl lists, and its classes differ in prosody."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tarfile

import av
import numpy as np
import pytest

from ingest.decode import DecodeError, decode_audio
from ingest.synthetic import generate, main
from ingest.synthetic.meld import readable
from ingest.synthetic.spec import EXTRA_TAR, MELD_FOLDERS, MELD_HEADER, UNKNOWN_PROMPT_TAR
from ingest.synthetic.voice import VOICES, syllables
from lake.errors import LakeError
from lake.taxonomy import EMONET_CATEGORIES, map_prompt
from ingest.sources.laion import (is_extra_tar, parse_annotation_scores, parse_tar_name,
                                  transcript_from_annotation)

ARGS = dict(clips=72, meld_clips=30, seed=3, languages=("en", "de"))
JSON_KEYS = {"duration", "detailed_caption", "flash_transcription", "annotation"}
MIN_OK = 0.5  # shortest clip, s


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / "corpus")
    summary = generate(root, workers=2, **ARGS)
    with open(os.path.join(root, "truth.jsonl"), encoding="utf-8") as f:
        truth = [json.loads(line) for line in f]
    return root, summary, truth


def tree_digest(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def tar_members(path: str) -> dict[str, bytes | None]:
    with tarfile.open(path) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def test_same_seed_same_bytes_any_workers(corpus, tmp_path):
    root, summary, _ = corpus
    again = str(tmp_path / "again")
    generate(again, workers=1, **ARGS)
    assert tree_digest(again) == tree_digest(root)
    other = str(tmp_path / "other")
    generate(other, workers=2, **{**ARGS, "seed": 4})
    a, b = tree_digest(root), tree_digest(other)
    differing = [k for k in a if k.endswith((".tar", ".csv")) and a.get(k) != b.get(k)]
    assert len(differing) > 0.9 * len([k for k in a if k.endswith((".tar", ".csv"))])
    assert summary["laion"]["by_status"]["ok"] >= 60 and summary["meld"]["by_status"]["ok"] >= 25


def test_refuses_to_overwrite_and_checks_arguments(corpus, tmp_path):
    root, _, _ = corpus
    with pytest.raises(LakeError, match="--overwrite"):
        generate(root, **ARGS)
    with pytest.raises(LakeError, match="too small"):
        generate(str(tmp_path / "tiny"), clips=5)
    assert not os.path.exists(tmp_path / "tiny" / "laion")  # nothing written for a bad argument
    with pytest.raises(LakeError, match="EmoNet"):
        generate(str(tmp_path / "x"), classes=["Anger", "Grumpiness"])
    assert main(["--out", str(tmp_path / "tiny"), "--clips", "5"]) == 2
    foreign = tmp_path / "real-data"
    (foreign / "laion").mkdir(parents=True)
    (foreign / "laion" / "en_x.tar").write_bytes(b"")
    with pytest.raises(LakeError, match="not a synthetic corpus"):
        generate(str(foreign), overwrite=True)
    assert (foreign / "laion" / "en_x.tar").exists()
    half = tmp_path / "half"  # a killed run: marker and some tars, no truth.jsonl
    (half / "laion").mkdir(parents=True)
    (half / "laion" / "stale.tar").write_bytes(b"")
    (half / ".synthetic-corpus").write_text("{}")
    generate(str(half), clips=27, meld_clips=0, languages=("en", "de"), overwrite=True, workers=1)
    assert not (half / "laion" / "stale.tar").exists() and (half / "truth.jsonl").exists()


def test_max_seconds_makes_shorter_laion_clips(corpus, tmp_path):
    """The demo's shorter clips: every LAION clip fits the ceiling, with shorter sentences chosen to fit it,
    MELD's keep MELD's lengths, and the marker records it."""
    _, _, truth = corpus
    short_root = str(tmp_path / "short")
    generate(short_root, workers=1, max_seconds=3.0, **ARGS)
    with open(os.path.join(short_root, "truth.jsonl"), encoding="utf-8") as f:
        short = [json.loads(line) for line in f]
    laion, before = ([r for r in recs if r["source"] == "laion" and r["status"] == "ok"] for recs in (short, truth))
    assert laion and max(r["duration_s"] for r in laion) <= 3.0 + 1e-6
    assert np.mean([r["duration_s"] for r in laion]) < 0.8 * np.mean([r["duration_s"] for r in before])

    def spoken(recs):  # syllables of the transcripts: shorter sentences, not the same ones cut off
        return np.mean([len(syllables(r["transcript"])) for r in recs if r["transcript"]])

    assert spoken(laion) < 0.8 * spoken(before)
    meld = {r["key"]: r["duration_s"] for r in truth if r["source"] == "meld"}
    assert {r["key"]: r["duration_s"] for r in short if r["source"] == "meld"} == meld
    assert json.load(open(os.path.join(short_root, ".synthetic-corpus")))["max_seconds"] == 3.0
    with pytest.raises(LakeError, match="--max-seconds"):
        generate(str(tmp_path / "too-short"), max_seconds=1.0, **ARGS)
    with pytest.raises(SystemExit) as refused:
        main(["--out", str(tmp_path / "flag"), "--max-seconds", "9"])
    assert refused.value.code == 2 and not (tmp_path / "flag").exists()


def test_tar_names_parse_and_map_to_truth_labels(corpus):
    root, _, truth = corpus
    names = sorted(os.listdir(os.path.join(root, "laion")))
    assert EXTRA_TAR in names and UNKNOWN_PROMPT_TAR in names
    labels = {}
    for rec in truth:
        if rec["source"] == "laion":
            labels.setdefault(os.path.basename(rec["file"]), set()).add(rec["label"])
    langs, voices, fixed = set(), set(), set()
    for name in names:
        assert name.endswith(".tar")
        if name == EXTRA_TAR:
            assert is_extra_tar(name) and parse_tar_name(name) is None and labels[name] == {None}
            continue
        parsed = parse_tar_name(name)
        assert parsed is not None and re.fullmatch(r"(en|de)_[a-z]+_intense_[a-z_-]+\.tar", name), name
        assert map_prompt(parsed.prompt) == labels[name].pop(), name
        langs.add(parsed.language)
        voices.add(parsed.voice)
        fixed.add(name.endswith("_vocalbursts_fixed.tar"))
    assert langs == {"en", "de"} and fixed == {True, False} and voices <= set(VOICES) and len(voices) >= 6
    labels_seen = {r["label"] for r in truth if r["source"] == "laion" and r["status"] == "ok"}
    assert labels_seen == {"Elation", "Anger", "Sadness", "Fear", "Contentment", "Astonishment/Surprise", "Disgust",
                           "Contemplation", "Fatigue/Exhaustion"}
    en = sum(r["language"] == "en" for r in truth if r["source"] == "laion")
    assert en > 0.6 * sum(r["source"] == "laion" for r in truth)


def test_tar_members_json_and_transcripts(corpus):
    root, _, truth = corpus
    layouts, closings, empty_flash = set(), set(), 0
    by_tar: dict[str, list[dict]] = {}
    for rec in truth:
        if rec["source"] == "laion":
            by_tar.setdefault(rec["file"], []).append(rec)
    for file, recs in by_tar.items():
        stem = os.path.basename(file)[:-4]
        members = tar_members(os.path.join(root, file))
        files = [m for m, data in members.items() if data is not None]
        prefixed = {m.startswith(stem + "/") for m in files}
        assert len(prefixed) == 1, file  # one layout per tar
        layouts |= prefixed
        for m in files:
            assert re.fullmatch(rf"({re.escape(stem)}/)?\d{{6}}\.(mp3|json)", m), m
        for rec in recs:
            assert rec["key"] == f"{stem}/{rec['key'].rsplit('/', 1)[1]}"
            if rec["status"] not in ("ok", "ignored_tar", "unknown_prompt"):
                continue
            base = rec["member"].rsplit(".", 1)[0]
            meta = json.loads(members[base + ".json"])
            assert set(meta) == JSON_KEYS
            assert meta["duration"] == pytest.approx(rec["duration_s"]) and MIN_OK <= meta["duration"] <= 8.0
            assert meta["detailed_caption"] == rec["caption"] and " voice " in rec["caption"]
            lines = meta["annotation"].split("\n")
            n = len(EMONET_CATEGORIES) + 2  # 40 categories, Valence, Arousal, then the block
            assert lines[n].startswith("<transcription_start>") and lines[n - 1].startswith("<Arousal>")
            assert lines[0].startswith("<Amusement>") and re.fullmatch(r"<(\w+)>\d#[^<]+</\1>", lines[0])
            assert "<Pleasure_Ecstasy>" in meta["annotation"] and "<Valence>" in meta["annotation"]
            scores = parse_annotation_scores(meta["annotation"])
            assert set(EMONET_CATEGORIES) <= set(scores) and {"Valence", "Arousal"} <= set(scores)
            if rec["label"]:
                assert scores[rec["label"]] == max(scores[c] for c in EMONET_CATEGORIES) >= 2
            closings.add(re.search(r"</transcription_(start|end)>$", meta["annotation"]).group(1))
            block = transcript_from_annotation(meta["annotation"])
            if meta["flash_transcription"]:
                assert rec["transcript"] == meta["flash_transcription"]
            else:
                empty_flash += 1
                assert rec["transcript"] == block and block
    assert layouts == {True, False} and closings == {"start", "end"} and empty_flash >= 1


def test_laion_bad_cases_are_really_there(corpus):
    root, _, truth = corpus
    bad = [r for r in truth if r["source"] == "laion" and r["status"] != "ok"]
    statuses = sorted(r["status"] for r in bad)
    assert statuses.count("malformed_json") == 3 and statuses.count("unpaired") == 2
    assert {"corrupt_audio", "empty_audio", "ignored_tar", "unknown_prompt"} <= set(statuses)
    unpaired_kinds = set()
    for rec in bad:
        members = tar_members(os.path.join(root, rec["file"]))
        base = rec["member"].rsplit(".", 1)[0]
        if rec["status"] == "malformed_json":
            text = members[base + ".json"]
            try:
                assert not isinstance(json.loads(text), dict)
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass
            decode_audio(members[base + ".mp3"])  # the audio itself is fine
        elif rec["status"] == "unpaired":
            has = (base + ".mp3" in members, base + ".json" in members)
            assert has in [(True, False), (False, True)]
            unpaired_kinds.add(has)
        elif rec["status"] == "corrupt_audio":
            with pytest.raises(DecodeError):
                decode_audio(members[base + ".mp3"])
        elif rec["status"] == "empty_audio":
            assert members[base + ".mp3"] == b""
        elif rec["status"] in ("ignored_tar", "unknown_prompt"):
            assert os.path.basename(rec["file"]) in (EXTRA_TAR, UNKNOWN_PROMPT_TAR) and rec["label"] is None
            assert base + ".mp3" in members and base + ".json" in members
    assert len(unpaired_kinds) == 2


def read_csv(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_meld_csvs(corpus):
    root, _, truth = corpus
    raw_all = ""
    for split in ("train", "dev", "test"):
        path = os.path.join(root, "meld", f"{split}_sent_emo.csv")
        raw = open(path, encoding="utf-8").read()
        raw_all += raw
        assert raw.splitlines()[0] == ",".join(MELD_HEADER)
        rows = read_csv(path)[1:]
        assert rows
        sr = [int(r[0]) for r in rows]
        assert sr == sorted(sr) and sr[0] == 1
        assert min(int(r[5]) for r in rows) == 0  # dialogue ids restart per split
        for r in rows:
            assert re.fullmatch(r"\d{1,2}:\d\d:\d\d,\d{3}", r[9]) and re.fullmatch(r"\d{1,2}:\d\d:\d\d,\d{3}", r[10])
            expected = {"joy": {"positive"}, "neutral": {"neutral"}, "surprise": {"positive", "negative"}}
            assert r[4] in expected.get(r[3], {"negative"}), r  # Sentiment follows Emotion
        recs = {r["key"]: r for r in truth if r["source"] == "meld" and r["split"] == split}
        for r in rows:
            rec = recs[f"meld/{split}/dia{r[5]}_utt{r[6]}"]
            assert rec["label"] == r[3] and rec["transcript"] == readable(r[1])
    for ch in "\x92\x85\x93\x94\x96":
        assert ch in raw_all, repr(ch)
    assert '""' in raw_all and re.search(r',"\d:\d\d:\d\d,\d{3}"', raw_all) and re.search(r',"\d\d:', raw_all)
    train_rows = read_csv(os.path.join(root, "meld", "train_sent_emo.csv"))[1:]
    assert any(int(b[0]) - int(a[0]) > 1 for a, b in zip(train_rows, train_rows[1:]))  # Sr No. has gaps
    train = [r[3] for r in train_rows]
    assert 0.3 < train.count("neutral") / len(train) < 0.65 and len(set(train)) == 7


def test_meld_clips_and_bad_cases(corpus):
    root, _, truth = corpus
    meld = [r for r in truth if r["source"] == "meld"]
    for split, folder in MELD_FOLDERS.items():
        assert os.path.isdir(os.path.join(root, "meld", folder))
    channels, long_clip = set(), None
    csv_keys = set()
    for split in MELD_FOLDERS:
        for r in read_csv(os.path.join(root, "meld", f"{split}_sent_emo.csv"))[1:]:
            csv_keys.add(f"meld/{split}/dia{r[5]}_utt{r[6]}")
    statuses = {r["status"] for r in meld}
    assert statuses == {"ok", "corrupt_audio", "missing_clip", "no_csv_row"}
    twins = prefix_only = 0
    for rec in meld:
        path = os.path.join(root, rec["file"])
        name = os.path.basename(rec["file"])
        assert rec["file"].startswith(f"meld/{MELD_FOLDERS[rec['split']]}/")
        if rec["status"] == "missing_clip":
            assert not os.path.exists(path) and rec["key"] in csv_keys
            continue
        if rec["status"] == "corrupt_audio":
            assert rec["split"] == "train" and "dia125_utt3" in rec["note"]
            with pytest.raises(DecodeError):
                decode_audio(path)
            continue
        assert (rec["key"] in csv_keys) == (rec["status"] != "no_csv_row")
        with av.open(path) as c:
            assert [s.type for s in c.streams] == ["video", "audio"]
            assert c.streams.audio[0].codec_context.name == "aac" and c.streams.audio[0].rate == 48000
            channels.add(c.streams.audio[0].codec_context.channels)
        d = decode_audio(path)
        assert abs(d.duration_s - rec["duration_s"]) < 0.05
        if rec["duration_s"] > 10:
            long_clip = rec
        if name.startswith("final_videos_test"):
            assert rec["split"] == "test"
            plain = os.path.join(os.path.dirname(path), name[len("final_videos_test"):])
            if "twin_file" in rec:  # the plain-named twin holds a different, wrong clip
                twins += 1
                assert os.path.join(root, rec["twin_file"]) == plain
                assert abs(decode_audio(plain).duration_s - d.duration_s) > 1.0
            else:
                prefix_only += 1
                assert not os.path.exists(plain)
    assert channels == {2, 6} and twins >= 2 and prefix_only == 1
    assert long_clip is not None and 11 <= long_clip["duration_s"] <= 13 and long_clip["split"] == "test"


def f0_semitones(wave: np.ndarray, base_hz: float) -> float:
    """Median f0 of the voiced frames (autocorrelation), in semitones from `base_hz`."""
    frame, hop = 640, 320
    frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop]
    energy = (frames ** 2).mean(1)
    f0s = []
    for fr in frames[energy > 0.2 * energy.max()]:
        fr = fr - fr.mean()
        ac = np.correlate(fr, fr, "full")[frame - 1:]
        lo, hi = 16000 // 450, 16000 // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            f0s.append(16000 / lag)
    return 12 * np.log2(np.median(f0s) / base_hz) if f0s else np.nan


def spectral_centroid(wave: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(wave)) ** 2
    return float((spec * np.fft.rfftfreq(len(wave), 1 / 16000)).sum() / spec.sum())


def test_prosody_differs_by_class(corpus):
    """Anger is higher (relative to each voice's own pitch), brighter and faster than Sadness."""
    root, _, truth = corpus
    feats: dict[str, list[tuple[float, float, float]]] = {"Anger": [], "Sadness": []}
    tars = {}
    for rec in truth:
        if rec["source"] != "laion" or rec["status"] != "ok" or rec["label"] not in feats:
            continue
        if rec["file"] not in tars:
            tars[rec["file"]] = tar_members(os.path.join(root, rec["file"]))
        meta = json.loads(tars[rec["file"]][rec["member"][:-4] + ".json"])
        w = decode_audio(tars[rec["file"]][rec["member"]]).wave
        rate = len(syllables(rec["transcript"])) / meta["duration"]
        feats[rec["label"]].append((f0_semitones(w, VOICES[rec["voice"]].f0), spectral_centroid(w), rate))
    anger, sad = np.array(feats["Anger"]), np.array(feats["Sadness"])
    assert len(anger) >= 5 and len(sad) >= 5
    assert np.nanmean(anger[:, 0]) > np.nanmean(sad[:, 0]) + 2.0  # semitones
    assert anger[:, 1].mean() > 1.2 * sad[:, 1].mean()  # Hz
    assert anger[:, 2].mean() > sad[:, 2].mean()  # syllables per second (roughly: long clips are cut)


def test_text_helpers():
    assert readable("company\x92s \x93we\x94 well\x85 a \x96 b\x97c\xa0d") == 'company\'s "we" well... a - b--c d'
    sylls = syllables("Okay, so. The table!")  # o-kay, so, the, ta-ble (silent e): phrase ends at punctuation
    assert sylls == [("o", False), ("e", True), ("o", True), ("e", False), ("a", True)]


def test_progress_counts_the_clips_made_of_their_total(tmp_path, capfd):
    summary = generate(str(tmp_path / "c"), clips=27, meld_clips=0, workers=1, progress=True)
    made = summary["laion"]["clips"]  # the emotion tars' clips plus the two extra tars' 3 each
    assert f"corpus: {made} of {made} clips (100%) in " in capfd.readouterr().err
    generate(str(tmp_path / "quiet"), clips=27, meld_clips=0, workers=1)
    assert "corpus:" not in capfd.readouterr().err
