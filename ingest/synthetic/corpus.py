"""A small synthetic corpus in both real layouts (LAION's Got Talent tars, MELD.Raw),
with a `truth.jsonl` that says what every reader must find.

    python -m ingest.synthetic --out data/synth --clips 1000

The tests, the demo and the decode benchmark need raw data that looks like the real
downloads (same names, members, JSON keys, CSV quirks, broken files) but is small,
deterministic and free to publish. Names and quirks follow the research notes on the
real datasets; where the real layout is uncertain (tar members under a folder or not,
the closing tag of the transcription block) the corpus uses both variants, so a reader
that copes with this corpus copes with either.

The speech is a source-filter voice (numpy/scipy): a glottal pulse train with an f0
contour (declination, syllable accents, final rise or fall, tremor), jitter and
shimmer, aspiration noise, vowel formants through resonators scaled by each voice's
vocal tract, frication noise at syllable onsets, a per-syllable and global loudness
envelope, and pauses. Each emotion class sets the means of these cues; every clip
draws its cues from the class mean plus a wide spread plus its voice's offsets, so
classes overlap: an audio model can learn them, but not perfectly. Transcripts reveal
the emotion in only about a third of the clips, so text alone is not enough either.
MELD emotions reuse the prosody of a related LAION class (joy ~ Elation, ...) with
new speakers, so a model trained on the LAION part transfers.

Output (DIR = --out), everything byte-identical for the same arguments:

    DIR/laion/{lang}_{voice}_intense_{prompt}[_vocalbursts_fixed].tar   <id>.mp3 + <id>.json pairs
    DIR/meld/{train,dev,test}_sent_emo.csv
    DIR/meld/{train_splits,dev_splits_complete,output_repeated_splits_test}/dia{D}_utt{U}.mp4
    DIR/truth.jsonl          one line per intended clip, bad ones included (status != "ok")

`truth.jsonl` is written last: a corpus without it is incomplete. A `.synthetic-corpus`
file (the arguments) marks the folder as this generator's, so `--overwrite` may replace it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import nullcontext

import numpy as np

from lake.cli import run_cli
from lake.cliargs import HelpFormatter, at_least, between, bounded
from lake.errors import LakeError
from lake.processes import WorkerStart, preload, worker_context
from lake.progress import Progress
from lake.taxonomy import EMONET_PROMPTS
from ingest.synthetic.spec import DEFAULT_CLASSES, MAX_S, MELD_FOLDERS
from ingest.synthetic.laion import build_tar, plan_laion
from ingest.synthetic.meld import build_meld_clips, meld_truth, plan_meld, write_meld_csvs

preload(__name__)  # the workers run `_run_task`


def _run_task(task: tuple) -> tuple[int, list[dict]]:
    kind, index, payload, root, seed, max_seconds = task
    if kind == "tar":
        return index, build_tar(payload, os.path.join(root, "laion"), seed, max_seconds)
    return index, build_meld_clips(payload, root, seed)


MIN_MAX_SECONDS = 2.0  # a shorter ceiling leaves no room for a sentence
MARKER = ".synthetic-corpus"  # written first: a folder with it is ours to overwrite, even half-written


def made_with(out_dir: str) -> dict | None:
    """The arguments a synthetic corpus in `out_dir` was made with (its marker), or None where there is none."""
    try:
        with open(os.path.join(out_dir, MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _prepare(out_dir: str, overwrite: bool, args: dict) -> None:
    owned = [os.path.join(out_dir, d) for d in ("laion", "meld", "truth.jsonl", MARKER)]
    existing = [p for p in owned if os.path.exists(p) and (not os.path.isdir(p) or os.listdir(p))]
    if existing:
        if not overwrite:
            raise LakeError(f"{out_dir} already holds {', '.join(os.path.basename(p) for p in existing)}; "
                            "pass --overwrite (or another --out) to write a new corpus there")
        if not os.path.exists(os.path.join(out_dir, MARKER)):
            raise LakeError(f"{out_dir} has laion/ or meld/ but no {MARKER}: it is not a synthetic corpus, so it "
                            "is not overwritten; choose another --out")
        for p in owned:
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, MARKER), "w", encoding="utf-8") as f:
        json.dump({"generator": "ingest.synthetic", **args}, f)
    for d in ["laion", "meld"] + [f"meld/{f}" for f in MELD_FOLDERS.values()]:
        os.makedirs(os.path.join(out_dir, d), exist_ok=True)


def generate(out_dir: str, clips: int = 1000, meld_clips: int | None = None, seed: int = 0,
             languages: tuple[str, ...] | list[str] = ("en", "de"), workers: int | None = None,
             classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES, overwrite: bool = False,
             max_seconds: float = MAX_S, progress: bool = False) -> dict:
    """Write the corpus under `out_dir`; returns a summary (counts by status, seconds taken).

    `clips` counts the LAION clips of the emotion tars (bad ones included); the ignored
    extra tar and the unknown-prompt tar add 3 each. `meld_clips` (default: a fifth of
    `clips`, at least 30; 0 = no MELD part) counts MELD's CSV rows. `max_seconds` is the
    longest LAION clip (their sentences are chosen to fit it; MELD's follow MELD's lengths):
    shorter clips cost less to make and to ingest (eGeMAPS' time grows with the audio). `progress`: a
    line (or a bar on a terminal) of the clips made so far, on stderr. The output depends
    on the arguments only, not on `workers`. With `workers` > 1 the workers come from a fork
    server (lake.processes): a script calling this needs `if __name__ == "__main__":`.
    """
    t0 = time.perf_counter()
    classes = list(classes)
    bad = [c for c in classes if c not in EMONET_PROMPTS]
    if bad:
        raise LakeError(f"unknown EmoNet categories {bad}; choose from lake.taxonomy.EMONET_CATEGORIES")
    if not MIN_MAX_SECONDS <= max_seconds <= MAX_S:
        raise LakeError(f"--max-seconds {max_seconds:g} is out of range: use {MIN_MAX_SECONDS:g} to {MAX_S:g} "
                        "(the longest LAION clip, in seconds)")
    languages = [lang.strip().lower() for lang in languages if lang.strip()]
    if not languages or len(set(languages)) != len(languages):
        raise LakeError(f"--languages needs distinct language codes, got {languages}")
    if meld_clips is None:
        meld_clips = max(30, clips // 5)
    if 0 < meld_clips < 30:
        raise LakeError(f"--meld-clips {meld_clips} is too small for MELD's bad cases; use 0 or at least 30")
    rng = np.random.default_rng(seed)
    tars = plan_laion(clips, classes, languages, rng)  # plans first: a bad argument writes nothing
    meld_rows = plan_meld(meld_clips, rng) if meld_clips else []
    _prepare(out_dir, overwrite, {"clips": clips, "meld_clips": meld_clips, "seed": seed, "languages": languages,
                                  "classes": classes, "max_seconds": max_seconds})
    chunks = [meld_rows[i: i + 8] for i in range(0, len(meld_rows), 8)]
    tasks = [("tar", i, t, out_dir, seed, max_seconds) for i, t in enumerate(tars)]
    tasks += [("meld", len(tars) + i, c, out_dir, seed, max_seconds) for i, c in enumerate(chunks)]
    clips_of = {t[1]: len(t[2].clips) if t[0] == "tar" else len(t[2]) for t in tasks}
    # Longest first, so the pool does not wait on one big tar at the end (a MELD clip costs ~1.5 LAION clips).
    tasks.sort(key=lambda t: -clips_of[t[1]] * (1.0 if t[0] == "tar" else 1.5))
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    results: dict[int, list[dict]] = {}
    with Progress("corpus", total=sum(clips_of.values()), unit="clip", enabled=progress) as bar, \
            (worker_context().Pool(workers, WorkerStart()) if workers > 1 else nullcontext()) as pool:
        # the pool from lake.processes' fork server: never forked from this process
        for index, records in pool.imap_unordered(_run_task, tasks, chunksize=1) if pool else map(_run_task, tasks):
            results[index] = records
            bar.update(clips_of[index])

    truth = [rec for i in range(len(tars)) for rec in results[i]]
    if meld_rows:
        meld_res = {res["key"]: res for i in range(len(chunks)) for res in results[len(tars) + i]}
        write_meld_csvs(meld_rows, {k: v["duration_s"] for k, v in meld_res.items()}, os.path.join(out_dir, "meld"),
                        rng)
        truth += meld_truth(meld_rows, meld_res)
    tmp = os.path.join(out_dir, "truth.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in truth:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, os.path.join(out_dir, "truth.jsonl"))

    def count(source: str) -> dict:
        recs = [r for r in truth if r["source"] == source]
        by = {}
        for r in recs:
            by[r["status"]] = by.get(r["status"], 0) + 1
        return {"clips": len(recs), "by_status": dict(sorted(by.items())),
                "audio_s": round(sum(r["duration_s"] or 0 for r in recs if r["status"] == "ok"), 1)}

    return {"out_dir": out_dir, "seed": seed, "workers": workers, "classes": classes, "languages": languages,
            "tars": len(tars), "laion": count("laion"), "meld": count("meld"),
            "truth": os.path.join(out_dir, "truth.jsonl"), "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ingest.synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="output folder (gets laion/, meld/ and truth.jsonl)")
    p.add_argument("--clips", type=bounded(int, at_least(1)), default=1000,
                   help="LAION clips in the emotion tars, bad ones included (default 1000: ~20 s on 2 idle cores, "
                        "~30 s with the default MELD part)")
    p.add_argument("--meld-clips", type=bounded(int, at_least(0)), default=None,
                   help="MELD CSV rows over train/dev/test (default: clips/5, at least 30; 0 = no MELD part)")
    p.add_argument("--seed", type=bounded(int, at_least(0)), default=0, help="same seed and flags -> byte-identical corpus (default 0)")
    p.add_argument("--languages", default="en,de", help="comma-separated tar languages; en gets 80%% (default en,de)")
    p.add_argument("--classes", default=",".join(DEFAULT_CLASSES),
                   help="comma-separated EmoNet categories of the LAION tars (default: 9 with distinct prosody)")
    p.add_argument("--workers", type=bounded(int, at_least(1)), default=None,
                   help="processes synthesizing tars in parallel (default: all CPUs); the output does not depend on it")
    p.add_argument("--max-seconds", type=bounded(float, between(MIN_MAX_SECONDS, MAX_S)), default=MAX_S,
                   help="longest LAION clip in seconds (default %(default)g); their sentences are chosen to fit. "
                        "Shorter clips are cheaper to make and to ingest")
    p.add_argument("--overwrite", action="store_true", help="replace a synthetic corpus already in --out")
    args = p.parse_args(argv)
    return run_cli(lambda: _generate(args), kept="re-run with --overwrite to start the corpus afresh")


def _generate(args) -> int:
    summary = generate(args.out, clips=args.clips, meld_clips=args.meld_clips, seed=args.seed,
                       languages=args.languages.split(","), workers=args.workers,
                       classes=[c.strip() for c in args.classes.split(",") if c.strip()], overwrite=args.overwrite,
                       max_seconds=args.max_seconds, progress=True)
    print(f"wrote {summary['laion']['clips']} LAION clips in {summary['tars']} tars "
          f"({summary['laion']['audio_s']:.0f} s of audio) and {summary['meld']['clips']} MELD clips "
          f"({summary['meld']['audio_s']:.0f} s) to {args.out} in {summary['seconds']:.1f} s "
          f"with {summary['workers']} workers")
    print(json.dumps({k: summary[k] for k in ("laion", "meld")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
