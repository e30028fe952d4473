"""`python -m shards`: look inside a shard set (ls, stats, verify, show, head), move it (cp) and
write its Hub dataset card (card).

Each subcommand takes SET: a shard set's directory, or an fsspec URL of one
(s3://bucket/prefix, hf://datasets/OWNER/NAME), and prints to stdout. Object-store
credentials and endpoints come from the usual places (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws/config; `hf auth login`); anything else
goes in --storage-options. In Python:

    from lake.catalog import open_shard_set
    shards = open_shard_set("data/laion-en")   # manifest + index.parquet
"""

from __future__ import annotations

import argparse
import json
import sys

from lake import storage
from lake.blocks import ROW_NAME
from lake.catalog import STORAGE_OPTIONS_HELP, default_cache_dir, open_shard_set, repair_hint
from lake.cliargs import at_least, bounded
from lake.errors import LakeError, describe_os_error
from lake.progress import human_bytes
from lake.schema import MANIFEST_NAME
from shards.card import settings_for, write_card
from shards.copy import copy_set
from shards.describe import head_rows, list_shards, set_stats, show_clip
from shards.verify import verify_set


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_ls(args) -> int:
    shards = open_shard_set(args.set)
    rows = list_shards(shards)
    if args.split:
        rows = [r for r in rows if r["split"] == args.split]
    print(_table([[r["path"], r["split"], r["rows"], r["blocks"], human_bytes(r["bytes"])] for r in rows],
                 ["shard", "split", "rows", "blocks", "bytes"]))
    print(f"{len(rows)} shards, {sum(r['rows'] for r in rows)} rows, {human_bytes(sum(r['bytes'] for r in rows))}")
    return 0


def cmd_stats(args) -> int:
    stats = set_stats(open_shard_set(args.set))
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
        return 0
    print(f"{stats['name']}  (fingerprint {stats['fingerprint']}, schema v{stats['schema_version']})")
    print(f"audio: {stats['audio_encoder']}  dim {stats['audio_dim']}  layers {', '.join(stats['audio_layers'])}")
    print(f"text:  {stats['text_encoder']}  dim {stats['text_dim']}  fields {', '.join(stats['fields'])}")
    print(f"{stats['rows']} rows, {stats['hours']:.2f} h of audio, {stats['num_classes']} classes, "
          f"{stats['quarantined']} quarantined\n")
    print(_table([[s, d["rows"], d["shards"], f"{d['hours']:.3f}", human_bytes(d["bytes"])] for s, d in stats["splits"].items()],
                 ["split", "rows", "shards", "hours", "bytes"]))
    splits = list(stats["splits"])
    print()
    print(_table([[i, name] + [stats["labels"][s].get(name, 0) for s in splits] for i, name in enumerate(stats["taxonomy"])],
                 ["id", "label"] + splits))
    return 0


def cmd_verify(args) -> int:
    try:
        open_shard_set(args.set)
    except LakeError as e:
        if not storage.exists(storage.join(args.set, MANIFEST_NAME)):
            raise  # not a set at all (a bad path or URL, no bucket, no server): exit 2
        print(f"problem: {e}\nFAILED: the manifest cannot be read\n{repair_hint()}")
        return 1
    problems, warnings, summary = verify_set(args.set, workers=args.workers, progress=sys.stderr.isatty())
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        print(f"problem: {p}")
    if problems:
        print(f"FAILED: {len(problems)} problem(s)" + (f" in {summary['bad_shards']} shard(s)" if summary.get("bad_shards") else ""))
        print(summary["repair"])
        return 1
    print(f"OK: {summary['shards']} shards, {summary['rows']} rows, {human_bytes(summary['bytes'])} match the manifest and the index")
    return 0


def cmd_show(args) -> int:
    clip = show_clip(open_shard_set(args.set), args.key)
    if args.json:
        print(json.dumps(clip, ensure_ascii=False))
        return 0
    shown = ("key", "split", "label_id", "label", "duration_s", "source_uri", "shard", "block", "row")
    for k in shown:
        print(f"{k:>11}: {clip[k]}")
    for k, v in clip["meta"].items():  # the rest of the row's meta: transcript, caption, encoded_s, extra, ...
        if ROW_NAME.get(k, k) not in shown:
            print(f"{ROW_NAME.get(k, k):>11}: {v}")
    print("      norms: " + ", ".join(f"{k} {v:.3f}" for k, v in clip["norms"].items()))
    return 0


