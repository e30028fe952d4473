"""The trainers: exact resume after an interruption, the gathered contrastive loss, clear errors."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from trainers import clap, meld, models, slm
from trainers.checkpoint import load_checkpoint

from conftest import signal_set, torchrun


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A set, CLAP trained on it, and its exported projectors."""
    tmp = tmp_path_factory.mktemp("trained")
    root = signal_set(tmp / "set")
    save = str(tmp / "clap")
    assert clap.main(["--data-root", root, "--save-dir", save, "--epochs", "3", "--batch-size", "32",
                      "--num-workers", "0", "--warmup-steps", "5", "--lr", "3e-3", "--no-progress"]) == 0
    proj = str(tmp / "clap_projectors.pt")
    assert clap.main(["export", "--checkpoint", os.path.join(save, "clap_best.pt"), "--out", proj]) == 0
    return root, proj, tmp


def _slm_args(root, proj, save, *extra):
    return ["--data-root", root, "--clap-ckpt", proj, "--save-dir", save, "--epochs", "3", "--batch-size", "32",
            "--num-workers", "2", "--lr", "1e-3", "--no-progress", "--no-test-at-end", *extra]


def test_slm_interrupted_mid_epoch_then_resumed_equals_uninterrupted(trained):
    root, proj, tmp = trained
    full, broken = str(tmp / "full"), str(tmp / "broken")
    assert slm.main(_slm_args(root, proj, full)) == 0
    # 7 steps per epoch: save at step 10 (mid-epoch 2), die at step 12 without saving, resume from step 10
    assert slm.main(_slm_args(root, proj, broken, "--save-every-steps", "5", "--max-steps", "12")) == 0
    last = load_checkpoint(os.path.join(broken, "slm_stage3_last.pt"))
    assert last["train"]["step"] == 10 and 0 < last["loader"]["consumed"] < 7
    assert slm.main(_slm_args(root, proj, broken, "--resume")) == 0
    a = load_checkpoint(os.path.join(full, "slm_stage3_last.pt"))
    b = load_checkpoint(os.path.join(broken, "slm_stage3_last.pt"))
    assert a["train"]["step"] == b["train"]["step"] == 21
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["train"]["best"] == b["train"]["best"]


def test_slm_learns_and_files_are_named_as_the_reference(trained, capsys, monkeypatch):
    import re

    root, proj, tmp = trained
    save = str(tmp / "slm")
    summary_args = ["--data-root", root, "--clap-ckpt", proj, "--save-dir", save, "--epochs", "4",
                    "--batch-size", "32", "--num-workers", "0", "--lr", "2e-3", "--progress", "--log-every", "5"]
    monkeypatch.setenv("EMOLAKE_PROGRESS_EVERY", "0")  # redirected output: a plain progress line per update
    capsys.readouterr()
    assert slm.main(summary_args) == 0
    out, err = capsys.readouterr()
    names = sorted(os.listdir(save))
    assert {"slm_stage3_best.pt", "slm_stage3_last.pt", "slm_stage3_epoch003.pt"} <= set(names)
    assert "slm_stage3_epoch000.pt" not in names  # --keep-epochs 3
    # a log a person can read: no bar frames, progress as lines, losses every --log-every steps,
    # epochs numbered as the files are
    assert "\r" not in out + err
    assert re.search(r"^epoch 003: 7 of 7 steps \(100%\) in \d+ s, [\d.]+ steps/s$", err, re.M), err[-2000:]
    steps = [int(n) for n in re.findall(r"^step (\d+)  loss", out, re.M)]
    assert steps == sorted({5, 10, 15, 20, 25} | {7, 14, 21, 28})  # every --log-every steps, and each epoch's end
    assert re.findall(r"^epoch (\d{3})/003  train loss", out, re.M) == ["000", "001", "002", "003"]
    import json

    summary = json.load(open(os.path.join(save, "slm_stage3_summary.json")))
    assert summary["test"]["macro_f1"] > 0.6  # 4 classes: chance is 0.25
    assert summary["test"]["num_rows"] == 60  # every test row evaluated once


