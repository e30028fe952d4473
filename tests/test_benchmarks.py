"""The benchmark commands start and finish; their timings are not checked (that is the benchmarks' job)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: benchmarks.gpu would measure")
def test_gpu_benchmark_without_cuda_says_so_and_exits_0():
    proc = run_module("benchmarks.gpu")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "no CUDA GPU" in lines[0] and "nothing measured" in lines[0]
    assert json.loads(lines[-1]) == {"benchmark": "gpu", "cuda": False}
    assert "Traceback" not in proc.stderr


def test_train_benchmark_help_and_a_bad_flag():
    proc = run_module("benchmarks.train", "--help")
    assert proc.returncode == 0 and "--stages" in proc.stdout and "--keep" in proc.stdout
    bad = run_module("benchmarks.train", "--stages", "clap,bert")
    assert bad.returncode == 2 and "--stages: choose from clap,slm,meld" in bad.stderr


def test_train_benchmark_runs_every_stage_on_both_paths(tmp_path):
    """A tiny run: each stage's Run is built (SLM from CLAP's exported projectors, MELD from the SLM's
    checkpoint) and stepped on the streaming and the on-device loader; the set is kept for a rerun."""
    from benchmarks.train import main

    out = main(["--rows", "2048", "--steps", "2", "--warmup", "1", "--device", "cpu", "--keep", str(tmp_path)])
    assert set(out["stages"]) == {"clap", "slm", "meld"}
    for stage, batch in (("clap", 1024), ("slm", 512), ("meld", 128)):
        paths = out["stages"][stage]
        assert paths["streaming"]["loader"] == "ShardLoader" and paths["device"]["loader"] == "DeviceLoader"
        for f in paths.values():
            assert f["batch_size"] == batch and f["steps"] == 2 and f["rows_per_s"] > 0
            assert 0 <= f["loader_wait_share"] < 1
    assert out["projection_hours_reference_slm"]["streaming"] > 0
    assert sorted(os.listdir(tmp_path)) == ["set", "set.json"]  # this run's checkpoints removed, the set kept
