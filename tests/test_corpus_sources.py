"""Any corpus into the lake: a manifest table (with segments of a long recording), an EmoBox folder
(fold split and label map), and Hugging Face datasets read with `datasets.load_dataset` (a parquet
dataset and an audiofolder); bad rows are quarantined with their reason, bad columns stop the run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_decode import write
from test_sources import rows_and_embeddings, run_ingest, same_rows

from lake.catalog import open_shard_set

ARGS = ("--decode-workers", "1", "--block-rows", "8", "--rows-per-shard", "16")


def sweep(seconds: float, rate: int, f0: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (f0 + 40 * t) * t)).astype(np.float32)[None]


def wav(path, seconds: float = 0.6, f0: float = 220.0, rate: int = 16000) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return write(path, sweep(seconds, rate, f0), rate, "wav", "pcm_s16le")


def rows(out) -> dict[str, dict]:
    return {r["key"]: r for r in open_shard_set(str(out)).index.to_pylist()}


def reasons(out) -> dict[str, str]:
    return {q["key"]: q["reason"] for q in open_shard_set(str(out)).quarantine()}


# -- a manifest table --------------------------------------------------------------------------

def test_manifest_csv_with_segments_and_speaker_splits(capsys, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "session").mkdir(parents=True)
    write(corpus / "session" / "long.mp3", sweep(8.0, 24000, 150.0), 24000, "mp3", "libmp3lame")
    for i in range(6):
        wav(corpus / "clips" / f"c{i}.wav", 0.5 + 0.1 * i, 200 + 30 * i)
    (tmp_path / "taxonomy.txt").write_text("happy\nsad\nangry\n")
    lines = ["path,label,start,end,speaker,transcript",
             "session/long.mp3,happy,0,2,s0,first part",
             "session/long.mp3,sad,2,4.5,s0,second part",
             "session/long.mp3,angry,4.5,6,s1,",
             "session/long.mp3,happy,7.5,12,s1,past the end",  # the file is 8 s long
             "session/long.mp3,sad,5,3,s1,",  # ends before it starts
             f"{corpus / 'clips' / 'c0.wav'},sad,,,s2,an absolute path",
             *[f"clips/c{i}.wav,{['happy', 'sad', 'angry'][i % 3]},,,s{i % 6},clip {i}" for i in range(1, 6)],
             "clips/c5.wav,sad,,,s5,the same key again",
             "clips/gone.wav,happy,,,s3,",
             "clips/c1.wav,bored,0,0.2,s4,",  # not in the taxonomy
             "clips/c2.wav,happy,0.1"]  # cut short
    (corpus / "manifest.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "set"
    code, stdout, err = run_ingest(capsys, "--source", "manifest", "--input", corpus / "manifest.csv", "--out", out,
                                   "--taxonomy", tmp_path / "taxonomy.txt", "--split-by", "speaker",
                                   "--val-fraction", "0.2", "--test-fraction", "0.2", *ARGS)
    assert code == 0, err
    got = rows(out)
    assert set(got) == {"session/long@0.000-2.000", "session/long@2.000-4.500", "session/long@4.500-6.000",
                        str(corpus / "clips" / "c0").lstrip("/"), *[f"clips/c{i}" for i in range(1, 6)]}
    for key, seconds in (("session/long@0.000-2.000", 2.0), ("session/long@2.000-4.500", 2.5),
                         ("session/long@4.500-6.000", 1.5)):
        assert abs(got[key]["duration_s"] - seconds) < 1e-3  # only the span was decoded
    assert got["session/long@2.000-4.500"]["label"] == "sad"
    assert got["session/long@0.000-2.000"]["transcript"] == "first part"
    speakers = {"session/long@0.000-2.000": "s0", "session/long@2.000-4.500": "s0", "session/long@4.500-6.000": "s1",
                str(corpus / "clips" / "c0").lstrip("/"): "s2", **{f"clips/c{i}": f"s{i}" for i in range(1, 6)}}
    split_of = {}
    for key, r in got.items():
        assert split_of.setdefault(speakers[key], r["split"]) == r["split"]  # a speaker is in one split
    assert {r["split"] for r in got.values()} == {"train", "val", "test"}
    why = {k: v.split(":")[0] for k, v in reasons(out).items()}
    assert why["session/long@7.500-12.000"] == "segment past end"
    assert why["manifest/line6"] == "bad segment"
    assert why["clips/gone"] == "missing file" and why["clips/c1@0.000-0.200"] == "label not in taxonomy"
    assert why["manifest/line16"] == "bad row" and "cut short" in reasons(out)["manifest/line16"]
    assert sum(v == "duplicate key" for v in why.values()) == 1, reasons(out)
    assert "label" in stdout and "happy" in stdout  # the rows-per-label table


def test_a_table_without_the_required_columns_stops_before_any_work(capsys, tmp_path):
    (tmp_path / "m.csv").write_text("file,emotion\na.wav,happy\n")
    code, _, err = run_ingest(capsys, "--source", "manifest", "--input", tmp_path / "m.csv", "--out", tmp_path / "o")
    assert code == 2 and "missing column(s) path, label" in err and "'file', 'emotion'" in err
    assert not (tmp_path / "o").exists()


# -- the EmoBox layout --------------------------------------------------------------------------

def test_emobox_folder_takes_the_fold_split_and_its_label_map(capsys, tmp_path):
    root = tmp_path / "EmoBox"
    data = root / "data" / "mini"
    (data / "fold_1").mkdir(parents=True)
    (data / "label_map.json").write_text(json.dumps({"neu": "Neutral", "hap": "Happy", "exc": "Happy", "ang": "Angry"}))
    emos = ["neu", "hap", "exc", "ang", "fru"]
    rows_all = []
    for i in range(14):
        path = f"downloads/mini/Session{i % 2 + 1}/u{i:02d}.wav"
        wav(root / path, 0.4 + 0.05 * i, 180 + 20 * i)
        rows_all.append({"key": f"mini-u{i:02d}", "dataset": "mini", "wav": path, "type": "raw",
                         "sample_rate": 16000, "length": round(0.4 + 0.05 * i, 3), "task": "category",
                         "emo": emos[i % 5], "channel": 1})
    test_keys = {r["key"] for r in rows_all if r["wav"].split("/")[2] == "Session2"}

    def jsonl(path, items, tail=""):
        path.write_text("".join(json.dumps(r) + "\n" for r in items) + tail)

    jsonl(data / "mini.jsonl", rows_all)
    jsonl(data / "fold_1" / "mini_train_fold_1.jsonl", [r for r in rows_all if r["key"] not in test_keys],
          tail='{"key": "mini-cut", "dataset": "mi')  # cut mid-line
    jsonl(data / "fold_1" / "mini_test_fold_1.jsonl", [r for r in rows_all if r["key"] in test_keys])
    out = tmp_path / "set"
    code, stdout, err = run_ingest(capsys, "--source", "manifest", "--input", data, "--fold", "1", "--out", out,
                                   "--val-fraction", "0.3", *ARGS)
    assert code == 0, err
    got = rows(out)
    usable = {r["key"]: r for r in rows_all if r["emo"] != "fru"}
    assert set(got) == set(usable)
    label_map = {"neu": "Neutral", "hap": "Happy", "exc": "Happy", "ang": "Angry"}
    for key, r in got.items():
        assert r["label"] == label_map[usable[key]["emo"]]
        assert (r["split"] == "test") == (key in test_keys)  # the fold's test part, exactly
        assert abs(r["duration_s"] - usable[key]["length"]) < 0.01
    assert {r["split"] for r in got.values()} == {"train", "val", "test"}  # val carved from the train part
    assert open_shard_set(str(out)).taxonomy == ["Angry", "Happy", "Neutral"]
    why = reasons(out)
    assert all(why[r["key"]].startswith("label not in label map: 'fru'") for r in rows_all if r["emo"] == "fru")
    (cut,) = [v for k, v in why.items() if "mid-line" in v]
    assert cut.startswith("bad row:") and "mini_train_fold_1.jsonl line" in cut
    plan = open_shard_set(str(out)).manifest.ingest["plan"]["source"]
    assert plan["layout"] == "emobox" and plan["fold"] == 1 and plan["label_map"]["exc"] == "Happy"


# -- Hugging Face datasets ----------------------------------------------------------------------

def _parquet_dataset(root) -> dict:
    """A dataset as the hub stores one: parquet files whose schema metadata declares the features."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["angry", "happy", "sad"]
    features = {"audio": {"_type": "Audio"}, "label": {"names": names, "_type": "ClassLabel"},
                "text": {"dtype": "string", "_type": "Value"}, "id": {"dtype": "string", "_type": "Value"}}
    truth = {}
    (root / "data").mkdir(parents=True)
    for split, n_files, n in (("train", 2, 5), ("test", 1, 4)):
        for f in range(n_files):
            audio, labels, texts, ids = [], [], [], []
            for i in range(n):
                cid = f"{split}-{f}-{i}"
                data = open(wav(root / "src" / f"{cid}.wav", 0.3 + 0.05 * i, 200 + 25 * i), "rb").read()
                label = (i + f) % 3
                if i == 3:
                    data = b"RIFF not really a wave"  # quarantined at decode
                if i == 4:
                    label = -1  # no label
                audio.append({"bytes": data, "path": f"{cid}.wav"})
                labels.append(label)
                texts.append(f"words of {cid}")
                ids.append(cid)
                truth[cid] = (split, names[label] if label >= 0 else None, i == 3)
            table = pa.table({"audio": pa.array(audio, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                              "label": pa.array(labels, pa.int64()), "text": texts, "id": ids})
            table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
            pq.write_table(table, root / "data" / f"{split}-{f:05d}-of-{n_files:05d}.parquet")
    return truth


HF_ARGS = ("--key-column", "id", "--text-column", "text", *ARGS)


@pytest.fixture(scope="module")
def hf_parquet(tmp_path_factory):
    """(dataset folder, truth, the set ingested from it)."""
    from ingest.run import main

    root = tmp_path_factory.mktemp("hf")
    truth = _parquet_dataset(root / "ds")
    assert main(["--source", "hf", "--input", str(root / "ds"), "--out", str(root / "set"), *HF_ARGS]) == 0
    return root / "ds", truth, root / "set"


def test_hf_parquet_dataset(capsys, hf_parquet, tmp_path):
    ds, truth, out = hf_parquet
    got = rows(out)
    good = {k: t for k, t in truth.items() if t[1] is not None and not t[2]}
    assert set(got) == set(good)
    for key, r in got.items():
        assert (r["split"], r["label"], r["transcript"]) == (good[key][0], good[key][1], f"words of {key}")
    assert open_shard_set(str(out)).taxonomy == ["angry", "happy", "sad"]  # the ClassLabel's order
    assert open_shard_set(str(out)).manifest.ingest["plan"]["source"]["split_map"] == {"train": "train", "test": "test"}
    why = reasons(out)
    assert all(why[k] == "no label" for k, t in truth.items() if t[1] is None)
    assert all(why[k].startswith("decode error") for k, t in truth.items() if t[2] and t[1] is not None)
    import sys

    assert "torchcodec" not in sys.modules
    # a wrong column name stops before any work, listing the columns the dataset has
    code, _, err = run_ingest(capsys, "--source", "hf", "--input", ds, "--out", tmp_path / "o2",
                              "--label-column", "emotion")
    assert code == 2 and "no column 'emotion' for --label-column; it has audio, label, text, id" in err
    assert not (tmp_path / "o2").exists()


def test_hf_read_failing_mid_data_file_resumes(capsys, hf_parquet, tmp_path, monkeypatch):
    import datasets

    ds, _, reference = hf_parquet
    real, failed = datasets.IterableDataset.__iter__, []

    def dropped_connection(self):  # the data file's stream breaks (a row's own faults are that row's: one_clip)
        for row in real(self):
            if row.get("id") == "train-1-2" and not failed:  # the second data file of train, mid-way
                failed.append(1)
                raise OSError("connection reset")
            yield row

    monkeypatch.setattr(datasets.IterableDataset, "__iter__", dropped_connection)
    out = tmp_path / "set"
    args = ("--source", "hf", "--input", ds, "--out", out, *HF_ARGS, "--checkpoint-mb", "0.001")
    code, _, err = run_ingest(capsys, *args)
    assert code == 2 and "reading split train data file 1 failed after 2 rows" in err and "re-run" in err
    code, _, err = run_ingest(capsys, *args)
    assert code == 0 and "resuming" in err
    assert same_rows(rows_and_embeddings(reference), rows_and_embeddings(out))


def test_hf_audiofolder_with_a_metadata_csv(capsys, tmp_path):
    root = tmp_path / "af"
    lines = ["file_name,emotion,transcript,speaker"]
    for i in range(12):
        wav(root / f"a{i:02d}.wav", 0.3 + 0.04 * i, 190 + 15 * i)
        lines.append(f"a{i:02d}.wav,{['calm', 'angry', 'sad'][i % 3]},say {i},spk{i % 4}")
    lines.append("a99.wav,sad,missing,spk1")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "set"
    code, stdout, err = run_ingest(capsys, "--source", "hf", "--input", root, "--out", out, "--label-column", "emotion",
                                   "--text-column", "transcript", "--split-by", "speaker", "--val-fraction", "0.25",
                                   "--test-fraction", "0.25", *ARGS)
    assert code == 0, err
    got = rows(out)
    assert len(got) == 12 and all(k.startswith("train/0000/") for k in got)  # split/data file/row
    assert open_shard_set(str(out)).taxonomy == ["angry", "calm", "sad"]  # the strings the column holds
    split_of = {}
    for r in got.values():
        i = int(r["transcript"].split()[-1])
        assert r["label"] == ["calm", "angry", "sad"][i % 3]
        assert split_of.setdefault(i % 4, r["split"]) == r["split"]  # one split per speaker
    assert sorted(split_of.values()) == ["test", "train", "train", "val"]
    (reason,) = reasons(out).values()
    assert reason.startswith("missing file") and "a99.wav" in reason
