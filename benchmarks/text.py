"""The text encoder over a corpus's texts: every text encoded (as before) vs each distinct text once
(`ingest.encoders.text_cache.TextCache`, what ingest does now).

    python -m benchmarks.text [--clips 1200] [--meld-clips 600] [--corpus DIR] [--text-encoder minilm]

Two sets of texts, each in ingest's batches of 128: the synthetic corpus's transcripts and
captions in the order of its truth file (the demo's corpus by default: 1,200 LAION-layout clips
of up to 4 s + 600 MELD-layout clips), and a scripted corpus laid out like CREMA-D (its 12
sentences over 1,500 clips, shuffled). One torch thread, as on a CPU ingest rank whose decode
workers hold the other cores. Reports texts/s both ways, the share of repeats, and the largest
difference of a vector after float16 (what a shard stores). Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from ingest.encoders.text_cache import TextCache
from lake.cli import run_cli
from lake.cliargs import at_least, bounded

BATCH = 128  # ingest's --text-batch-size default
# CREMA-D's twelve sentences (Cao et al. 2014), each spoken by 91 actors in six emotions
CREMA_D = ["It's eleven o'clock.", "That is exactly what happened.", "I'm on my way to the meeting.",
           "I wonder what this is about.", "The airplane is almost full.", "Maybe tomorrow it will be cold.",
           "I would like a new alarm clock.", "I think I have a doctor's appointment.", "Don't forget a jacket.",
           "I think I've seen this before.", "The surface is slick.", "We'll stop in a couple of minutes."]


def corpus_texts(corpus: str) -> list[str]:
    """Transcripts (and captions, where a clip has one) of the corpus's good clips, in its truth file's order."""
    texts = []
    with open(os.path.join(corpus, "truth.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["status"] == "ok" and rec.get("transcript") is not None:
                texts.append(rec["transcript"])
                if rec.get("caption"):
                    texts.append(rec["caption"])
    return texts


def scripted_texts(clips: int = 1500, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [CREMA_D[i] for i in rng.integers(0, len(CREMA_D), clips)]


def timed(encode, texts: list[str]) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = np.concatenate([encode(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)])
    return time.perf_counter() - t0, out


def compare(encoder, texts: list[str]) -> dict:
    every_s, every = timed(encoder.encode, texts)
    cache = TextCache(encoder)
    once_s, once = timed(cache.encode, texts)
    diff = np.abs(every.astype(np.float16).astype(np.float32) - once.astype(np.float16).astype(np.float32))
    return {"texts": len(texts), "distinct": len(set(texts)), "repeats": round(1 - cache.encoded / len(texts), 3),
            "every_texts_per_s": round(len(texts) / every_s, 1), "once_texts_per_s": round(len(texts) / once_s, 1),
            "speedup": round(every_s / once_s, 2), "max_fp16_diff": float(diff.max())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.text", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=bounded(int, at_least(1)), default=1200,
                   help="LAION clips in the generated corpus (default: 1200, the demo's)")
    p.add_argument("--meld-clips", type=bounded(int, at_least(0)), default=600,
                   help="MELD clips in the generated corpus (default: 600)")
    p.add_argument("--corpus", help="a synthetic corpus to use (made there if missing; default: one in the temp dir)")
    p.add_argument("--text-encoder", default="minilm", choices=["minilm", "hashing"], help="offline text encoder (default: minilm)")
    p.add_argument("--threads", type=bounded(int, at_least(1)), default=1, help="torch threads (default: 1)")
    args = p.parse_args(argv)

    import torch

    from benchmarks.decode import ensure_corpus
    from ingest.encoders import encoder_class

    torch.set_num_threads(args.threads)
    corpus = ensure_corpus(args.clips, args.meld_clips, args.corpus or os.path.join(
        tempfile.gettempdir(), f"emolake-bench-text-{args.clips}-{args.meld_clips}"), max_seconds=4.0)
    encoder = encoder_class("text", args.text_encoder).build(args.text_encoder)
    encoder.encode(CREMA_D)  # first call: lazy initialisation, off the clock
    figures = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "encoder": args.text_encoder,
               "threads": args.threads}
    for key, name, texts in (("synthetic", "synthetic corpus", corpus_texts(corpus)),
                             ("crema_d", "CREMA-D-like scripted", scripted_texts())):
        r = figures[key] = compare(encoder, texts)
        print(f"{name}: {r['texts']:,} texts, {r['distinct']:,} distinct ({r['repeats']:.0%} repeats): every text "
              f"{r['every_texts_per_s']:,.0f}/s, each distinct once {r['once_texts_per_s']:,.0f}/s "
              f"({r['speedup']:.2f}x); largest float16 difference {r['max_fp16_diff']:.1e}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main() and 0))  # a bad --corpus (a file, no room): one line, not a traceback