def test_meld_stage_on_the_frozen_slm(trained):
    root, proj, tmp = trained
    save = str(tmp / "slm_for_meld")
    assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", save, "--epochs", "2",
                     "--batch-size", "32", "--num-workers", "0", "--no-progress", "--no-test-at-end"]) == 0
    meld_root = signal_set(tmp / "meld_set", num_classes=4, seed=0, name="meldlike")  # same encoders, same space
    for mode in ("A", "B"):
        out = str(tmp / f"meld{mode}")
        assert meld.main(["--data-root", meld_root, "--stage3-ckpt", os.path.join(save, "slm_stage3_best.pt"),
                          "--clap-ckpt", proj, "--mode", mode, "--epochs", "2", "--batch-size", "32",
                          "--num-workers", "0", "--save-dir", out, "--no-progress"]) == 0
        ckpt = load_checkpoint(os.path.join(out, f"meld_slm_{mode}_best.pt"), "meld")
        frozen = {k: v for k, v in ckpt["model"].items() if k.startswith("slm.")}
        slm_sd = load_checkpoint(os.path.join(save, "slm_stage3_best.pt"))["model"]
        assert all(torch.equal(v, slm_sd[k[len("slm."):]]) for k, v in frozen.items())  # the SLM did not move
        assert os.path.exists(os.path.join(out, f"meld_slm_{mode}_epoch001.pt"))
    weights = meld.class_weights(np.array([0, 0, 0, 0, 1, 2, 2]), 4)
    assert torch.allclose(weights, torch.tensor([1.0, 2.0, 2.0**0.5, 0.0]))


