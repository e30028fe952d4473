"""`python -m evaluation`: measure each stage on a split, or predict emotions of audio files.

    python -m evaluation stage2 --clap-ckpt clap_projectors.pt --data-root SET --out reports/stage2
    python -m evaluation stage3 --stage3-ckpt slm_stage3_best.pt --data-root SET --out reports/stage3
    python -m evaluation stage4 --meld-ckpt meld_slm_A_best.pt --data-root MELDSET --out reports/stage4
    python -m evaluation probe --data-root SET [--split test] [--out reports/probe]
    python -m evaluation probe --data-root SET --layers all --out reports/layers
    python -m evaluation matrix --checkpoints CKPT... --data-root SET... [--label-map FILE] --out reports/matrix
    python -m evaluation predict --stage3-ckpt S --clap-ckpt P [--meld-ckpt M] FILE...
    python -m evaluation table REPORT_DIR... [--out DIR]

Each stage writes metrics.json, report.md and confusion.png to --out. Stages 3 and 4 show the
model beside a linear probe of its own inputs and without its audio / without its text.
"""

from __future__ import annotations

import argparse
import json

from evaluation import stages, table
from evaluation.matrix import markdown, matrix
from evaluation.predict import format_predictions, predict
from lake.catalog import SetReading, open_shard_set
from lake.cli import run_cli
from lake.cliargs import HelpFormatter, add_dataclass_args, at_least, bounded


def _common(p: argparse.ArgumentParser, ckpt_flag: str, ckpt_help: str) -> None:
    p.add_argument(ckpt_flag, required=True, help=ckpt_help)
    p.add_argument("--data-root", required=True, help="the shard set to evaluate on (directory or fsspec URL)")
    p.add_argument("--split", default="test", help="which split")
    p.add_argument("--out", required=True, help="directory for metrics.json, report.md and confusion.png")
    p.add_argument("--batch-size", type=bounded(int, at_least(1)), default=1024, help="rows per evaluation batch")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="where the model runs")
    p.add_argument("--num-workers", type=bounded(int, at_least(0)), default=0,
                   help="loader worker processes (0: in this process, fastest for a local set)")
    add_reading_flags(p)


def add_reading_flags(p: argparse.ArgumentParser) -> None:
    """How a set behind a URL is read: the trainers' flags of the same names (lake.catalog.SetReading)."""
    add_dataclass_args(p, SetReading)


def _label_map_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-map", default="", metavar="FILE",
                   help="score the model on a set of another taxonomy: a JSON map of labels to classes ({label: "
                        "class}, or {set name: {label: class}} for the evaluated set and the set(s) the model was "
                        "trained on); each of the set's classes takes the summed probability of the model classes "
                        "mapped to it; rows whose label maps to nothing are left out (counted in the report)")


def _add_matrix(sub) -> None:
    s = sub.add_parser("matrix", formatter_class=HelpFormatter, help="every model on every set: the cross-corpus table",
                       description="Evaluate every checkpoint (SLM or MELD) on the test split of every set and write "
                                   "one train x test table of the stage's headline metric (macro-F1; weighted F1 for "
                                   "MELD): matrix.json, matrix.md and matrix.png (a heatmap). A set of another "
                                   "taxonomy than a model's is scored through --label-map.")
    s.add_argument("--checkpoints", nargs="+", required=True, metavar="CKPT", help="the trained models (rows)")
    s.add_argument("--data-root", nargs="+", required=True, metavar="SET", help="the sets to evaluate on (columns)")
    s.add_argument("--split", default="test", help="which split of every set")
    s.add_argument("--label-map", default="", metavar="FILE", help="maps labels of sets and models of other "
                   "taxonomies onto shared classes (see `stage3 --help`)")
    s.add_argument("--out", required=True, help="directory for matrix.json, matrix.md and matrix.png")
    s.add_argument("--batch-size", type=bounded(int, at_least(1)), default=1024, help="rows per evaluation batch")
    s.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="where the models run")
    add_reading_flags(s)


def _baseline_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ablate", default="all", choices=["all", "audio", "text", "none"],
                   help="also evaluate with every row's audio (or text) replaced by the train split's mean vector: "
                        "all = both, one table (two more evaluation passes); none = skip")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the linear-probe baseline (logistic regression on the stored embeddings, fitted on "
                        "train, C chosen on the validation split; seconds on small sets, at most 20,000 train rows)")