def cmd_head(args) -> int:
    rows = head_rows(open_shard_set(args.set), args.n)
    def cut(s, n=60):
        return s if len(s) <= n else s[: n - 1] + "…"
    print(_table([[r["key"], r["split"], r["label"], f"{r['duration_s']:.2f}", cut(r["transcript"] or "")] for r in rows],
                 ["key", "split", "label", "dur_s", "transcript"]))
    return 0


def cmd_cp(args) -> int:
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="cp", leave=False)
    try:
        s = copy_set(args.src, args.dst, overwrite=args.overwrite, revision=args.revision, progress=bar,
                     cache_dir=args.cache_dir)
    finally:
        if bar is not None:
            bar.close()
    rate = s.bytes_copied / max(s.seconds, 1e-9) / 1e6
    print(f"copied {s.copied} shard(s), {human_bytes(s.bytes_copied)} ({rate:.1f} MB/s); skipped {s.skipped} already "
          f"there; {s.seconds:.1f} s")
    print(f"{s.dst}: shard set {s.name!r}, {s.shards} shards, fingerprint {s.fingerprint}"
          + (", with its dataset card (README.md, preview/)" if s.card else "")
          + f"; check it with `python -m shards verify {s.dst}`")
    return 0


def cmd_card(args) -> int:
    shards = open_shard_set(args.set, cache_limit_gb=0)
    dest = (args.out or shards.root).rstrip("/")
    settings = settings_for(shards, dest, license=args.license, preview_rows=args.preview_rows,
                            preview_layers=args.preview_layers)
    written = write_card(shards, dest, settings)
    for path, size in written.items():
        print(f"{path}  {human_bytes(size)}")
    print(f"the card of {shards.name!r}: open {storage.join(dest, 'README.md')}; it is regenerated, not edited "
          "(run this again after the set changes; `shards cp` to hf:// uploads a fresh one)")
    return 0


def _add_card(sub, common, set_help: str) -> None:
    s = sub.add_parser("card", parents=[common], help="write the set's Hub dataset card: README.md and preview/*.parquet",
                       description="Write the dataset card the Hub shows for the set: README.md (YAML front matter "
                                   "the Hub reads, then what the set is, its source, encoders, rows per split and "
                                   "class, hours, quarantine, how to load it, the manifest's sha256) and "
                                   "preview/<split>.parquet (the first rows of each split with their embeddings, "
                                   "for the dataset viewer). Neither is part of the set: its manifest, fingerprint "
                                   "and `verify` are unchanged. Settings not given are those of the card already "
                                   "there. Cost: reads the manifest, the index and the preview rows' blocks.")
    s.add_argument("set", metavar="SET", help=set_help)
    s.add_argument("--out", metavar="DIR", help="where to write them: a directory or URL (default: the set's own root)")
    s.add_argument("--license", help="a Hub licence id, e.g. cc-by-4.0, apache-2.0, gpl-3.0 (default: the source's "
                                     "when known, MELD's gpl-3.0; else 'other', saying it is not known)")
    s.add_argument("--preview-rows", type=bounded(int, at_least(0)), default=None,
                   help="rows per split in the preview, the first in index order; 0: no preview (default: "
                        "shards.card.PREVIEW_ROWS, 2000)")
    s.add_argument("--preview-layers", default=None,
                   help="stored audio layers in the preview: last, all, or names/indices (default: last; every "
                        "layer costs a list of the audio dims per row)")
    s.set_defaults(func=cmd_card)


SET_HELP = "the shard set: a directory holding manifest.json, or an fsspec URL of one"


