"""`python -m trainers.sweep`: a stage once per seed and set with the same flags, each best checkpoint
evaluated on its test split, and one table of them all (the field reports a mean and spread, not one run).

    python -m trainers.sweep --stage slm --seeds 0 1 2 --data-root sets/fold1 sets/fold2 --out sweeps/slm -- \\
        --clap-ckpt clap_projectors.pt --preset small

    DIR/<set>/seed<k>/         one run: its checkpoints, TensorBoard logs and summary (its --save-dir),
                               train.log, evaluate.log, report/ (`python -m evaluation stage3|stage4|stage2`
                               on the best checkpoint, test split), FAILED when it failed
    DIR/table.json, table.md   `python -m evaluation table` over the finished runs

<set> is the last part of the set's root (sets/fold1 -> fold1). The flags after `--` are the stage's own
(`python -m trainers.<stage> --help`), checked before any run starts; per run the sweep sets --seed,
--save-dir and --data-root (one of the sweep's --data-root sets; without them, the flags' own one set)
and adds --no-test-at-end (the report is the test pass).

Every training and every evaluation is a process of its own: a crash, an out-of-memory kill or a CUDA
fault ends that run only, each run starts with fresh memory and devices, and the trainers need not import
evaluation (which sits above them).

Resumable: a run whose report/metrics.json exists is finished and skipped (the report is written to
report.partial/ and renamed when its process has ended well, so it appears whole or not at all); one
stopped mid-training continues from its last checkpoint (--resume); one trained but not evaluated is
only evaluated. A failed
run (non-zero exit) leaves FAILED (step, exit status, command, the end of its log) and the sweep goes on;
at the end it exits non-zero naming the failed runs, and re-running the same command retries them. A stop
signal (SIGTERM, SIGUSR1) is passed to the running process, which saves; the sweep then stops (exit 75).

CLAP's report is stage 2, retrieval (without zero-shot, which needs the set's text encoder): its table shows
mean R@1 and R@1 each way instead of UA, WA and the F1s.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from lake.cli import run_cli
from lake.cliargs import HelpFormatter, at_least, bounded
from lake.errors import PREEMPTED_EXIT, LakeError, Preempted
from lake.signals import preemption_signals
from lake.storage import is_url
from trainers.config import TrainConfig
from trainers.metrics import FIELD_METRICS
from trainers.models import STAGES

REPORT, PARTIAL, FAILED = "report", "report.partial", "FAILED"
SET_BY_SWEEP = ("--seed", "--save-dir", "--resume")


@dataclass(frozen=True)
class Evaluation:
    """How a stage's best checkpoint is evaluated: `python -m evaluation COMMAND CKPT_FLAG best.pt ...flags`."""

    command: str
    ckpt_flag: str
    flags: tuple[str, ...]
    metrics: tuple[str, ...]  # what the table shows


NO_BASELINES = ("--no-probe", "--ablate", "none")  # the probe is one per set, not per seed; ablations cost 2 passes
EVALUATIONS = {"clap": Evaluation("stage2", "--clap-ckpt", ("--no-zero-shot",),
                                  ("mean_R@1", "audio_to_text.R@1", "text_to_audio.R@1")),
               "slm": Evaluation("stage3", "--stage3-ckpt", NO_BASELINES, FIELD_METRICS),
               "meld": Evaluation("stage4", "--meld-ckpt", NO_BASELINES, FIELD_METRICS)}


def set_name(root: str) -> str:
    """The name a set goes by in a sweep's folders and a table's rows: the last part of its root."""
    return os.path.basename((root if is_url(root) else os.path.abspath(root)).rstrip("/")) or root


@dataclass
class Sweep:
    stage: str
    seeds: list[int]
    roots: list[str]
    out: str
    flags: list[str]  # the stage's flags; each run adds its --data-root, --seed and --save-dir
    cfg: TrainConfig  # the flags parsed: the evaluation reads the same sets the same way

    def run_dir(self, root: str, seed: int) -> str:
        return os.path.join(self.out, set_name(root), f"seed{seed}")