def _probe_parser(sub) -> None:
    """`probe`: the linear probe alone, or per layer (--layers)."""
    s = sub.add_parser("probe", formatter_class=HelpFormatter, help="the linear-probe baseline on stored embeddings",
                       description="Standardised logistic regression (scikit-learn) on the stored audio embedding, "
                                   "the transcript embedding, and both: fitted on train, C chosen on the validation "
                                   "split (macro-F1; weighted F1 for MELD sets), scored on --split with the stage "
                                   "metrics. The number a stage-3/4 model must beat. With --layers, the audio probe "
                                   "on each stored layer alone: which layer carries the emotion.")
    s.add_argument("--data-root", required=True, help="the shard set (directory or fsspec URL)")
    s.add_argument("--split", default="test", help="which split to score (not train or the validation split)")
    s.add_argument("--audio-layer", default="last", help="stored audio layer(s): a name, an index, a comma list, "
                   "'last' or 'all' (several are concatenated)")
    s.add_argument("--layers", default="", metavar="SPEC",
                   help="which layer carries the emotion: the audio probe fitted on each of these stored layers alone "
                        "('all', or a comma list of names/indices), with the text-only probe and the `last` layer + "
                        "text probe as reference lines; --out then also gets layers.png (metric per layer). Costs "
                        "an audio fit per layer: 13 layers of 768 dims on 3,000 train rows took ~25 s of one core")
    s.add_argument("--max-train-rows", type=bounded(int, at_least(1)), default=None,
                   help="fit on at most this many train rows, a fixed-seed subsample beyond (default 20,000)")
    s.add_argument("--out", default="", help="also write metrics.json and report.md here (and layers.png with "
                   "--layers)")
    add_reading_flags(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("stage2", formatter_class=HelpFormatter, help="CLAP: retrieval both ways and zero-shot emotion classification",
                       description="Audio->text and text->audio R@1/5/10, MRR and median rank on a split (blocks of "
                                   "--block queries at a time), plus zero-shot classification by similarity to the "
                                   "class names embedded with the set's own text encoder.")
    _common(s, "--clap-ckpt", "CLAP projectors (clap_projectors.pt; the reference layout also loads) or a CLAP "
            "training checkpoint")
    s.add_argument("--block", type=bounded(int, at_least(1)), default=4096,
                   help="queries scored at once (memory: block x rows)")
    s.add_argument("--template", default="{}", help="zero-shot prompt, {} = class name (default: the bare name)")
    s.add_argument("--no-zero-shot", action="store_true", help="skip zero-shot classification")
    s.add_argument("--text-model", default="", help="local copy of the set's text encoder, for the zero-shot class "
                   "names, if its recorded id is unreachable")
    s = sub.add_parser("stage3", formatter_class=HelpFormatter, help="SLM: accuracy, macro/weighted F1, top-k, per-class, confusion",
                       description="Classify a split with a trained SLM and report accuracy, macro and weighted F1, "
                                   "top-3/top-5 accuracy, per-class precision/recall/F1 and the confusion matrix.")
    _common(s, "--stage3-ckpt", "the SLM checkpoint (e.g. checkpoints/slm_stage3_best.pt)")
    _baseline_flags(s)
    _label_map_flag(s)
    s = sub.add_parser("stage4", formatter_class=HelpFormatter, help="MELD: weighted F1 (the benchmark number), accuracy, macro F1, confusion",
                       description="Classify MELD's test split with a trained MELD head and report weighted F1 "
                                   "(MELD's standard metric), accuracy, macro F1, per-class and confusions.")
    _common(s, "--meld-ckpt", "the MELD checkpoint (e.g. checkpoints/meld_slm_A_best.pt)")
    s.add_argument("--stage3-ckpt", default="", help="only for a reference-layout MELD head (the previous tooling's "
                   "meld_slm_A/B_best.pt, which holds no SLM): the stage-3 checkpoint it was trained on")
    _baseline_flags(s)
    _label_map_flag(s)
    _add_matrix(sub)
    _probe_parser(sub)
    s = sub.add_parser("predict", formatter_class=HelpFormatter, help="top emotions of audio files",
                       description="Decode and encode audio files with the encoders recorded in the SLM's data "
                                   "manifest, then print the top emotions with probabilities.")
    s.add_argument("files", nargs="+", metavar="FILE", help="audio files in any format FFmpeg reads")
    s.add_argument("--stage3-ckpt", required=True, help="the SLM checkpoint")
    s.add_argument("--clap-ckpt", help="the CLAP projectors; checked against those inside the SLM checkpoint")
    s.add_argument("--meld-ckpt", help="also give MELD's 7 emotions with this MELD checkpoint")
    s.add_argument("--transcript", help="what is said (all files); default: FILE.txt beside each file, else empty")
    s.add_argument("--top", type=bounded(int, at_least(1)), default=5, help="how many emotions to list")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the encoders and models run")
    s.add_argument("--text-model", default="", help="local copy of the text encoder, if its recorded id is unreachable")
    s.add_argument("--audio-model", default="", help="local copy of the audio model (auristream)")
    s.add_argument("--audio-tokenizer", default="", help="local copy of the audio tokenizer (auristream)")
    s.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    _table_parser(sub)
    return p


def _table_parser(sub) -> None:
    s = sub.add_parser("table", formatter_class=HelpFormatter, help="mean and std of UA, WA and the F1s over reports "
                       "(seeds, folds, encoders)", description=table.__doc__.split("\n\n", 1)[1])
    s.add_argument("reports", nargs="+", metavar="[LABEL=]REPORT_DIR", help="report folders (holding metrics.json), "
                   "or folders searched for them; LABEL= labels every report under it (an encoder, a recipe)")
    s.add_argument("--metrics", nargs="+", default=list(table.FIELD_METRICS), metavar="NAME",
                   help="the metrics to aggregate (dotted for a group's, e.g. audio_to_text.R@1)")
    s.add_argument("--out", default="", help="write table.json and table.md here (the Markdown is printed either way)")


def _table(args) -> int:
    res = table.table(args.reports, args.out, tuple(args.metrics))
    print(res["markdown"], end="")
    for name, path in res["paths"].items():
        print(f"  {name}: {path}")
    return 0


def _matrix(args) -> int:
    sets = [open_shard_set(r, args.cache_dir, args.cache_limit, args.storage_options) for r in args.data_root]
    res = matrix(args.checkpoints, sets, args.out, args.split, args.label_map, args.batch_size,
                 stages.device_of(args.device))
    print(markdown(res["result"]))
    for name, path in res["paths"].items():
        print(f"  {name}: {path}")
    return 0


def _run(args) -> int:
    if args.command == "predict":
        results = predict(args.files, args.stage3_ckpt, args.clap_ckpt, args.meld_ckpt, args.transcript,
                          args.top, args.device, args.text_model, args.audio_model, args.audio_tokenizer)
        print(json.dumps(results, ensure_ascii=False) if args.json else format_predictions(results))
        return 0 if all("error" not in r for r in results) else 1
    if args.command == "table":
        return _table(args)
    if args.command == "matrix":
        return _matrix(args)
    shards = open_shard_set(args.data_root, args.cache_dir, args.cache_limit, args.storage_options)
    if args.command == "probe":
        res = stages.probe(shards, args.out, args.split, args.audio_layer, args.max_train_rows, args.layers)
        print(f"probe on {args.data_root} [{args.split}]: {res['headline']}")
        for name, path in res["paths"].items():
            print(f"  {name}: {path}")
        return 0
    common = dict(data_root=shards, out=args.out, split=args.split, batch_size=args.batch_size,
                  device=args.device, num_workers=args.num_workers)
    if args.command == "stage2":
        res = stages.stage2(args.clap_ckpt, block=args.block, template=args.template,
                            zero_shot=not args.no_zero_shot, text_model=args.text_model, **common)
    elif args.command == "stage3":
        res = stages.stage3(args.stage3_ckpt, probe=not args.no_probe, ablate=args.ablate, label_map=args.label_map,
                            **common)
    else:
        res = stages.stage4(args.meld_ckpt, stage3_ckpt=args.stage3_ckpt, probe=not args.no_probe,
                            ablate=args.ablate, label_map=args.label_map, **common)
    print(f"{args.command} on {args.data_root} [{args.split}]: {res['headline']}")
    m, metric = res["metrics"], "weighted_f1" if args.command == "stage4" else "macro_f1"
    for r in m.get("baselines", [])[1:] + m.get("ablation", [])[1:]:  # beside the model's headline
        print(f"  {r.get('model') or r['input']}: {metric} {r[metric]:.4f}"
              + (f" ({r['change']:+.4f})" if "change" in r else ""))
    for name, path in res["paths"].items():
        print(f"  {name}: {path}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args))