def _add_looking(sub, common) -> None:
    """ls, stats, show, head: read a set, print what it holds."""
    s = sub.add_parser("ls", parents=[common], help="list shards with split, rows and bytes",
                       description="List the shards of a set with their split, rows, blocks and size.")
    s.add_argument("set", metavar="SET", help=SET_HELP)
    s.add_argument("--split", help="only this split (train, val, dev, test)")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("stats", parents=[common], help="rows per split, label histogram, dims, hours",
                       description="Rows and hours of audio per split, the label histogram with class names, "
                                   "encoder dims and stored audio layers. Reads the manifest and index.parquet only.")
    s.add_argument("set", metavar="SET", help=SET_HELP)
    s.add_argument("--json", action="store_true", help="print one JSON object instead of tables (includes num_classes)")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("show", parents=[common], help="one clip: metadata, label, embedding norms",
                       description="Print one clip's index row, its block metadata (transcript, caption, soft "
                                   "labels), its label and the norms of its stored embeddings.")
    s.add_argument("set", metavar="SET", help=SET_HELP)
    s.add_argument("key", metavar="KEY", help="the clip key, as in index.parquet (see `head`)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("head", parents=[common], help="the first rows of the index as a table",
                       description="The first rows of index.parquet: key, split, label, duration, transcript.")
    s.add_argument("set", metavar="SET", help=SET_HELP)
    s.add_argument("-n", type=bounded(int, at_least(1)), default=10, help="number of rows")
    s.set_defaults(func=cmd_head)


def _add_verify(sub, common) -> None:
    s = sub.add_parser("verify", parents=[common], help="check every shard and the index against the manifest",
                       description="Read every shard in full: sha256, size and row count against the manifest; "
                                   "each block's members, shapes and dtypes against the manifest's dims; "
                                   "index.parquet against the shards (no key missing or duplicated). Prints every "
                                   "problem; exit status 0 only when all hold, 1 otherwise. Cost: one full read of the set.")
    s.add_argument("set", metavar="SET", help=SET_HELP)
    s.add_argument("--workers", type=bounded(int, at_least(1)), default=4, help="shards checked in parallel (threads; default: 4)")
    s.set_defaults(func=cmd_verify)


def _add_cp(sub, common) -> None:
    s = sub.add_parser("cp", parents=[common], help="copy a set between a directory, s3:// and hf://, resumably",
                       description="Copy the shard set SRC to DST (each a directory, an s3:// prefix or "
                                   "hf://datasets/OWNER/NAME). A shard already at DST with the manifest's size and "
                                   "sha256 is skipped, so re-running after an interruption resumes; every shard is "
                                   "hashed in transit and checked against the manifest; the manifest is written "
                                   "last, over shards checked against it, so DST is a set only once it is complete. "
                                   "A DST holding another set is refused, and so is a second writer into DST "
                                   "(another `shards cp`, an ingest) while this one runs: it holds DST's set lock. "
                                   "The set's dataset card (README.md, preview/; see `card`) is made anew "
                                   "for DST: always for hf://, elsewhere when SRC has one (with its settings); a "
                                   "pull from hf:// leaves it behind. Cost: one read of SRC, one write of what DST "
                                   "lacks, and one read of the shards already at DST (to check them).")
    s.add_argument("src", metavar="SRC", help="the set to copy (" + SET_HELP + ")")
    s.add_argument("dst", metavar="DST", help="where to put it: a directory, an s3:// prefix or hf://datasets/OWNER/NAME")
    s.add_argument("--overwrite", action="store_true",
                   help="replace another set at DST (its manifest is removed first, then its shards the new set lacks)")
    s.add_argument("--revision", help="hf:// only: the branch, tag or commit to read SRC at, or the branch of DST "
                                      "to commit to (default: main)")
    s.add_argument("--cache-dir", default=None,
                   help="local folder for staging a push to hf:// (links or verified copies; default: "
                        f"{default_cache_dir()}, or $EMOLAKE_CACHE_DIR)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="a progress bar of bytes on stderr (default: when stderr is a terminal)")
    s.set_defaults(func=cmd_cp)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage-options", metavar="JSON", help=STORAGE_OPTIONS_HELP)
    _add_looking(sub, common)
    _add_verify(sub, common)
    _add_cp(sub, common)
    _add_card(sub, common, SET_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        storage.set_storage_options([getattr(args, k) for k in ("set", "src", "dst", "out") if hasattr(args, k)],
                                    args.storage_options)
        return args.func(args)
    except LakeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `python -m shards head ... | head`
        return 0
    except OSError as e:  # a full disk, a read-only folder: one line naming the path
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
