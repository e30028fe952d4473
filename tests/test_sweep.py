"""trainers.sweep: killed mid-way, the same command resumes with the finished runs skipped; a failed run is
recorded and the others done; the table it writes is that of the runs' reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lake.errors import LakeError
from trainers import clap, sweep

from test_trainers import signal_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(folder) -> dict[str, int]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, names in os.walk(folder)
            for f in names}


def _wait_for(path, proc, timeout=600.0) -> None:
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, f"the sweep ended (exit {proc.returncode}) before {path} appeared"
        assert time.time() - t0 < timeout, f"{path} did not appear in {timeout} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def projectors(tmp_path_factory):
    """A set and CLAP projectors trained on it (what an SLM sweep starts from)."""
    tmp = tmp_path_factory.mktemp("sweep")
    root = signal_set(tmp / "fold1", rows=(160, 48, 48))
    save = str(tmp / "clap")
    assert clap.main(["--data-root", root, "--save-dir", save, "--epochs", "2", "--batch-size", "32", "--lr", "3e-3",
                      "--no-progress", "--no-test-at-end"]) == 0
    proj = str(tmp / "clap_projectors.pt")
    assert clap.main(["export", "--checkpoint", os.path.join(save, "clap_best.pt"), "--out", proj]) == 0
    return root, proj, tmp


def test_sweep_killed_midway_resumes_skipping_finished_runs(projectors, capsys):
    root, proj, tmp = projectors
    out, missing = str(tmp / "out"), str(tmp / "fold2")  # fold2 does not exist: its runs fail
    argv = ["--stage", "slm", "--seeds", "0", "1", "--data-root", root, missing, "--out", out, "--",
            "--clap-ckpt", proj, "--preset", "debug", "--epochs", "3", "--batch-size", "16", "--lr", "3e-3",
            "--no-progress"]
    first, second = os.path.join(out, "fold1", "seed0"), os.path.join(out, "fold1", "seed1")
    with open(tmp / "first.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trainers.sweep", *argv], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:  # killed with the first run finished and the second one mid-training (its first epoch saved)
            _wait_for(os.path.join(first, "report", "metrics.json"), proc)
            _wait_for(os.path.join(second, "slm_stage3_last.pt"), proc)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the run it was in, as a job kill would
            proc.wait()
    trained = os.path.exists(os.path.join(second, "slm_stage3_summary.json"))  # its 3 epochs ended before the kill
    before = _files(first)
    assert any(p.endswith("slm_stage3_best.pt") for p in before) and not os.path.exists(os.path.join(out, "table.json"))

    capsys.readouterr()
    assert sweep.main(argv) == 2  # fold2's runs failed; the others are done
    said, err = capsys.readouterr()
    assert "[1/4] fold1 seed0: finished earlier, skipped" in said
    assert _files(first) == before  # not one file of the finished run touched
    assert os.path.exists(os.path.join(second, "report", "metrics.json"))
    log = open(os.path.join(second, "train.log")).read()
    assert trained or ("--resume " + os.path.join(second, "slm_stage3_last.pt") in log and "\nresumed " in log)
    assert not os.path.exists(os.path.join(second, "report.partial"))
    for seed in (0, 1):
        failed = json.load(open(os.path.join(out, "fold2", f"seed{seed}", "FAILED")))
        assert failed["step"] == "train" and failed["exit_code"] == 2 and "fold2" in failed["tail"]
    assert "2 run(s) failed: fold2 seed0 (train step failed (exit 2)" in err and "re-run the same command" in err

    # the table: the two finished runs' test numbers, mean and sample std
    t = json.load(open(os.path.join(out, "table.json")))
    reports = [json.load(open(os.path.join(out, "fold1", f"seed{k}", "report", "metrics.json")))["metrics"]
               for k in (0, 1)]
    (group,) = t["groups"]
    assert group["set"] == "fold1" and group["n"] == 2 and t["split"] == "test"
    for name in ("ua", "wa", "macro_f1", "weighted_f1"):
        values = [m[name] for m in reports]
        assert group["metrics"][name]["mean"] == pytest.approx(np.mean(values))
        assert group["metrics"][name]["std"] == pytest.approx(np.std(values, ddof=1))
    assert reports[0]["macro_f1"] > 0.5  # 4 classes: chance is 0.25; the runs learned
    assert os.path.exists(os.path.join(out, "table.md"))


def test_sweep_plan_and_commands(tmp_path):
    """What the sweep checks before any run, and the command lines of a run (nothing is read: no set needed)."""
    root, proj, tmp = str(tmp_path / "sets" / "fold1"), str(tmp_path / "clap_projectors.pt"), tmp_path
    with pytest.raises(LakeError, match="--seed after --: the sweep sets"):
        sweep.plan("slm", [0], [], str(tmp / "x"), ["--data-root", root, "--clap-ckpt", proj, "--seed", "3"])
    with pytest.raises(LakeError, match="names 2 sets"):
        sweep.plan("slm", [0], [], str(tmp / "x"), ["--data-root", root, root, "--clap-ckpt", proj])
    with pytest.raises(LakeError, match="would share run folders"):
        sweep.plan("slm", [0], [root, os.path.join(root, "..", "other", "fold1")], str(tmp / "x"),
                   ["--clap-ckpt", proj])
    s = sweep.plan("slm", [0, 1], [], str(tmp / "x"), ["--data-root", root, "--clap-ckpt", proj])
    assert s.roots == [root] and s.run_dir(root, 1) == os.path.join(str(tmp / "x"), "fold1", "seed1")
    run_dir = s.run_dir(root, 1)
    assert "--resume" not in sweep.train_command(s, root, 1, run_dir)
    os.makedirs(run_dir)
    open(os.path.join(run_dir, "slm_stage3_last.pt"), "wb").close()  # stopped mid-training: continued
    cmd = sweep.train_command(s, root, 1, run_dir)
    assert cmd[-2:] == ["--resume", os.path.join(run_dir, "slm_stage3_last.pt")]
    assert cmd[cmd.index("--seed") + 1] == "1" and cmd[cmd.index("--save-dir") + 1] == run_dir
    # the sweep's sets replace the flags' one
    s = sweep.plan("slm", [0], [root], str(tmp / "x"), ["--data-root", "elsewhere", "--clap-ckpt", proj, "--epochs=1"])
    assert s.flags == ["--clap-ckpt", proj, "--epochs=1"] and s.cfg.epochs == 1
    cmd = sweep.train_command(s, root, 0, s.run_dir(root, 0))
    assert cmd.count("--data-root") == 1 and cmd[cmd.index("--data-root") + 1] == root
