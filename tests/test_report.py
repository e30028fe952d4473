"""evaluation.report and evaluation.plots: the files exist, parse, and say what was measured."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from evaluation.plots import plot_confusion
from evaluation.report import to_jsonable, write_report
from trainers.metrics import classification_metrics, retrieval_both_directions

MELD = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
CONTEXT = {"checkpoint": "runs/meld/meld_slm_A_best.pt", "fingerprint": "0123456789abcdef",
           "data_root": "/data/lake/meld-v1", "split": "test", "num_rows": 400}


def meld_metrics(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, 400)
    pred = np.where(rng.random(400) < 0.5, y, rng.integers(0, 7, 400))
    return classification_metrics(y, pred, 7, class_names=MELD)


def test_classification_report_files(tmp_path):
    metrics = meld_metrics()
    metrics["top3_accuracy"] = np.float32(0.8125)  # numpy scalars must come out as plain JSON numbers
    metrics["confusion_matrix_normalized"] = np.eye(7)
    paths = write_report(tmp_path / "out", "meld", metrics, CONTEXT,
                         sections=[("Figures", "![confusion](confusion.png)")])
    assert set(paths) == {"metrics", "report"}

    data = json.loads(Path(paths["metrics"]).read_text())
    assert data["stage"] == "meld"
    for k, v in CONTEXT.items():
        assert data["context"][k] == v
    assert "created_at" in data["context"]
    m = data["metrics"]
    for k in ("accuracy", "weighted_f1", "macro_f1", "weighted_precision", "weighted_recall"):
        assert m[k] == metrics[k]  # exact round trip of Python floats
    assert m["top3_accuracy"] == 0.8125 and type(m["top3_accuracy"]) is float
    assert m["per_class"] == metrics["per_class"]
    assert m["confusion_matrix"] == metrics["confusion_matrix"]
    assert m["confusion_matrix_normalized"] == np.eye(7).tolist()
    assert len(m["largest_confusions"]) == 10  # derived from the matrix, as the report shows them
    assert m["largest_confusions"][0]["count"] >= m["largest_confusions"][-1]["count"]
    assert set(m["largest_confusions"][0]) == {"true", "predicted", "count", "share_of_true"}

    md = Path(paths["report"]).read_text(encoding="utf-8")
    assert md.startswith("# Evaluation report: meld")
    for needle in (CONTEXT["checkpoint"], CONTEXT["fingerprint"], CONTEXT["data_root"], "| Split | test |",
                   f"| weighted_f1 | {metrics['weighted_f1']:.4f} |", "## Per class", "## Largest confusions",
                   "## Confusion matrix", "## Figures", "![confusion](confusion.png)", *MELD):
        assert needle in md, needle
    # the headline table leads with MELD's headline number
    headline = md.split("## Headline")[1]
    assert headline.index("weighted_f1") < headline.index("| accuracy |")


def test_retrieval_report_has_a_row_per_direction(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 8))
    metrics = retrieval_both_directions(a, a + 0.5 * rng.standard_normal((50, 8)), block=16)
    paths = write_report(tmp_path, "clap", metrics, {**CONTEXT, "checkpoint": "runs/clap/clap_projectors.pt"})
    md = Path(paths["report"]).read_text(encoding="utf-8")
    assert "| audio_to_text |" in md and "| text_to_audio |" in md and "| R@1 |" in md
    assert "Largest confusions" not in md and "Per class" not in md
    assert json.loads(Path(paths["metrics"]).read_text())["metrics"] == metrics


def test_given_confusions_tuples_become_records(tmp_path):
    metrics = {"accuracy": 0.5, "largest_confusions": [("joy", "neutral", 7, 0.25)]}
    paths = write_report(tmp_path, "meld", metrics, CONTEXT)
    assert json.loads(Path(paths["metrics"]).read_text())["metrics"]["largest_confusions"] == [
        {"true": "joy", "predicted": "neutral", "count": 7, "share_of_true": 0.25}]
    assert "| joy | neutral | 7 | 25.0% |" in Path(paths["report"]).read_text(encoding="utf-8")


def test_missing_context_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="fingerprint"):
        write_report(tmp_path / "out", "meld", meld_metrics(), {"checkpoint": "x.pt", "split": "test"})
    assert not (tmp_path / "out").exists()


def test_to_jsonable():
    out = to_jsonable({"a": np.int64(3), "b": np.array([1.5, np.nan]), "c": (np.float16(0.5),), 4: float("inf")})
    assert out == {"a": 3, "b": [1.5, None], "c": [0.5], "4": None}
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    with pytest.raises(TypeError, match=r"metrics\.x"):
        to_jsonable({"x": object()})


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("num_classes", [7, 40])
def test_plot_confusion_png(tmp_path, num_classes):
    rng = np.random.default_rng(num_classes)
    names = MELD if num_classes == 7 else [f"Emotion number {i} / long name" for i in range(num_classes)]
    cm = rng.integers(0, 20, (num_classes, num_classes)) + 30 * np.eye(num_classes, dtype=int)
    cm[1] = 0  # a class with no rows: its row stays empty, no division by zero
    path = plot_confusion(cm, names, tmp_path / "figs" / "confusion.png", title=f"{num_classes} classes")
    assert path == str(tmp_path / "figs" / "confusion.png")
    w, h = png_size(path)
    lo, hi = (400, 1500) if num_classes == 7 else (1200, 3500)
    assert lo <= w <= hi and lo <= h <= hi, (w, h)
    assert (tmp_path / "figs" / "confusion.png").stat().st_size > 10_000


def test_plot_confusion_rejects_mismatched_names(tmp_path):
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(np.eye(3), ["a", "b"], tmp_path / "x.png", title="x")