def plan(stage: str, seeds: list[int], roots: list[str], out: str, flags: list[str]) -> Sweep:
    """The sweep, with the stage's flags checked now rather than in the first run."""
    given = [f for f in flags if f.split("=", 1)[0] in SET_BY_SWEEP]
    if given:
        raise LakeError(f"{', '.join(given)} after --: the sweep sets --seed, --save-dir and --resume per run (give "
                        "the seeds with --seeds; each run's folder is under --out)")
    cfg = STAGES[stage].parse(without_data_root(flags) + ["--data-root", roots[0]] if roots else flags)
    flags = without_data_root(flags)  # each run names its one set
    if not roots:
        if len(cfg.data_root) != 1:
            raise LakeError(f"--data-root after -- names {len(cfg.data_root)} sets: give them to the sweep's own "
                            "--data-root (one run each), or train them together outside a sweep")
        roots = list(cfg.data_root)
    names = [set_name(r) for r in roots]
    if len(set(names)) < len(names):
        raise LakeError(f"--data-root: sets {', '.join(roots)} would share run folders ({', '.join(names)}); give "
                        "each set a root of its own last name")
    if len(set(seeds)) < len(seeds):
        raise LakeError(f"--seeds {' '.join(map(str, seeds))}: a seed given twice")
    return Sweep(stage, seeds, roots, os.path.abspath(out), flags, cfg)


def without_data_root(flags: list[str]) -> list[str]:
    """The flags less --data-root and its values (the sweep gives each run its set)."""
    out, values = [], False
    for f in flags:
        values = f == "--data-root" or (values and not f.startswith("-"))
        if not values and not f.startswith("--data-root="):
            out.append(f)
    return out


def _tail(path: str, lines: int = 20) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 8192))
        return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])


def _child(cmd: list[str], log_path: str, stop) -> int:
    """Run `cmd` with its output appended to `log_path`; its exit status. A stop signal the sweep received is passed
    on (the trainer saves and exits 75); on Ctrl-C the child is stopped before the sweep ends."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        forwarded = False
        try:
            while True:
                try:
                    return proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    if stop and not forwarded:
                        proc.send_signal(stop.signal)
                        forwarded = True
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise


class RunFailed(Exception):
    """A run's step ended badly; recorded in its FAILED file."""


