"""lake.demo: its corpus is made once per settings (a re-run reuses it; other settings make it again)."""

from __future__ import annotations

import os

from lake.demo import DemoPaths, _corpus


def test_corpus_reused_only_with_the_same_settings(tmp_path, capsys):
    paths = DemoPaths(str(tmp_path / "demo"))
    truth = os.path.join(paths.corpus, "truth.jsonl")
    _corpus(paths, 27, 0, seed=0, workers=1, max_seconds=3.0, t0=0.0)
    first = os.stat(truth).st_mtime_ns
    _corpus(paths, 27, 0, seed=0, workers=1, max_seconds=3.0, t0=0.0)
    assert "reusing it" in capsys.readouterr().out and os.stat(truth).st_mtime_ns == first
    os.remove(truth)  # a corpus killed before its truth.jsonl: made again
    _corpus(paths, 27, 0, seed=0, workers=1, max_seconds=3.0, t0=0.0)
    assert os.path.isfile(truth) and "reusing" not in capsys.readouterr().out
    made = os.stat(truth).st_mtime_ns
    _corpus(paths, 27, 0, seed=0, workers=1, max_seconds=4.0, t0=0.0)  # other settings: made again
    assert "reusing" not in capsys.readouterr().out and os.stat(truth).st_mtime_ns != made
