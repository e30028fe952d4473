"""evaluation.table: several reports as one table, checked against numpy on the reports' own numbers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from evaluation import cli, table
from evaluation.report import write_report
from trainers.metrics import classification_metrics

NAMES = ("ua", "wa", "macro_f1", "weighted_f1")


def _metrics(seed: int, drop=()) -> dict:
    """Stage-3 metrics of a predictor right ~60% of the time on 4 classes (its numbers differ by seed)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 120)
    pred = np.where(rng.random(120) < 0.6, y, rng.integers(0, 4, 120))
    return {k: v for k, v in classification_metrics(y, pred, 4, ["anger", "joy", "neutral", "sad"]).items()
            if k not in drop}


def _report(out, seed: int, data_root: str, split: str = "test", drop=(), sets=()) -> dict:
    """A stage-3 report written by the real writer (with `sets`: a multi-set report, per-set metrics under "sets")."""
    m = _metrics(seed, drop)
    if sets:
        m["sets"] = {name: _metrics(seed + i + 1) for i, name in enumerate(sets)}
    write_report(str(out), "stage3", m, {"checkpoint": f"/ckpt/seed{seed}.pt", "data_root": data_root,
                                          "fingerprint": f"fp-{os.path.basename(data_root)}", "split": split,
                                          "num_rows": 120})
    return m


def test_three_seeds_equal_numpy_mean_and_sample_std(tmp_path):
    seeds = [_report(tmp_path / "sweep" / f"seed{k}", k, "/sets/iemocap-fold1") for k in range(3)]
    res = cli.main(["table", str(tmp_path / "sweep"), "--out", str(tmp_path / "table")])
    assert res == 0
    t = json.load(open(tmp_path / "table" / "table.json"))
    (group,), (overall,) = t["groups"], t["overall"]
    assert group["set"] == "iemocap-fold1" and group["n"] == 3 and t["split"] == "test"
    for name in NAMES:
        values = [m[name] for m in seeds]
        mean = sum(values) / 3  # by hand
        std = (sum((v - mean) ** 2 for v in values) / (3 - 1)) ** 0.5  # the sample std: n - 1
        assert group["metrics"][name]["mean"] == pytest.approx(mean, abs=1e-12)
        assert group["metrics"][name]["std"] == pytest.approx(std, abs=1e-12)
        assert group["metrics"][name]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert overall["metrics"][name] == group["metrics"][name]  # one set: all sets is that set
    assert len({m["ua"] for m in seeds}) == 3  # three different runs
    md = open(tmp_path / "table" / "table.md").read()
    ua = group["metrics"]["ua"]
    assert f"| iemocap-fold1 | 3 | {ua['mean']:.4f} ± {ua['std']:.4f} |" in md
    assert "| **all sets** | 3 |" in md
    # the stage-3 report itself shows them in its headline
    report = open(tmp_path / "sweep" / "seed0" / "report.md").read()
    assert f"| ua | {seeds[0]['ua']:.4f} |" in report and f"| wa | {seeds[0]['wa']:.4f} |" in report


def test_sets_labels_and_overall(tmp_path):
    """Two encoders (labels) x two folds (sets) x seeds; a multi-set report counts once per set; old reports
    without ua/wa get them from their confusion matrix."""
    a = [_report(tmp_path / "hubert" / f"f1-s{k}", k, "/sets/fold1") for k in range(2)]
    a += [_report(tmp_path / "hubert" / f"f2-s{k}", 10 + k, "s3://bucket/sets/fold2/", drop=("ua", "wa"))
          for k in range(3)]
    multi = _report(tmp_path / "wavlm" / "multi", 20, "/sets/fold1+fold2", sets=("fold1", "fold2"))
    res = table.table([f"hubert={tmp_path / 'hubert'}", f"wavlm={tmp_path / 'wavlm'}"])
    t = res["table"]
    assert [(g["label"], g["set"], g["n"]) for g in t["groups"]] == [
        ("hubert", "fold1", 2), ("hubert", "fold2", 3), ("wavlm", "fold1", 1), ("wavlm", "fold2", 1)]
    ua = [m["ua"] if "ua" in m else table.unweighted_accuracy(m["confusion_matrix"]) for m in a]
    assert t["groups"][1]["metrics"]["ua"]["mean"] == pytest.approx(np.mean(ua[2:]))
    assert t["groups"][1]["metrics"]["wa"]["mean"] == pytest.approx(np.mean([m["accuracy"] for m in a[2:]]))
    assert t["groups"][2]["metrics"]["ua"]["std"] is None  # one run: no spread
    assert t["groups"][3]["metrics"]["ua"]["mean"] == multi["sets"]["fold2"]["ua"]  # its set's, not the pooled
    hubert = t["overall"][0]
    assert hubert["n"] == 5 and hubert["sets"] == ["fold1", "fold2"]
    assert hubert["metrics"]["ua"]["mean"] == pytest.approx(np.mean(ua))  # every run once
    assert hubert["metrics"]["ua"]["std"] == pytest.approx(np.std(ua, ddof=1))
    assert "| label | set | runs |" in res["markdown"] and "| wavlm | fold2 | 1 |" in res["markdown"]


def test_refusals(tmp_path):
    _report(tmp_path / "test_split", 0, "/sets/a")
    _report(tmp_path / "val_split", 1, "/sets/a", split="val")
    with pytest.raises(table.LakeError, match="splits test, val"):
        table.table([str(tmp_path)])
    with pytest.raises(table.LakeError, match="without mean_R@1; pick the metrics"):
        table.table([str(tmp_path / "test_split")], names=("mean_R@1",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(table.LakeError, match="no metrics.json under"):
        table.table([str(tmp_path / "empty")])
    with pytest.raises(table.LakeError, match="no such report folder"):
        table.table([str(tmp_path / "nowhere")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    with pytest.raises(table.LakeError, match="not an evaluation report"):
        table.table([str(tmp_path / "broken")])