def test_clear_errors(trained, tmp_path, capsys):
    root, proj, tmp = trained
    assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--num-emotions", "36",
                     "--save-dir", str(tmp_path)]) == 2
    assert "--num-emotions 36, but" in capsys.readouterr().err
    assert slm.main(["--data-root", root, "--clap-ckpt", str(tmp_path / "nope.pt"), "--save-dir", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    other = signal_set(tmp_path / "other", caption=False, name="other")
    assert clap.main(["--data-root", other, "--text-field", "caption", "--save-dir", str(tmp_path)]) == 2
    assert "no caption embeddings" in capsys.readouterr().err
    assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", str(tmp_path / "x"), "--resume"]) == 2
    assert "no slm_stage3_last.pt" in capsys.readouterr().err


def test_reference_projector_layout_loads(tmp_path):
    ref = {"audio_proj": {"fc.weight": torch.randn(8, 16), "fc.bias": torch.zeros(8)},
           "text_proj": {"fc.weight": torch.randn(8, 12), "fc.bias": torch.zeros(8)}}
    torch.save(ref, tmp_path / "clap_projectors.pt")
    task, _ = models.load(str(tmp_path / "clap_projectors.pt"), stage="clap")
    assert task.arch()["dims"] == {"audio": 16, "text": 12, "proj": 8} and task.arch()["audio_layer"] is None


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _gather_rank(rank, world, a_full, t_full, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = clap.Clap(16, 12, 8, dropout=0.0)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    b = a_full.shape[0] // world
    a, t, scale = ddp(a_full[rank * b:(rank + 1) * b], t_full[rank * b:(rank + 1) * b])
    clap.contrastive_loss(a, t, scale).backward()
    torch.save({n: p.grad for n, p in model.named_parameters()}, os.path.join(out_dir, f"g{rank}.pt"))
    del ddp, a, t, scale  # DDP's reducer and the gathered graph go before the group they use
    dist.destroy_process_group()


def test_contrastive_gradients_across_two_ranks_equal_one_process(tmp_path):
    """With the differentiable gather, 2 ranks x 8 rows give the gradients of 1 process x 16 rows."""
    g = torch.Generator().manual_seed(1)
    a_full, t_full = torch.randn(16, 16, generator=g), torch.randn(16, 12, generator=g)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=_free_port())
    torch.multiprocessing.spawn(_gather_rank, args=(2, a_full, t_full, str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    single = clap.Clap(16, 12, 8, dropout=0.0)
    a, t, scale = single(a_full, t_full)
    clap.contrastive_loss(a, t, scale).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"g{rank}.pt")
        for n, p in single.named_parameters():
            assert torch.allclose(grads[n], p.grad, atol=1e-5), n


def test_pruning_keeps_other_runs_files(tmp_path):
    from trainers.checkpoint import Checkpointer

    for old in (47, 48, 49):  # an earlier, longer run in the same directory
        (tmp_path / f"slm_stage3_epoch{old:03d}.pt").write_bytes(b"old")
    class Epoch:
        value = 0

        def state_dict(self):
            return {"epoch": self.value}

    part = Epoch()
    meta = dict(stage="slm", arch={}, config={}, data={}, model={})
    ck = Checkpointer(str(tmp_path), "slm_stage3", {"train": part}, lambda: meta, keep_epochs=2)
    for epoch in range(4):
        part.value = epoch
        ck.save_epoch(epoch, is_best=epoch == 1)
    names = sorted(os.listdir(tmp_path))
    assert names == ["slm_stage3_best.pt", "slm_stage3_epoch002.pt", "slm_stage3_epoch003.pt",
                     "slm_stage3_epoch047.pt", "slm_stage3_epoch048.pt", "slm_stage3_epoch049.pt",
                     "slm_stage3_last.pt"]
    assert torch.load(tmp_path / "slm_stage3_best.pt")["train"]["epoch"] == 1


# -- one evaluation path: what training prints at its end is what `python -m evaluation` writes --------

def _numbers(metrics: dict) -> dict:
    """The scalar metrics (and per-class rows), for comparing two evaluations of one checkpoint."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, list, dict)) and k != "largest_confusions"
            and not k.startswith("confusion_matrix_normalized")}


def test_evaluation_writes_the_numbers_training_printed_at_its_end(trained, tmp_path):
    import json

    from evaluation import cli as evaluation

    root, proj, tmp = trained
    save = str(tmp_path / "slm")
    assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", save, "--epochs", "2",
                     "--batch-size", "32", "--eval-batch-size", "64", "--no-progress", "--device", "cpu"]) == 0
    printed = json.load(open(os.path.join(save, "slm_stage3_summary.json")))["test"]
    assert evaluation.main(["stage3", "--stage3-ckpt", os.path.join(save, "slm_stage3_best.pt"), "--data-root", root,
                            "--out", str(tmp_path / "r3"), "--batch-size", "64", "--device", "cpu"]) == 0
    written = json.load(open(tmp_path / "r3" / "metrics.json"))["metrics"]
    assert {k: written[k] for k in _numbers(printed)} == _numbers(printed)

    meld_save = str(tmp_path / "meld")
    assert meld.main(["--data-root", root, "--stage3-ckpt", os.path.join(save, "slm_stage3_best.pt"), "--epochs", "2",
                      "--batch-size", "32", "--eval-batch-size", "64", "--num-workers", "0", "--save-dir", meld_save,
                      "--no-progress", "--device", "cpu"]) == 0
    printed = json.load(open(os.path.join(meld_save, "meld_slm_A_summary.json")))["test"]
    assert evaluation.main(["stage4", "--meld-ckpt", os.path.join(meld_save, "meld_slm_A_best.pt"), "--data-root",
                            root, "--out", str(tmp_path / "r4"), "--batch-size", "64", "--device", "cpu"]) == 0
    written = json.load(open(tmp_path / "r4" / "metrics.json"))["metrics"]
    assert {k: written[k] for k in _numbers(printed)} == _numbers(printed)  # the weighted loss too

    clap_save = os.path.join(tmp, "clap")
    printed = json.load(open(os.path.join(clap_save, "clap_summary.json")))["test"]
    assert evaluation.main(["stage2", "--clap-ckpt", os.path.join(clap_save, "clap_best.pt"), "--data-root", root,
                            "--out", str(tmp_path / "r2"), "--batch-size", "1024", "--device", "cpu",
                            "--no-zero-shot"]) == 0
    written = json.load(open(tmp_path / "r2" / "metrics.json"))["metrics"]
    assert {k: written[k] for k in printed} == json.loads(json.dumps(printed))


# -- the default recipe and the reference's ---------------------------------------------------------------

def test_slm_preset_reference_is_the_reference_run_and_the_defaults_are_the_small_set_recipe():
    """The reference's train_slm.py settings (its argparse config: batch 512, lr 1e-4, wd 0.01, 150 epochs, hidden
    1024, dropout 0.1; no clipping, no schedule, plain cross-entropy) come back whole with --preset reference,
    whatever the defaults; flags given explicitly still win over the preset."""
    need = ["--data-root", "x", "--clap-ckpt", "p.pt"]
    reference = dict(epochs=150, batch_size=512, lr=1e-4, weight_decay=0.01, grad_clip=0.0, warmup_steps=0,
                     schedule="constant", hidden_dim=1024, dropout=0.1, label_smoothing=0.0)
    ref = slm.SlmTask.parse([*need, "--preset", "reference"])
    assert {k: getattr(ref, k) for k in reference} == reference
    default = slm.SlmTask.parse(need)
    assert {k: getattr(default, k) for k in reference} == dict(reference, epochs=40, batch_size=64, lr=1e-3,
                                                               hidden_dim=256, label_smoothing=0.1)
    # every setting the defaults move away from the reference's is one the preset restores
    changed = {k for k in reference if getattr(default, k) != reference[k]}
    assert changed and changed <= set(slm.PRESETS["reference"])
    again = slm.SlmTask.parse([*need, "--preset", "reference", "--epochs", "50", "--label-smoothing", "0.2"])
    assert (again.epochs, again.label_smoothing, again.batch_size, again.hidden_dim) == (50, 0.2, 512, 1024)
    small = slm.SlmTask.parse([*need, "--preset", "small"])  # the demo's, as measured (BENCHMARKS.md)
    assert (small.batch_size, small.schedule, small.hidden_dim, small.label_smoothing) == (128, "cosine", 1024, 0.0)


def test_slm_label_smoothing_is_the_loss_trained_and_reported(trained, tmp_path):
    root, proj, _ = trained
    save = str(tmp_path / "ls")
    assert slm.main(_slm_args(root, proj, save, "--epochs", "1", "--label-smoothing", "0.2", "--num-workers",
                              "0")) == 0
    task, model = models.load(os.path.join(save, "slm_stage3_best.pt"), stage="slm")
    assert task.cfg.label_smoothing == 0.2
    arch, g = task.checkpoint["arch"], torch.Generator().manual_seed(0)
    batch = {"audio": torch.randn(16, len(arch["layers"]), arch["audio_dim"], generator=g),
             "text": torch.randn(16, arch["text_dim"], generator=g), "label": torch.arange(16) % arch["num_classes"]}
    with torch.no_grad():
        logits = model(batch["audio"], batch["text"])
        smooth = torch.nn.functional.cross_entropy(logits, batch["label"], label_smoothing=0.2)
        assert torch.allclose(task.loss(model, batch)[0], smooth)  # trained on
        assert not torch.allclose(smooth, torch.nn.functional.cross_entropy(logits, batch["label"]))
    reported = task.metrics({"logits": logits.numpy(), "label": batch["label"].numpy()})["loss"]
    assert reported == pytest.approx(float(smooth), rel=1e-5)  # and the validation loss is the same function


# -- the numbers of the loop, pinned ------------------------------------------------------------------

LOSSES = os.path.join(os.path.dirname(__file__), "assets", "losses", "slm_debug.txt")


def test_debug_preset_loss_curve_is_pinned(trained, tmp_path, capsys):
    """A silent change of the loop's numerics (init, order, optimizer, loss) moves these numbers.
    Regenerate deliberately with EMOLAKE_PIN_LOSSES=1 after a change that is meant to move them."""
    import re

    root, proj, _ = trained
    capsys.readouterr()
    assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", str(tmp_path), "--preset", "debug",
                     "--log-every", "1", "--device", "cpu", "--no-progress", "--no-test-at-end"]) == 0
    got = [(int(s), float(v)) for s, v in re.findall(r"^step (\d+)  loss ([\d.]+)", capsys.readouterr().out, re.M)]
    assert len(got) == 6  # 2 epochs x 3 steps of 64 rows
    if os.environ.get("EMOLAKE_PIN_LOSSES"):
        os.makedirs(os.path.dirname(LOSSES), exist_ok=True)
        with open(LOSSES, "w") as f:
            f.write("# step loss: trainers.slm --preset debug --log-every 1 on tests/test_trainers.py:signal_set\n")
            f.writelines(f"{s} {v:.4f}\n" for s, v in got)
    pinned = [(int(s), float(v)) for s, v in (line.split() for line in open(LOSSES) if not line.startswith("#"))]
    assert [s for s, _ in got] == [s for s, _ in pinned]
    assert np.allclose([v for _, v in got], [v for _, v in pinned], rtol=0, atol=2e-4), (got, pinned)


# -- real processes: two torchrun ranks killed and resumed; a preemption signal ----------------------

def test_two_ranks_killed_mid_epoch_then_resumed_equal_an_uninterrupted_two_rank_run(trained, tmp_path):
    root, proj, _ = trained
    common = ["--data-root", root, "--clap-ckpt", proj, "--epochs", "2", "--batch-size", "32", "--num-workers", "0",
              "--lr", "1e-3", "--device", "cpu", "--no-progress", "--no-test-at-end"]
    full, broken = tmp_path / "full", tmp_path / "broken"
    proc = torchrun("trainers.slm", *common, "--save-dir", full)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 7 steps per epoch on each rank: saved at step 4 (mid-epoch 0), stopped at step 5 without saving
    proc = torchrun("trainers.slm", *common, "--save-dir", broken, "--save-every-steps", "4", "--max-steps", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = load_checkpoint(str(broken / "slm_stage3_last.pt"))
    assert last["train"]["step"] == 4 and last["loader"]["world"] == 2 and len(last["rng"]) == 2
    proc = torchrun("trainers.slm", *common, "--save-dir", broken, "--resume")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumed" in proc.stdout
    a, b = load_checkpoint(str(full / "slm_stage3_last.pt")), load_checkpoint(str(broken / "slm_stage3_last.pt"))
    assert a["train"]["step"] == b["train"]["step"] == 14
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_sigterm_saves_mid_epoch_and_the_resumed_run_ends_where_an_uninterrupted_one_does(trained, tmp_path):
    """The trainer's stdout is a pipe the test stops reading: after ~64 KB of step lines (3,000 steps
    print ~110 KB) it blocks in a write, so the signal always arrives mid-run (no race), and the run can
    go on only once the test drains the pipe."""
    import signal
    import subprocess
    import sys

    from lake.errors import PREEMPTED_EXIT

    _, proj, _ = trained
    root = signal_set(tmp_path / "long", rows=(6000, 32, 32), name="sig")  # same dims as the CLAP set
    args = ["--data-root", root, "--clap-ckpt", proj, "--epochs", "1", "--batch-size", "2", "--hidden-dim", "32",
            "--num-workers", "0", "--lr", "1e-3", "--log-every", "1", "--device", "cpu", "--no-progress",
            "--no-test-at-end"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full, cut = tmp_path / "full", tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "trainers.slm", *args, "--save-dir", str(cut)], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 20 "):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT, err
    assert "stopped: SIGTERM received: saved" in err and "Traceback" not in err
    last = load_checkpoint(str(cut / "slm_stage3_last.pt"))
    assert 20 <= last["train"]["step"] < 3000 and last["loader"]["consumed"] == last["train"]["step"]
    assert slm.main([*args, "--save-dir", str(cut), "--resume"]) == 0
    assert slm.main([*args, "--save-dir", str(full)]) == 0
    a, b = load_checkpoint(str(full / "slm_stage3_last.pt")), load_checkpoint(str(cut / "slm_stage3_last.pt"))
    assert a["train"]["step"] == b["train"]["step"] == 3000
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_data_on_device_trains_to_the_same_weights_as_streaming(trained, tmp_path):
    """--data-on-device on holds the splits on the device (here the CPU): the same batches, the same run."""
    root, proj, _ = trained
    runs = {}
    for choice in ("off", "on"):
        save = str(tmp_path / choice)
        assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", save, "--epochs", "2", "--batch-size",
                         "32", "--lr", "1e-3", "--no-progress", "--device", "cpu", "--data-on-device", choice]) == 0
        runs[choice] = load_checkpoint(os.path.join(save, "slm_stage3_last.pt"))
    a, b = runs["off"], runs["on"]
    assert a["loader"] == b["loader"] and a["train"] == b["train"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_resumed_run_applies_the_flags_it_can_and_refuses_the_others_in_one_line(trained, tmp_path, capsys):
    root, proj, _ = trained
    save = str(tmp_path / "run")
    args = ["--data-root", root, "--clap-ckpt", proj, "--save-dir", save, "--batch-size", "32", "--num-workers", "0",
            "--lr", "1e-4", "--no-progress", "--no-test-at-end"]
    assert slm.main([*args, "--epochs", "1"]) == 0
    for flag, value, why in (("--hidden-dim", "64", "changes the model"), ("--seed", "5", "keeps its own"),
                             ("--batch-size", "64", "global batch")):
        capsys.readouterr()
        assert slm.main([*args, "--epochs", "2", "--resume", flag, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"cannot take {flag} {value}" in err and why in err, err
    capsys.readouterr()
    assert slm.main([*args, "--epochs", "2", "--resume", "--lr", "0.01", "--dropout", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "applied from here on: --epochs 1 -> 2, --lr 0.0001 -> 0.01, --dropout 0.1 -> 0.3" in out
    last = load_checkpoint(os.path.join(save, "slm_stage3_last.pt"))
    assert last["config"]["lr"] == 0.01 and last["config"]["dropout"] == 0.3
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == [0.01]  # what ran is what the config says


def test_a_checkpoint_save_on_a_full_disk_is_one_line_and_leaves_nothing_half_written(trained, tmp_path, capsys,
                                                                                        monkeypatch):
    from conftest import FullDisk

    root, proj, tmp = trained
    save = tmp_path / "full"
    save.mkdir()
    (save / "slm_stage3_last.pt.tmp-999999").write_bytes(b"a write killed mid-way")  # pid 999999: gone
    FullDisk(monkeypatch, save)
    capsys.readouterr()
    assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", str(save), "--epochs", "1",
                     "--batch-size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device holding" in err and "slm_stage3_epoch000.pt" in err
    assert "Traceback" not in err and not [n for n in os.listdir(save) if ".tmp-" in n]
    capsys.readouterr()
    assert clap.main(["export", "--checkpoint", os.path.join(tmp, "clap", "clap_best.pt"), "--out",
                      str(save / "clap_projectors.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device holding" in err and "clap_projectors.pt" in err


def test_a_file_that_is_no_checkpoint_is_called_so(trained, tmp_path, capsys):
    from evaluation.cli import main as evaluation

    root, _, _ = trained
    mp3 = tmp_path / "clip.mp3"
    mp3.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(200))
    assert evaluation(["stage3", "--stage3-ckpt", str(mp3), "--data-root", root, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{mp3}: not a checkpoint" in err and "Python objects" not in err and err.count("\n") == 1
