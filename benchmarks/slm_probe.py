"""The SLM against the linear probe of its own inputs, on real speech, over several seeds.

    python -m benchmarks.slm_probe --work DIR [--corpus-seed 11] [--seeds 0,1,2,3,4]
    python -m benchmarks.slm_probe --data-root SET --clap-ckpt P [--seeds 0,1,2,3,4] [--variant NAME="FLAGS" ...]

The first form runs the whole comparison from nothing: a corpus of real synthesised speech
(benchmarks.speech_corpus, --corpus-seed, 720 clips), its ingest with `--audio-encoder fbank
--text-encoder minilm` (15 % validation, 20 % test), CLAP 30 epochs at --lr 2e-3
--batch-size 64 and its export, then the SLM runs and the probe. Each step is skipped when
an earlier run left its output in DIR. The second form takes a set and its projectors (the
demo's `DIR/sets/laion` and `DIR/checkpoints/clap_projectors.pt`, say).

Each variant is a string of trainers.slm flags (default: two, `issue` = `--preset reference
--epochs 40 --lr 1e-3 --batch-size 64`, the issue's command with the rest at the defaults it ran
with, the reference's, and `default` = no flags, the trainer's default recipe), trained once
per --seeds value (the model's init, data order and dropout: a single seed on ~150 test
clips is noisy) and scored on the test split by the trainer's own test pass (the best
validation macro-F1 checkpoint). The probe (evaluation.probe, standardised logistic
regression, C chosen on validation) is deterministic and fitted once. Printed: per variant,
test macro-F1 per seed, mean, sample standard deviation and the mean minus the best probe
(of audio alone or both inputs: text often hurts a linear fit here); CPU seconds per run
(time.process_time) and the load average. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

import numpy as np

from benchmarks.speech_corpus import generate
from evaluation.probe import linear_probe
from ingest.run import main as ingest_main
from lake.catalog import open_shard_set
from lake.cli import run_cli
from lake.cliargs import HelpFormatter, at_least, bounded
from lake.errors import LakeError
from trainers.clap import main as clap_main
from trainers.slm import main as slm_main

ISSUE = "--preset reference --epochs 40 --lr 1e-3 --batch-size 64"  # the issue ran the defaults of then
INGEST = ["--audio-encoder", "fbank", "--text-encoder", "minilm", "--languages", "en", "--val-fraction", "0.15",
          "--test-fraction", "0.2", "--decode-workers", "1", "--block-rows", "256", "--rows-per-shard", "1024"]
CLAP = ["--epochs", "30", "--lr", "2e-3", "--batch-size", "64"]
QUIET = ["--num-workers", "0", "--keep-epochs", "1", "--no-progress", "--eval-batch-size", "1024"]


def _must(code: int, what: str) -> None:
    if code:
        raise LakeError(f"{what} failed (exit {code})")


def prepare(work: str, corpus_seed: int, clips: int) -> tuple[str, str]:
    """Corpus -> set -> CLAP projectors under `work` (each step kept and reused); (set, projectors)."""
    corpus, set_root = os.path.join(work, "corpus"), os.path.join(work, "set")
    projectors = os.path.join(work, "clap_projectors.pt")
    generate(corpus, corpus_seed, clips)
    _must(ingest_main(["--source", "laion", "--input", corpus, "--out", set_root, *INGEST]), "ingest")
    if not os.path.exists(projectors):
        clap_dir = os.path.join(work, "clap")
        _must(clap_main(["--data-root", set_root, "--save-dir", clap_dir, *CLAP, *QUIET]), "CLAP training")
        _must(clap_main(["export", "--checkpoint", os.path.join(clap_dir, "clap_best.pt"), "--out", projectors]),
              "CLAP export")
    return set_root, projectors


def train_once(data_root: str, projectors: str, flags: str, seed: int) -> dict:
    """One SLM run in this process; its test metrics (best validation checkpoint), best epoch, CPU seconds."""
    with tempfile.TemporaryDirectory(prefix="slm-probe-") as save:
        argv = ["--data-root", data_root, "--clap-ckpt", projectors, "--save-dir", save, "--seed", str(seed),
                *QUIET, *shlex.split(flags)]
        t0 = time.process_time()
        _must(slm_main(argv), f"SLM training ({flags}, seed {seed})")
        cpu = time.process_time() - t0
        summary = json.load(open(os.path.join(save, "slm_stage3_summary.json"), encoding="utf-8"))
    return {"seed": seed, "test_macro_f1": summary["test"]["macro_f1"], "test_accuracy": summary["test"]["accuracy"],
            "val_macro_f1": summary["best"]["value"], "best_epoch": summary["best"]["epoch"], "cpu_s": round(cpu, 1)}


def probe(data_root: str) -> dict:
    """Test macro-F1 of the probe on audio, text and both (the stage-3 report's numbers)."""
    shards = open_shard_set(data_root)
    got = linear_probe(shards, "test")["results"]
    return {k: round(v["metrics"]["macro_f1"], 4) for k, v in got.items()}


def summarise(runs: list[dict], best_probe: float) -> dict:
    f1 = np.array([r["test_macro_f1"] for r in runs])
    return {"mean": round(float(f1.mean()), 4), "sd": round(float(f1.std(ddof=1)) if len(f1) > 1 else 0.0, 4),
            "min": round(float(f1.min()), 4), "max": round(float(f1.max()), 4),
            "vs_probe": round(float(f1.mean()) - best_probe, 4), "runs": runs}


def parse_variants(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or [f"issue={ISSUE}", "default="]:
        name, sep, flags = item.partition("=")
        if not sep or not name:
            raise LakeError(f"--variant {item!r}: give NAME=\"FLAGS\", e.g. issue=\"{ISSUE}\"")
        out[name] = flags
    return out


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise LakeError(f"--seeds {text!r}: give whole numbers >= 0 separated by commas, e.g. 0,1,2,3,4")
    return seeds


def run(args) -> dict:
    variants, seeds = parse_variants(args.variant), parse_seeds(args.seeds)  # a mistake fails before any work
    if args.work:
        data_root, projectors = prepare(args.work, args.corpus_seed, args.clips)
    elif args.data_root and args.clap_ckpt:
        data_root, projectors = args.data_root, args.clap_ckpt
    else:
        raise LakeError("give --work DIR (a corpus made and ingested there), or --data-root SET and --clap-ckpt P")
    base = probe(data_root)
    best = max(base["audio"], base["both"])
    print(f"probe (test macro-F1): both {base['both']:.4f}  audio {base['audio']:.4f}  text {base['text']:.4f}")
    results = {}
    for name, flags in variants.items():
        runs = [train_once(data_root, projectors, flags, s) for s in seeds]
        results[name] = {"flags": flags, **summarise(runs, best)}
        r = results[name]
        per_seed = " ".join(f"{x['test_macro_f1']:.3f}" for x in runs)
        print(f"{name:>14}: {per_seed}  mean {r['mean']:.4f} sd "
              f"{r['sd']:.4f}  vs probe {r['vs_probe']:+.4f}  (best epochs {[x['best_epoch'] for x in runs]}, "
              f"CPU {np.mean([x['cpu_s'] for x in runs]):.0f} s/run)  [{flags}]", flush=True)
    return {"data_root": data_root, "clap_ckpt": projectors, "seeds": seeds, "probe": base, "best_probe": best,
            "variants": results,
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.slm_probe", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--work", default="", help="folder for the corpus, its set and CLAP projectors (made if absent)")
    p.add_argument("--corpus-seed", type=bounded(int, at_least(0)), default=11,
                   help="with --work: the corpus seed (11: the held-out corpus of BENCHMARKS.md; 1 and 2 tuned the "
                        "recipe)")
    p.add_argument("--clips", type=bounded(int, at_least(48)), default=720, help="with --work: corpus clips")
    p.add_argument("--data-root", default="", help="an ingested set (instead of --work)")
    p.add_argument("--clap-ckpt", default="", help="its CLAP projectors (with --data-root)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="SLM seeds, comma-separated")
    p.add_argument("--variant", action="append", metavar="NAME=FLAGS",
                   help=f"trainers.slm flags to compare (repeatable; default: issue=\"{ISSUE}\" and default=\"\")")
    args = p.parse_args(argv)

    def work() -> int:
        print(json.dumps(run(args)))
        return 0

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