def _step(what: str, cmd: list[str], run_dir: str, stop) -> None:
    log = os.path.join(run_dir, f"{what}.log")
    code = _child(cmd, log, stop)
    if code != 0 and (stop or code in (PREEMPTED_EXIT, 130)):
        raise Preempted(f"{stop.name or 'a stop signal'} received during {run_dir}'s {what} step (exit {code}); "
                        "re-run the same command to continue (finished runs are skipped, this one resumes)")
    if code != 0:
        record = {"step": what, "exit_code": code, "command": shlex.join(cmd), "log": log, "tail": _tail(log)}
        with open(os.path.join(run_dir, FAILED), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        last = (record["tail"].strip().splitlines() or [""])[-1]
        raise RunFailed(f"{what} step failed (exit {code}): {last}")


def _found(run_dir: str, pattern: str) -> str | None:
    paths = sorted(glob.glob(os.path.join(glob.escape(run_dir), pattern)))
    return paths[0] if paths else None


def train_command(sweep: Sweep, root: str, seed: int, run_dir: str) -> list[str]:
    last = _found(run_dir, "*_last.pt")  # stopped mid-training: continue it
    return [sys.executable, "-m", f"trainers.{sweep.stage}", *sweep.flags, "--data-root", root, "--save-dir",
            run_dir, "--seed", str(seed), "--no-test-at-end"] + (["--resume", last] if last else [])


def evaluate_command(sweep: Sweep, root: str, best: str, out: str) -> list[str]:
    ev, cfg = EVALUATIONS[sweep.stage], sweep.cfg
    return [sys.executable, "-m", "evaluation", ev.command, ev.ckpt_flag, best, "--data-root", root, "--split", "test",
            "--out", out, "--batch-size", str(cfg.eval_batch_size), "--device", cfg.device,
            "--cache-dir", cfg.cache_dir, "--cache-limit", str(cfg.cache_limit), "--storage-options",
            cfg.storage_options, *ev.flags]


def report_path(run_dir: str) -> str:
    return os.path.join(run_dir, REPORT, "metrics.json")


def run_one(sweep: Sweep, root: str, seed: int, say, stop) -> None:
    """Train (or continue) one run and evaluate its best checkpoint; raises RunFailed, recorded in FAILED."""
    run_dir = sweep.run_dir(root, seed)
    os.makedirs(run_dir, exist_ok=True)
    if _found(run_dir, "*_summary.json") is None:
        say(f"training (log: {os.path.join(run_dir, 'train.log')})")
        _step("train", train_command(sweep, root, seed, run_dir), run_dir, stop)
    summary_path = _found(run_dir, "*_summary.json")
    if summary_path is None:
        raise RunFailed(f"training ended without writing its summary (--max-steps in the flags?); see "
                        f"{os.path.join(run_dir, 'train.log')}")
    with open(summary_path, encoding="utf-8") as f:
        best = os.path.join(run_dir, os.path.basename(json.load(f)["best_checkpoint"]))
    say(f"evaluating {os.path.basename(best)} on test (log: {os.path.join(run_dir, 'evaluate.log')})")
    partial = os.path.join(run_dir, PARTIAL)  # the report appears whole or not at all: a run stopped mid-way is
    shutil.rmtree(partial, ignore_errors=True)  # never taken for finished
    _step("evaluate", evaluate_command(sweep, root, best, partial), run_dir, stop)
    shutil.rmtree(os.path.join(run_dir, REPORT), ignore_errors=True)  # a report without metrics.json: not finished
    os.replace(partial, os.path.join(run_dir, REPORT))
    if os.path.exists(os.path.join(run_dir, FAILED)):
        os.remove(os.path.join(run_dir, FAILED))  # an earlier attempt's
    with open(report_path(run_dir), encoding="utf-8") as f:
        metrics = json.load(f)["metrics"]
    say("test: " + "  ".join(f"{n} {metrics[n]:.4f}" for n in EVALUATIONS[sweep.stage].metrics if n in metrics))


def write_table(sweep: Sweep, reports: list[str]) -> None:
    """`python -m evaluation table` over the finished runs' reports, written to DIR/table.json and DIR/table.md."""
    cmd = [sys.executable, "-m", "evaluation", "table", *reports, "--out", sweep.out, "--metrics",
           *EVALUATIONS[sweep.stage].metrics]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LakeError(f"the table of {len(reports)} run(s) failed (exit {proc.returncode}): "
                        f"{(proc.stderr.strip().splitlines() or [''])[-1]}; command: {shlex.join(cmd)}")
    print(proc.stdout, end="", flush=True)


def run_sweep(sweep: Sweep) -> dict:
    """Every (set, seed) run not finished yet, then the table. Returns {"finished": [...], "failed": [...]}."""
    runs = [(root, seed) for root in sweep.roots for seed in sweep.seeds]
    print(f"sweep: {sweep.stage}, {len(sweep.roots)} set(s) x {len(sweep.seeds)} seed(s) = {len(runs)} run(s) under "
          f"{sweep.out}", flush=True)
    finished, failed = [], []
    with preemption_signals() as stop:
        for i, (root, seed) in enumerate(runs, 1):
            name = f"{set_name(root)} seed{seed}"

            def say(text: str, name=name, i=i) -> None:
                print(f"[{i}/{len(runs)}] {name}: {text}", flush=True)

            if stop:
                raise Preempted(f"{stop.name} received: {len(finished)} run(s) finished; re-run the same command to "
                                "continue (finished runs are skipped)")
            if os.path.exists(report_path(sweep.run_dir(root, seed))):
                say("finished earlier, skipped")
            else:
                t0 = time.time()
                try:
                    run_one(sweep, root, seed, say, stop)
                except RunFailed as e:
                    failed.append(f"{name} ({e})")
                    say(f"FAILED: {e}; see {os.path.join(sweep.run_dir(root, seed), FAILED)}")
                    continue
                say(f"done in {time.time() - t0:.0f} s")
            finished.append(os.path.join(sweep.run_dir(root, seed), REPORT))
    if finished:
        write_table(sweep, finished)
    return {"finished": finished, "failed": failed}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter,
                                usage="python -m trainers.sweep --stage STAGE --seeds K [K ...] [--data-root SET "
                                      "[SET ...]] --out DIR -- STAGE FLAGS...")
    p.add_argument("--stage", required=True, choices=sorted(EVALUATIONS), help="the stage to train (its flags "
                   "after --; meld's include --stage3-ckpt)")
    p.add_argument("--seeds", required=True, type=bounded(int, at_least(0)), nargs="+", metavar="K", help="one run per seed (and set)")
    p.add_argument("--data-root", nargs="+", default=[], metavar="SET", help="one run per set (and seed), each on "
                   "that set alone, e.g. EmoBox's folds; default: the one set of the flags' --data-root")
    p.add_argument("--out", required=True, help="the sweep's folder: DIR/<set>/seed<k>/ per run, DIR/table.json "
                   "and DIR/table.md")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)

    def work() -> int:
        result = run_sweep(plan(args.stage, args.seeds, args.data_root, args.out, flags))
        if result["failed"]:
            raise LakeError(f"{len(result['failed'])} run(s) failed: {'; '.join(result['failed'])}; each has a "
                            "FAILED file and its log in its folder; re-run the same command to retry them (finished "
                            "runs are skipped)")
        return 0

    return run_cli(work, kept="finished runs are kept and skipped when the same command is re-run")


if __name__ == "__main__":
    sys.exit(main())
